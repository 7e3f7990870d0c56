"""Cross-request batching side by side: the fleet's own (gathering + coalescing) against celery-batches.

    .venv/bin/pip install --no-deps celery-batches   # see "celery<5.7" below: plain install downgrades Celery
    .venv/bin/python bench/batching_alternatives.py [--clients 1 32] [--seconds 15] [--flush-every 64]
        [--flush-interval-ms 10] [--bulk-n 10000] [--markdown OUT.md]

One sitting, one after the other, the same layout for both (2 prefork processes x 1 intra-op thread,
the project's EmbeddingEngine, N client threads each sending 1-text jobs back to back, every text
new, latency from submit to vector in hand):

A. the fleet (private redis-server, `celery -A worker worker`), as bench/load.py runs it, each client
   thread with its own EmbeddingClient: what batches requests together is the workers' gathering;
   then the most threads sharing one client (a web app's request threads), where the client's
   coalescing joins in; plus one bulk job alone, the "of bulk" reference for every row;
B. celery-batches: a `Batches` task in this module on a second private redis-server (broker and
   result backend), `celery -A batching_alternatives worker -P prefork -c 2
   --prefetch-multiplier=<flush_every>`, the project's Celery settings (JSON, acks_late, reject on
   worker lost, Redis transport options), the engine opened once per pool child; each batch is one
   engine call and each request gets its vector (float32, base64) through the result backend.

What limits celery-batches (0.11, read for this) and how this bench meets it:
- Batches form in the worker's main process: its strategy buffers received messages and hands a
  whole batch to one pool child as one call. A batch holds at most what the node has prefetched, so
  prefetch multiplier x concurrency must reach flush_every or every batch is cut by the timer at the
  prefetch limit (docs/index.rst; issue "Capped number of messages queued with flush_every").
- With acks_late every message of a batch is acked when the whole batch returns (the pool callback
  of Batches.flush), so a running batch keeps its messages' prefetch slots; without acks_late they
  are all acked when a child accepts the batch (celery_batches/__init__.py, Batches.flush).
- A batch that raises is acked all the same (trace.py apply_batches_task logs and returns None): its
  requests get no result unless the body marks them failed. A child that dies mid-batch (OOM, hard
  time limit: the pool's limit covers the batch as a whole) fires neither callback and Batches.flush
  gives no error callback, so the messages are neither acked nor rejected: task_reject_on_worker_lost
  and task_acks_on_failure do not apply, and on Redis they come back only at the visibility timeout
  or the worker's restart (celery_batches/__init__.py, Batches.flush).
- The task's return value only reaches signals: each request needs its own
  app.backend.mark_as_done(request.id, result, request=request), a result-backend write per request
  (docs/index.rst, "Returning results"); with task_ignore_result=True (the project's setting) the
  write is skipped, so this app turns it off.
- Flush timer: the first message into an empty buffer starts a repeating flush_interval timer on the
  consumer's event loop, and a tick that finds the buffer empty stops it, so a request that arrives
  alone waits about a whole interval (celery_batches/__init__.py, Batches.Strategy and _do_flush).
- celery-batches 0.11 declares celery<5.7 (its package metadata); this project runs Celery 5.7, so it
  is installed with --no-deps and is not in the `bench` extra (that would downgrade the fleet's Celery).
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from importlib import import_module
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import redis
from celery import Celery
from celery.signals import celeryd_init, task_revoked, worker_process_init, worker_shutdown
from celery_batches import Batches, SimpleRequest
from fleet import ROOT, bench_sentences, cpu_model, publish, start_bench_fleet
from load import MS, Phase, TextSource, bulk_alone, mean_rate, render, run_clients

from contract import broker_transport
from contract.celery_config import celery_config
from contract.codec import VECTOR_DTYPE, Matrix
from contract.redis_connection import as_text
from contract.settings import FleetSettings, get_settings
from localfleet.fleet import ENGINE_READY_LINE, WorkerNode, fleet_env
from localfleet.redis_server import start_redis
from worker.engine import EmbeddingEngine

BENCH_DIR = Path(__file__).resolve().parent
MODULE = Path(__file__).stem
PROCESSES = 2
SENTENCES = 8_000
WARMUP_TEXTS = 64
JOB_TIMEOUT_S = 60.0
WORKER_STOP_S = 30.0
BATCH_TASK = "embedfleet.bench.embed_batch"
BATCHES_QUEUE = "embedfleet-bench-batches"
STATS_KEY = "embedfleet-bench:batches"
FLEET_LABEL = "fleet (gathering)"
DEFAULT_FLUSH_EVERY = 64
DEFAULT_FLUSH_INTERVAL_MS = 10.0
# The worker subprocess reads its role and its Batches parameters from these at import.
WORKER_ENV = "EMBEDFLEET_BATCHES_WORKER"
FLUSH_EVERY_ENV = "EMBEDFLEET_BATCHES_FLUSH_EVERY"
FLUSH_INTERVAL_ENV = "EMBEDFLEET_BATCHES_FLUSH_INTERVAL_MS"
FLUSH_EVERY = int(os.environ.get(FLUSH_EVERY_ENV, DEFAULT_FLUSH_EVERY))
FLUSH_INTERVAL_MS = float(os.environ.get(FLUSH_INTERVAL_ENV, DEFAULT_FLUSH_INTERVAL_MS))

app = Celery(MODULE)
_engine: EmbeddingEngine | None = None


def configure(settings: FleetSettings) -> None:
    """The project's Celery settings, plus what returning results through celery-batches needs."""
    broker_transport.install()  # as make_celery does: the same guarded Redis transport
    app.conf.update(celery_config(settings))
    app.conf.update(
        result_backend=settings.broker_url,
        task_ignore_result=False,  # else mark_as_done skips the write (the request says ignore)
        task_default_queue=BATCHES_QUEUE,
    )


def detach_fleet_handlers() -> None:
    """Importing worker.engine runs worker/__init__ and so worker.app, whose signal handlers fire for
    any app in the process: they would move this worker onto the fleet's queues, advertise it in the
    fleet's registry and open a second engine per child."""
    fleet_app = import_module("worker.app")  # `import worker.app` would give the Celery app, not the module
    celeryd_init.disconnect(fleet_app.check_artifact_and_pick_queues)
    worker_process_init.disconnect(fleet_app.open_engine)
    worker_shutdown.disconnect(fleet_app.leave_fleet)
    task_revoked.disconnect(fleet_app.count_revoked_chunk)


if os.environ.get(WORKER_ENV):  # the celery-batches worker and its pool children
    detach_fleet_handlers()
    configure(get_settings())


@worker_process_init.connect
def open_engine(**_: Any) -> None:
    """One engine per pool child, opened and warmed before the child takes work (as worker.runtime)."""
    global _engine
    if not os.environ.get(WORKER_ENV):
        return
    settings = get_settings()
    _engine = EmbeddingEngine(settings.model_dir, settings)
    _engine.warm_up()
    app.log.get_default_logger().info("%s: %d intra-op threads", ENGINE_READY_LINE, _engine.threads)


def encode(vector: np.ndarray) -> str:
    """float32 bytes in base64: JSON carries them, and the client gets the exact vector back."""
    return base64.b64encode(np.asarray(vector, dtype=VECTOR_DTYPE).tobytes()).decode("ascii")


def decode(payload: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(payload), dtype=VECTOR_DTYPE)


@app.task(
    base=Batches,
    name=BATCH_TASK,
    flush_every=FLUSH_EVERY,
    flush_interval=FLUSH_INTERVAL_MS / MS,
    acks_late=True,
)
def embed_batch(requests: list[SimpleRequest]) -> int:
    """All texts of the batch in one engine call; each request marked done with its own vector."""
    if _engine is None:
        raise RuntimeError("no engine in this process: it opens at worker_process_init")
    vectors = _engine.embed([str(request.args[0]) for request in requests]).vectors
    for request, vector in zip(requests, vectors, strict=True):
        app.backend.mark_as_done(request.id, encode(vector), request=request)
    with app.backend.client.pipeline() as pipe:  # batch sizes, for the table's note
        pipe.hincrby(STATS_KEY, "batches", 1).hincrby(STATS_KEY, "texts", len(requests)).execute()
    return len(requests)


class BatchesClient:
    """What load.run_clients uses of a client: a context manager with embed(texts, timeout)."""

    def __enter__(self) -> BatchesClient:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def embed(self, texts: Sequence[str], timeout: float | None = JOB_TIMEOUT_S) -> Matrix:
        """One task per text, as a web app would call `task.delay(text).get()`."""
        pending = [embed_batch.delay(text) for text in texts]
        return np.stack([decode(result.get(timeout=timeout)) for result in pending])


class BatchesFleet:
    """Stands in for LocalFleet in load.run_clients (which only calls client()); reads batch sizes."""

    def __init__(self, stats: redis.Redis) -> None:
        self.stats = stats

    def client(self) -> BatchesClient:
        return BatchesClient()

    def reset_stats(self) -> None:
        self.stats.delete(STATS_KEY)

    def stats_note(self) -> str:
        counts = {as_text(key): int(value) for key, value in self.stats.hgetall(STATS_KEY).items()}
        batches = counts.get("batches", 0)
        return f"; {counts.get('texts', 0) / max(1, batches):.1f} texts a batch on average ({batches:,})"


def measure_fleet(args: argparse.Namespace, workdir: Path, source: TextSource) -> tuple[Phase, list[Phase]]:
    """Phase A, as bench/load.py: the bulk job alone, then N client threads of 1-text jobs."""
    workdir.mkdir()
    with ExitStack() as stack:
        fleet = start_bench_fleet(stack, workdir, args.model_dir, processes=PROCESSES)
        client = stack.enter_context(fleet.client())
        client.embed(source.take(WARMUP_TEXTS))  # warm both processes
        bulk = bulk_alone(client, source.take(args.bulk_n))
        phases = []
        for clients in args.clients:
            phase = run_clients(fleet, source, clients, args.seconds, (1,))
            phase.name = f"{FLEET_LABEL}, {clients} clients"
            phases.append(phase)
        shared = run_clients(fleet, source, max(args.clients), args.seconds, (1,), shared=True)
        shared.name = f"fleet (gathering + coalescing), {max(args.clients)} threads sharing one client"
    return bulk, [*phases, shared]


def start_batches_worker(
    stack: ExitStack, env: dict[str, str], args: argparse.Namespace, log: Path
) -> WorkerNode:
    """`celery -A batching_alternatives worker` as a real subprocess, stopped (SIGTERM, then kill) with
    `stack`; returns once both pool children have opened their engines and the consumer runs."""
    name = f"batches-{uuid.uuid4().hex[:6]}@{os.uname().nodename}"
    command = [sys.executable, "-m", "celery", "-A", MODULE, "worker", "--loglevel=INFO", "-n", name]
    command += ["--pool=prefork", f"--concurrency={PROCESSES}", f"--prefetch-multiplier={args.flush_every}"]
    command += [f"--queues={BATCHES_QUEUE}", "--without-gossip", "--without-mingle"]
    python_path = [str(BENCH_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    worker_env = {
        **os.environ,
        **env,
        WORKER_ENV: "1",
        FLUSH_EVERY_ENV: str(args.flush_every),
        FLUSH_INTERVAL_ENV: str(args.flush_interval_ms),
        "PYTHONPATH": os.pathsep.join(python_path),
    }
    with log.open("ab") as sink:
        process = subprocess.Popen(command, cwd=BENCH_DIR, env=worker_env, stdout=sink, stderr=sink)
    node = WorkerNode(name, log, process)
    stack.callback(node.stop, WORKER_STOP_S)
    node.wait_ready(PROCESSES)
    return node


def batches_label(args: argparse.Namespace) -> str:
    return f"celery-batches flush_every={args.flush_every} flush_interval={args.flush_interval_ms:g}ms"


def measure_batches(args: argparse.Namespace, workdir: Path, source: TextSource) -> list[Phase]:
    """Phase B: the same client threads, each text one `embed_batch.delay(text).get()`."""
    workdir.mkdir()
    with ExitStack() as stack:
        server = start_redis(workdir)
        stack.callback(server.stop)
        settings, env = fleet_env(
            {
                "EMBED_BROKER_URL": server.url,
                "EMBED_CACHE_URL": server.url,
                "EMBED_MODEL_DIR": str(args.model_dir),
                "EMBED_WORKER_CONCURRENCY": str(PROCESSES),
                "EMBED_INTRA_OP_THREADS": "1",
            }
        )
        configure(settings)
        stack.callback(app.close)
        start_batches_worker(stack, env, args, workdir / "worker.log")
        batches = BatchesFleet(server.client())
        batches.client().embed(source.take(WARMUP_TEXTS))
        phases = []
        for clients in args.clients:
            batches.reset_stats()
            # run_clients wants a LocalFleet; it only calls client(), which BatchesFleet provides.
            phase = run_clients(batches, source, clients, args.seconds, (1,))  # type: ignore[arg-type]
            phase.name = f"{batches_label(args)}, {clients} clients"
            phase.note += batches.stats_note()
            phases.append(phase)
    return phases


def report(args: argparse.Namespace, bulk: Phase, fleet: list[Phase], batches: list[Phase]) -> str:
    """One table: the bulk job, then the fleet and celery-batches row by row for each client count."""
    rows = [bulk]
    for ours, theirs in zip(fleet, batches, strict=False):  # the shared-client row has no pair
        rows += [ours, theirs]
    rows.append(fleet[-1])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = (
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; both: {PROCESSES} prefork processes x 1 intra-op "
        f"thread, 1-text jobs back to back, every text new; {args.seconds:g} s a row; celery "
        f"{version('celery')}, celery-batches {version('celery-batches')}; {when}"
    )
    return f"{header}\n\n{render(rows, mean_rate(rows[:1]))}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--flush-every", type=int, default=DEFAULT_FLUSH_EVERY)
    parser.add_argument("--flush-interval-ms", type=float, default=DEFAULT_FLUSH_INTERVAL_MS)
    parser.add_argument("--bulk-n", type=int, default=10_000, help="texts of the bulk job ('of bulk')")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts/all-MiniLM-L6-v2")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if args.flush_every < 1 or args.flush_interval_ms <= 0:
        parser.error("--flush-every must be >= 1 and --flush-interval-ms > 0")
    args.model_dir = args.model_dir.resolve()
    source = TextSource(bench_sentences(SENTENCES))
    with tempfile.TemporaryDirectory(prefix="embedfleet-batching-") as workdir:
        bulk, fleet = measure_fleet(args, Path(workdir) / "fleet", source)
        batches = measure_batches(args, Path(workdir) / "batches", source)
    publish(report(args, bulk, fleet, batches), args.markdown)


if __name__ == "__main__":
    main()
