"""What the HTTP gateway adds to a small request: 1-text embeddings through the Python client and
through POST /v1/embeddings, alternately, on the same fleet.

    .venv/bin/python bench/gateway_overhead.py [--requests 300]

Private redis-server, 2 prefork processes x 1 thread, the gateway as `python -m producer serve`
(one uvicorn process); the HTTP side keeps one connection open, as a web app's client would.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from fleet import ROOT, bench_sentences, cpu_model, start_bench_fleet

from localfleet.redis_server import free_port

MS = 1_000.0
MODEL = "all-MiniLM-L6-v2"
GATEWAY_STOP_S = 30


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * MS


def start_gateway(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    sink = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "producer", "serve", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=sink,
        stderr=sink,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(log.read_text())


def stop_gateway(process: subprocess.Popen[bytes]) -> None:
    """Terminate and reap, before the fleet's redis-server goes."""
    process.terminate()
    process.wait(timeout=GATEWAY_STOP_S)


def measure(requests: int, model_dir: Path, workdir: Path) -> tuple[list[float], list[float]]:
    texts = iter(f"{text} ({n})" for n, text in enumerate(bench_sentences(4_000) * 2))
    direct: list[float] = []
    gateway: list[float] = []
    with ExitStack() as stack:
        fleet = start_bench_fleet(stack, workdir, model_dir, processes=2)
        port = free_port()
        process = start_gateway(fleet.env, port, workdir / "gateway.log")
        stack.callback(stop_gateway, process)
        client = stack.enter_context(fleet.client())
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(20):  # warm both paths
            client.embed([next(texts)])
            _post(connection, next(texts))
        for _ in range(requests):
            started = time.perf_counter()
            client.embed([next(texts)])
            direct.append(time.perf_counter() - started)
            started = time.perf_counter()
            _post(connection, next(texts))
            gateway.append(time.perf_counter() - started)
    return direct, gateway


def _post(connection: http.client.HTTPConnection, text: str) -> None:
    body = json.dumps({"model": MODEL, "input": text})
    connection.request("POST", "/v1/embeddings", body=body, headers={"Content-Type": "application/json"})
    reply = connection.getresponse()
    payload = reply.read()
    if reply.status != 200:
        raise RuntimeError(payload.decode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts/all-MiniLM-L6-v2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="embedfleet-gateway-") as workdir:
        direct, gateway = measure(args.requests, args.model_dir.resolve(), Path(workdir))
    print(f"CPU: {cpu_model()}; {args.requests} 1-text requests each way, alternating\n")
    print("| path | p50 ms | p95 ms | p99 ms | mean ms |")
    print("|---|---:|---:|---:|---:|")
    for name, values in (
        ("Python client, `client.embed([text])`", direct),
        ("HTTP, POST /v1/embeddings", gateway),
    ):
        p50, p95, p99 = (percentile(values, share) for share in (0.5, 0.95, 0.99))
        print(f"| {name} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {statistics.mean(values) * MS:.1f} |")
    print(f"\ngateway overhead at p50: {percentile(gateway, 0.5) - percentile(direct, 0.5):+.1f} ms")


if __name__ == "__main__":
    main()
