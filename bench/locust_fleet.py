"""Locust against the gateway of a private bench fleet, in one command.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/locust_fleet.py [--users 32] [--seconds 60] [--markdown OUT.md]

Private redis-server, 2 prefork processes x 1 thread, `python -m producer serve` (one uvicorn
process), then `locust -f bench/locustfile.py --headless` on the same host: the load generator
shares the 2 cores with the fleet, so its figures are a floor.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from fleet import ROOT, cpu_model, publish, start_bench_fleet
from gateway_overhead import start_gateway, stop_gateway

from localfleet.redis_server import free_port

SPAWN_RATE = 8


def run_locust(env: dict[str, str], port: int, users: int, seconds: int, prefix: Path) -> None:
    command = [
        str(Path(sys.executable).with_name("locust")),
        "-f",
        str(ROOT / "bench/locustfile.py"),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(SPAWN_RATE),
        "-t",
        f"{seconds}s",
        "--host",
        f"http://127.0.0.1:{port}",
        "--csv",
        str(prefix),
        "--only-summary",
        "--exit-code-on-error",
        "0",  # failed requests are the table's to show, not a reason to lose it
    ]
    subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, check=True)


def render(stats_csv: Path, users: int, seconds: int) -> str:
    lines = [
        f"CPU: {cpu_model()}; {users} locust users for {seconds} s against one gateway process",
        "",
        "| request | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    with stats_csv.open() as handle:
        for row in csv.DictReader(handle):
            lines.append(
                f"| {row['Name']} | {row['Request Count']} | {row['Failure Count']} "
                f"| {float(row['Requests/s']):.1f} | {row['50%']} | {row['95%']} | {row['99%']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts/all-MiniLM-L6-v2")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="embedfleet-locust-") as scratch, ExitStack() as stack:
        workdir = Path(scratch)
        fleet = start_bench_fleet(stack, workdir, args.model_dir.resolve(), processes=2)
        port = free_port()
        gateway = start_gateway(fleet.env, port, workdir / "gateway.log")
        stack.callback(stop_gateway, gateway)
        run_locust(fleet.env, port, args.users, args.seconds, workdir / "locust")
        report = render(workdir / "locust_stats.csv", args.users, args.seconds)
    publish(report, args.markdown)


if __name__ == "__main__":
    main()
