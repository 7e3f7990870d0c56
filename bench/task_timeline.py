"""Where a bulk job's time goes between tasks: each pool process's tasks, from the worker's log.

    .venv/bin/python bench/task_timeline.py [--n 10000] [--chunk-size 512] [--rounds 3] [--markdown OUT.md]

One cold bulk job a round on the bench fleet (2 processes x 1 thread). Celery logs each task's end
and run time ("Task ...[id] succeeded in 0.27s"), which gives, per pool process: how long after the
submit its first task started, how much of the job it spent in tasks, the time between its tasks,
and how long before the job's end its last task ended (the other process still running).
"""

from __future__ import annotations

import argparse
import itertools
import re
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fleet import ROOT, bench_sentences, cpu_model, drop_vectors, publish, start_bench_fleet

MS = 1_000.0
SUCCEEDED = re.compile(
    r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/(ForkPoolWorker-\d+)\] "
    r"Task \S+\[\S+\] succeeded in ([\d.]+)s"
)


@dataclass
class ProcessLine:
    process: str
    spans: list[tuple[float, float]]  # (start, end), epoch seconds

    def row(self, round_no: int, submitted: float, ended: float) -> str:
        spans = sorted(self.spans)
        busy = sum(end - start for start, end in spans)
        gaps = [later[0] - earlier[1] for earlier, later in itertools.pairwise(spans)]
        runs = sorted(end - start for start, end in spans)
        return (
            f"| {round_no} | {self.process} | {len(spans)} | {busy / (ended - submitted):.1%} | "
            f"{(spans[0][0] - submitted) * MS:.0f} | {runs[len(runs) // 2] * MS:.0f} | "
            f"{sum(gaps) * MS:.0f} | {(ended - spans[-1][1]) * MS:.0f} |"
        )


def task_spans(log_text: str) -> list[ProcessLine]:
    """Each pool process's tasks, as (start, end): the log stamps the end, the run time gives the start."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for stamp, process, seconds in SUCCEEDED.findall(log_text):
        end = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        spans.setdefault(process, []).append((end - float(seconds), end))
    return [ProcessLine(process, spans[process]) for process in sorted(spans)]


def measure(texts: list[str], model_dir: Path, chunk_size: int, rounds: int, workdir: Path) -> list[str]:
    rows: list[str] = []
    with ExitStack() as stack:
        fleet = start_bench_fleet(stack, workdir, model_dir)
        client = stack.enter_context(fleet.client(chunk_size=chunk_size))
        for round_no in range(1, rounds + 1):
            drop_vectors(fleet, client.build().fingerprint)
            logs = sorted(workdir.glob("worker*.log"))
            offsets = {log: log.stat().st_size for log in logs}
            submitted = time.time()
            client.submit(texts, priority="bulk").wait()
            ended = time.time()
            for log in logs:
                with log.open(errors="replace") as handle:
                    handle.seek(offsets[log])
                    rows += [line.row(round_no, submitted, ended) for line in task_spans(handle.read())]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts/all-MiniLM-L6-v2")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="embedfleet-bench-") as workdir:
        texts = bench_sentences(args.n)
        rows = measure(texts, args.model_dir.resolve(), args.chunk_size, args.rounds, Path(workdir))
    header = [
        f"CPU: {cpu_model()}; one cold {args.n:,}-text bulk job a round; chunk {args.chunk_size}; "
        "2 processes x 1 thread",
        "",
        "| round | process | tasks | in tasks | first task starts (ms after submit) | median task ms "
        "| between tasks, sum ms | idle at the end ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    publish("\n".join(header + rows) + "\n", args.markdown)


if __name__ == "__main__":
    main()
