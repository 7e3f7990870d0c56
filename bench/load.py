"""Small requests against a real fleet: latency and throughput of 1-text jobs, alone and beside bulk.

    .venv/bin/python bench/load.py [--clients 1 8 32] [--seconds 15] [--bulk-n 50000]
        [--phases clients mix shared backlog beside] [--env EMBED_X=value ...] [--markdown OUT.md]

Every phase runs on the same fleet in one sitting (private redis-server, `celery -A worker
worker`, 2 prefork processes x 1 thread): the bulk job alone, first and again last (shares are of
the mean of the two); N client threads each sending 1-text jobs (and a 1/4/16 mix) back to back,
latency from submit to vectors in hand; one 1-text job behind a 10,000-text backlog; a
50,000-text bulk job with interactive requests beside it. Every text is new (nothing is served
from the cache).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from fleet import ROOT, bench_sentences, cpu_model, publish, start_bench_fleet

from localfleet.fleet import LocalFleet
from producer import EmbeddingClient

PROCESSES = 2
MIX = (1, 4, 16)
PACE_S = 0.1
COUNTER_DIGITS = 7
MS = 1_000.0
PHASES = ("clients", "mix", "shared", "backlog", "beside")


@dataclass
class Phase:
    name: str
    seconds: float
    jobs: int = 0
    texts: int = 0
    latencies_s: list[float] = field(default_factory=list)
    note: str = ""

    def percentile(self, share: float) -> str:
        """A latency cell in ms; a bulk row, timed as a whole, has none."""
        ordered = sorted(self.latencies_s)
        if not ordered:
            return "—"
        return f"{ordered[min(len(ordered) - 1, int(share * len(ordered)))] * MS:.1f}"

    def row(self, bulk_rate: float) -> str:
        rate = self.texts / self.seconds
        return (
            f"| {self.name} | {self.jobs:,} | {self.jobs / self.seconds:,.0f} | {rate:,.0f} | "
            f"{rate / bulk_rate:.0%} | {self.percentile(0.50)} | {self.percentile(0.95)} | "
            f"{self.percentile(0.99)} | {self.note} |"
        )


class TextSource:
    """Fresh texts on demand: STS-B sentences with a counter, so no request is a cache hit.

    The counter has a fixed width, so every phase's texts have the same token lengths: bulk texts
    taken first are not shorter than the interactive ones taken after them.
    """

    def __init__(self, sentences: list[str]) -> None:
        self.sentences = sentences
        self.counter = itertools.count()
        self.tag = os.urandom(3).hex()

    def take(self, count: int) -> list[str]:
        numbers = [next(self.counter) for _ in range(count)]
        sentences = self.sentences
        return [f"{sentences[n % len(sentences)]} ({self.tag}.{n:0{COUNTER_DIGITS}d})" for n in numbers]


def run_clients(
    fleet: LocalFleet,
    source: TextSource,
    clients: int,
    seconds: float,
    sizes: tuple[int, ...],
    shared: bool = False,
) -> Phase:
    """`clients` threads sending jobs back to back: each with its own EmbeddingClient (every call its
    own job), or all sharing one (a web app's request threads: concurrent embed() calls share jobs)."""
    kind = "threads sharing one client" if shared else "clients"
    phase = Phase(f"{clients} {kind}, jobs of {'/'.join(map(str, sizes))} texts", seconds)
    common = fleet.client() if shared else None
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client_loop(index: int) -> None:
        sizes_cycle = itertools.cycle(sizes[index % len(sizes) :] + sizes[: index % len(sizes)])
        with contextlib.nullcontext(common) if common else fleet.client() as client:
            while time.perf_counter() < stop:
                texts = source.take(next(sizes_cycle))
                started = time.perf_counter()
                client.embed(texts, timeout=60)
                took = time.perf_counter() - started
                with lock:
                    phase.jobs += 1
                    phase.texts += len(texts)
                    phase.latencies_s.append(took)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    started, cpu_started = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - started
    cores = (time.process_time() - cpu_started) / phase.seconds
    phase.note = f"the clients' own process used {cores:.2f} of the {os.cpu_count()} cores"
    if common is not None:
        common.close()
    return phase


def bulk_alone(client: EmbeddingClient, texts: list[str], when: str = "") -> Phase:
    started = time.perf_counter()
    client.submit(texts, priority="bulk").wait(timeout=600)
    name = f"bulk: one {len(texts):,}-text job{', ' + when if when else ''}"
    return Phase(name, time.perf_counter() - started, 1, len(texts))


def behind_backlog(client: EmbeddingClient, source: TextSource, backlog: int) -> Phase:
    bulk = client.submit(source.take(backlog), priority="bulk")
    time.sleep(0.2)
    started = time.perf_counter()
    client.embed(source.take(1), timeout=60)
    took = time.perf_counter() - started
    bulk_left = bulk.status()
    bulk.wait(timeout=600)
    phase = Phase(f"one 1-text job just after a {backlog:,}-text job", took, 1, 1, [took])
    phase.note = f"bulk job {bulk_left.done:,}/{backlog:,} done when it returned"
    return phase


def beside_bulk(
    fleet: LocalFleet, client: EmbeddingClient, source: TextSource, bulk_texts: list[str]
) -> tuple[Phase, Phase]:
    """Interactive 1-text jobs every PACE_S while a bulk job runs; the bulk job's own rate."""
    done = threading.Event()
    interactive = Phase(
        f"1-text jobs every {PACE_S * MS:.0f} ms beside a {len(bulk_texts):,}-text bulk job", 0.0
    )

    def paced() -> None:
        with fleet.client() as own:
            while not done.is_set():
                started = time.perf_counter()
                own.embed(source.take(1), timeout=60)
                interactive.latencies_s.append(time.perf_counter() - started)
                interactive.jobs += 1
                interactive.texts += 1
                time.sleep(max(0.0, PACE_S - (time.perf_counter() - started)))

    thread = threading.Thread(target=paced)
    started = time.perf_counter()
    job = client.submit(bulk_texts, priority="bulk")
    thread.start()
    job.wait(timeout=900)
    seconds = time.perf_counter() - started
    done.set()
    thread.join()
    interactive.seconds = seconds
    bulk = Phase(
        f"bulk: the same {len(bulk_texts):,} texts, new, with the interactive load beside",
        seconds,
        1,
        len(bulk_texts),
    )
    return interactive, bulk


def measure(args: argparse.Namespace, workdir: Path, source: TextSource) -> list[Phase]:
    with ExitStack() as stack:
        fleet = start_bench_fleet(
            stack, workdir, args.model_dir, extra=dict(item.split("=", 1) for item in args.env)
        )
        client = stack.enter_context(fleet.client())
        client.embed(source.take(64))  # warm both processes
        most = max(args.clients)
        runs: dict[str, Callable[[], list[Phase]]] = {
            "clients": lambda: [run_clients(fleet, source, n, args.seconds, (1,)) for n in args.clients],
            "mix": lambda: [run_clients(fleet, source, most, args.seconds, MIX)],
            "shared": lambda: [run_clients(fleet, source, most, args.seconds, (1,), shared=True)],
            "backlog": lambda: [behind_backlog(client, source, 10_000)],
            "beside": lambda: list(beside_bulk(fleet, client, source, source.take(args.bulk_n))),
        }
        phases = [bulk_alone(client, source.take(args.bulk_n))]
        for name in args.phases:
            phases.extend(runs[name]())
        phases.append(bulk_alone(client, source.take(args.bulk_n), "again, after the other phases"))
    return phases


def mean_rate(bulk: Sequence[Phase]) -> float:
    """Texts/s of bulk jobs timed before and after the other phases: this shared host drifts by
    10-20 % over minutes, and one bulk job alone would tilt every share its way."""
    return sum(phase.texts / phase.seconds for phase in bulk) / len(bulk)


def render(phases: list[Phase], bulk_rate: float) -> str:
    lines = [
        "| workload | jobs | jobs/s | texts/s | of bulk | p50 ms | p95 ms | p99 ms | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    return "\n".join(lines + [phase.row(bulk_rate) for phase in phases])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--bulk-n", type=int, default=50_000)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts/all-MiniLM-L6-v2")
    parser.add_argument("--env", nargs="*", default=[], help="EMBED_X=value for the fleet and the clients")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    args.model_dir = args.model_dir.resolve()
    source = TextSource(bench_sentences(8_000))
    with tempfile.TemporaryDirectory(prefix="embedfleet-load-") as workdir:
        phases = measure(args, Path(workdir), source)
    when = time.strftime("%Y-%m-%d %H:%M")
    header = f"CPU: {cpu_model()}, {os.cpu_count()} cores; fleet: {PROCESSES} processes x 1 thread; {when}"
    report = f"{header}\n\n{render(phases, mean_rate([phases[0], phases[-1]]))}\n"
    publish(report, args.markdown)


if __name__ == "__main__":
    main()
