"""What one cold bulk job asks of Redis: INFO commandstats over the job, and redis-server's CPU.

    .venv/bin/python bench/redis_commands.py [--n 10000] [--chunk-size 512] [--rounds 2] [--markdown OUT.md]

One cold bulk job a round on the bench fleet (2 processes x 1 thread, a private redis-server). The
counters are reset just before each job, so each table holds that job's commands only (with the
fleet's heartbeats over those seconds): how many times each command ran and the server's time in it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from fleet import (
    ROOT,
    bench_sentences,
    cold_bulk_job,
    cpu_model,
    cpu_seconds,
    drop_vectors,
    publish,
    redis_pid,
    start_bench_fleet,
)

SETTLE_S = 1.0  # lets the dropped vectors' lazy frees finish before the counters start


def measure(texts: list[str], model_dir: Path, chunk_size: int, rounds: int, workdir: Path) -> list[str]:
    tables: list[str] = []
    with ExitStack() as stack:
        fleet = start_bench_fleet(stack, workdir, model_dir)
        client = stack.enter_context(fleet.client(chunk_size=chunk_size))
        server = redis_pid(fleet.settings.cache_url)
        for round_no in range(1, rounds + 1):
            drop_vectors(fleet, client.build().fingerprint)
            time.sleep(SETTLE_S)
            client.redis.config_resetstat()
            before = cpu_seconds(server)
            cold_bulk_job(client, texts)
            used = cpu_seconds(server) - before
            stats = client.redis.info("commandstats")
            lines = [
                f"Round {round_no}: redis-server CPU {used:.2f} s",
                "",
                "| command | calls | server µs | µs per call |",
                "|---|---:|---:|---:|",
            ]
            for name, stat in sorted(stats.items(), key=lambda item: -item[1]["usec"]):
                command = name.removeprefix("cmdstat_")
                lines.append(
                    f"| {command} | {stat['calls']:,} | {stat['usec']:,} | {stat['usec_per_call']:.1f} |"
                )
            tables.append("\n".join(lines))
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts/all-MiniLM-L6-v2")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    texts = bench_sentences(args.n)
    with tempfile.TemporaryDirectory(prefix="embedfleet-bench-") as workdir:
        tables = measure(texts, args.model_dir.resolve(), args.chunk_size, args.rounds, Path(workdir))
    header = f"CPU: {cpu_model()}; one cold {args.n:,}-text bulk job a round; chunk {args.chunk_size}"
    publish(header + "\n\n" + "\n\n".join(tables) + "\n", args.markdown)


if __name__ == "__main__":
    main()
