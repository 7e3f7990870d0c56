"""Scale-out: the same 10,000-text job on one worker node, then on two (separate process trees).

    .venv/bin/python bench/scale_out.py [--n 10000] [--rounds 2] [--markdown OUT.md]

Each node is its own `celery -A worker worker -n ...` with 1 process x 1 thread, as a host of its
own would be; both share one private redis-server. Each round runs the job cold (vectors dropped)
on 1 node, then on 2; the table gives each round and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from fleet import ROOT, bench_sentences, bench_settings, cpu_model, drop_vectors, publish

from localfleet.fleet import LocalFleet


def cold_job(fleet: LocalFleet, texts: list[str]) -> float:
    with fleet.client() as client:
        drop_vectors(fleet, client.build().fingerprint)
        started = time.perf_counter()
        client.submit(texts, priority="bulk").wait(timeout=900)
        return time.perf_counter() - started


def measure(texts: list[str], model_dir: Path, rounds: int, workdir: Path) -> list[tuple[float, float]]:
    results: list[tuple[float, float]] = []
    with ExitStack() as stack:
        settings, env = bench_settings(stack, workdir, model_dir, processes=1)
        for _ in range(rounds):
            one = stack.enter_context(LocalFleet(settings, env, workdir / "one.log"))
            one.start()
            single = cold_job(one, texts)
            one.add_node()
            double = cold_job(one, texts)
            one.stop()
            results.append((single, double))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts/all-MiniLM-L6-v2")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    texts = bench_sentences(args.n)
    with tempfile.TemporaryDirectory(prefix="embedfleet-scale-") as workdir:
        results = measure(texts, args.model_dir.resolve(), args.rounds, Path(workdir))
    lines = [
        f"CPU: {cpu_model()}; one {args.n:,}-text job, cold; each node 1 process x 1 thread",
        "",
        "| round | 1 node (texts/s) | 2 nodes (texts/s) | 2 nodes / 1 node |",
        "|---:|---:|---:|---:|",
    ]
    for number, (single, double) in enumerate(results, start=1):
        lines.append(
            f"| {number} | {args.n / single:,.0f} | {args.n / double:,.0f} | {single / double:.2f}x |"
        )
    report = "\n".join(lines) + "\n"
    publish(report, args.markdown)


if __name__ == "__main__":
    main()
