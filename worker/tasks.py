"""The one task: run a chunk (worker.chunk_runner) and turn its outcome into Celery's terms.

Done: the message is acked. Failed for good: counted first, then raised, so Flower shows FAILURE.
Failed with attempts left: Celery's retry, after a delay. Redis unreachable past
EMBED_REDIS_OUTAGE_S: the message goes back to the queue untouched (Reject with requeue), since
nothing could be counted. No path acks a chunk that was not counted.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
from celery import Task
from celery.exceptions import Reject, Retry

from contract.celery_config import EMBED_TASK, send_chunk
from contract.jobs import ChunkRef
from contract.lanes import Lane, lane_of, sibling_queue
from worker.app import app
from worker.chunk_runner import ChunkRunner, RetryableChunkError
from worker.interjection import InteractiveInterjection

if TYPE_CHECKING:  # Flower imports this module without the model runtime
    from worker.gathering import CarriedNote

log = logging.getLogger(__name__)


@app.task(name=EMBED_TASK, bind=True, Request="worker.requests:ChunkRequest", max_retries=None)
def embed_chunk(self: Task, **fields: object) -> str:
    try:
        ref = ChunkRef.from_kwargs(fields)
    except ValueError as exc:
        log.error("dropped a message that names no chunk: %s", exc)
        return "refused: names no chunk"
    from worker.runtime import open_runtime  # not at import: Flower loads this module without ONNX Runtime

    queue = str((self.request.delivery_info or {}).get("routing_key") or "")

    def republish(chunk: ChunkRef) -> None:
        send_chunk(app, chunk, queue)

    runner = ChunkRunner(open_runtime(), node=self.request.hostname or "", republish=republish)
    carried = _Carried()
    try:
        return _run(runner, ref, queue, self.request.id, carried)
    except redis.RedisError as exc:
        log.warning(
            "chunk %s of job %s goes back to the queue: Redis unavailable (%s)", ref.chunk, ref.job_id, exc
        )
        for chunk in carried.chunks:  # they left the queue with this task: send them back too
            with contextlib.suppress(Exception):
                republish(chunk)
        raise Reject(f"Redis unavailable: {exc}", requeue=True) from exc
    except RetryableChunkError as exc:
        log.warning("%s; retrying", exc)
        raise _retry(self, exc) from exc
    finally:
        carried.forget()


@dataclass
class _Carried:
    """The waiting chunks a task took along with its own (worker.gathering), and their note."""

    chunks: list[ChunkRef] = field(default_factory=list)
    note: CarriedNote | None = None

    def forget(self) -> None:
        if self.note is not None:
            self.note.forget()


def _run(runner: ChunkRunner, ref: ChunkRef, queue: str, task_id: str, carried: _Carried) -> str:
    """The task's chunk with those it carries; on the bulk lane waiting interactive chunks between its
    engine runs, on the interactive lane those that queued meanwhile, after it."""
    runtime = runner.runtime
    interjection = _interjection(runner, queue, task_id)
    interactive = lane_of(queue) is Lane.INTERACTIVE
    if interactive:
        carried.chunks = runtime.gatherer.take(queue, ref.texts)
    if carried.chunks:
        carried.note = runtime.gatherer.note(task_id, queue, carried.chunks)
    result = runner.run(ref, carried.chunks, carried.note)
    if interjection is not None and interjection.served:
        served, batches = interjection.served, interjection.batches
        result += f"; served {served} waiting interactive chunks in {batches} batches between its runs"
    if interactive and runtime.settings.interactive_drain_s:
        carried.forget()  # they are counted; the drain notes what it takes under the same task id
        result += _drain(runner, queue, task_id)
    return result


def _interjection(bulk_runner: ChunkRunner, queue: str, task_id: str) -> InteractiveInterjection | None:
    """On the bulk lane, the runner serves waiting interactive chunks before each engine run."""
    runtime = bulk_runner.runtime
    if lane_of(queue) is not Lane.BULK or not runtime.settings.interject_max_texts:
        return None
    interactive = sibling_queue(queue, Lane.INTERACTIVE)
    runner = ChunkRunner(
        runtime, bulk_runner.node, republish=lambda chunk: send_chunk(app, chunk, interactive)
    )
    interjection = InteractiveInterjection(
        runtime.gatherer, runner, interactive, task_id, runtime.settings.interject_max_texts, watched=True
    )
    bulk_runner.before_each_run = interjection
    return interjection


def _drain(runner: ChunkRunner, queue: str, task_id: str) -> str:
    """After an interactive task's own batch: serve what queued meanwhile (worker.interjection)."""
    settings = runner.runtime.settings
    drain = InteractiveInterjection(
        runner.runtime.gatherer, runner, queue, task_id, settings.gather_max_texts
    )
    drain.drain(settings.interactive_drain_s)
    return f"; then served {drain.served} waiting chunks in {drain.batches} batches" if drain.served else ""


def _retry(task: Task, exc: Exception) -> Exception:
    """Celery's retry, but a retry that cannot be published requeues the message instead of dropping it."""
    from worker.runtime import open_runtime

    try:
        return task.retry(exc=exc, countdown=open_runtime().settings.retry_delay_s, throw=False)
    except Retry as retry:
        return retry
    except Reject as reject:
        return Reject(f"retry could not be published: {reject.reason}", requeue=True)
