"""Where the CPU of a 1-text job goes: per process of a real fleet, and the client's own thread.

    .venv/bin/python bench/cpu_per_job.py [--clients 32] [--seconds 12] [--rounds 1]

Starts the load test's fleet (private redis-server, 2 prefork processes x 1 thread). First one
client sends 1-text `embed()` calls back to back on an idle fleet: its thread's CPU time per call.
Then `--clients` threads, each with its own client, do the same for `--seconds`: the CPU time of
each process (read from /proc) over the jobs done, and the chunks each Celery task ran (its own
batch and those it drained after it, from the worker log).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from fleet import ROOT, bench_sentences, cpu_model, cpu_seconds, redis_pid, start_bench_fleet
from load import TextSource, run_clients

from localfleet.fleet import LocalFleet

WARM_CALLS = 100
ALONE_CALLS = 2_000
# A task's own batch ("10 chunks (9 carried): ..."), then what it drained ("; then served 30 waiting
# chunks in 3 batches").
TASK_DONE = re.compile(
    r"succeeded in [0-9.]+s: '(\d+) chunk[^'\n]*?(?:then served (\d+) waiting chunks[^']*)?'"
)


def by_process(fleet: LocalFleet, redis: int) -> dict[str, float]:
    """CPU seconds so far of the worker's pool children, its main process, redis-server and this one."""
    return {
        "pool children": sum(cpu_seconds(pid) for pid in fleet.worker.children()),
        "worker main process": cpu_seconds(fleet.worker.pid),
        "redis-server": cpu_seconds(redis),
        "clients' process": time.process_time(),
    }


def alone(fleet: LocalFleet, source: TextSource) -> float:
    """ms of this thread's CPU per 1-text embed() on an idle fleet."""
    with fleet.client() as client:
        for _ in range(WARM_CALLS):
            client.embed(source.take(1))
        started = time.thread_time()
        for _ in range(ALONE_CALLS):
            client.embed(source.take(1))
        return (time.thread_time() - started) / ALONE_CALLS * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts/all-MiniLM-L6-v2")
    args = parser.parse_args()
    source = TextSource(bench_sentences(8_000))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; fleet: 2 processes x 1 thread\n")
    print(
        f"| round | 1 client: its CPU per call | {args.clients} clients: jobs/s | "
        "pool children | clients' process | redis-server | worker main process | total | chunks per task |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="embedfleet-cpu-")))
        fleet = start_bench_fleet(stack, workdir, args.model_dir.resolve())
        redis = redis_pid(fleet.settings.cache_url)
        for round_ in range(1, args.rounds + 1):
            own_ms = alone(fleet, source)
            tasks_before = len(TASK_DONE.findall(fleet.worker.log_text()))
            before = by_process(fleet, redis)
            phase = run_clients(fleet, source, args.clients, args.seconds, (1,))
            after = by_process(fleet, redis)
            done = TASK_DONE.findall(fleet.worker.log_text())[tasks_before:]
            sizes = [int(own) + int(drained or 0) for own, drained in done]
            per_job = {name: (after[name] - before[name]) / phase.jobs * 1e3 for name in before}
            cells = " | ".join(
                f"{per_job[name]:.2f} ms"
                for name in ("pool children", "clients' process", "redis-server", "worker main process")
            )
            print(
                f"| {round_} | {own_ms:.2f} ms | {phase.jobs / phase.seconds:,.0f} | {cells} | "
                f"{sum(per_job.values()):.2f} ms | {sum(sizes) / max(1, len(sizes)):.1f} |"
            )


if __name__ == "__main__":
    main()
