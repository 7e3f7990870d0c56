"""The one task: run a chunk (worker.chunk_runner) and turn its outcome into Celery's terms.

Done: the message is acked. Failed for good: counted first, then raised, so Flower shows FAILURE.
Failed with attempts left: Celery's retry, after a delay. Redis unreachable past
EMBED_REDIS_OUTAGE_S: the message goes back to the queue untouched (Reject with requeue), since
nothing could be counted. No path acks a chunk that was not counted.
"""

from __future__ import annotations

import contextlib
import logging

import redis
from celery import Task
from celery.exceptions import Reject, Retry

from contract.celery_config import EMBED_TASK, send_chunk
from contract.jobs import ChunkRef
from contract.lanes import Lane, lane_of, sibling_queue
from worker.app import app
from worker.chunk_runner import ChunkRunner, RetryableChunkError
from worker.interjection import InteractiveInterjection

log = logging.getLogger(__name__)


@app.task(name=EMBED_TASK, bind=True, Request="worker.requests:ChunkRequest", max_retries=None)
def embed_chunk(self: Task, **fields: object) -> str:
    try:
        ref = ChunkRef.from_kwargs(fields)
    except ValueError as exc:
        log.error("dropped a message that names no chunk: %s", exc)
        return "refused: names no chunk"
    from worker.runtime import open_runtime  # not at import: Flower loads this module without ONNX Runtime

    runtime = open_runtime()
    queue = str((self.request.delivery_info or {}).get("routing_key") or "")
    carried: list[ChunkRef] = []
    note = None

    def republish(chunk: ChunkRef) -> None:
        send_chunk(app, chunk, queue)

    runner = ChunkRunner(runtime, node=self.request.hostname or "", republish=republish)
    interjection = _interjection(runner, queue, self.request.id)
    try:
        if lane_of(queue) is Lane.INTERACTIVE:
            carried = runtime.gatherer.take(queue, ref.texts)
        if carried:
            note = runtime.gatherer.note(self.request.id, queue, carried)
        result = runner.run(ref, carried, note)
        if interjection is not None and interjection.served:
            result += f"; served {interjection.served} waiting interactive chunks between its runs"
        return result
    except redis.RedisError as exc:
        log.warning(
            "chunk %s of job %s goes back to the queue: Redis unavailable (%s)", ref.chunk, ref.job_id, exc
        )
        for chunk in carried:  # they left the queue with this task: send them back too
            with contextlib.suppress(Exception):
                republish(chunk)
        raise Reject(f"Redis unavailable: {exc}", requeue=True) from exc
    except RetryableChunkError as exc:
        log.warning("%s; retrying", exc)
        raise _retry(self, exc) from exc
    finally:
        if note is not None:
            with contextlib.suppress(redis.RedisError):
                note.forget()


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
        runtime.gatherer, runner, interactive, task_id, runtime.settings.interject_max_texts
    )
    bulk_runner.before_each_run = interjection
    return interjection


def _retry(task: Task, exc: Exception) -> Exception:
    """Celery's retry, but a retry that cannot be published requeues the message instead of dropping it."""
    from worker.runtime import open_runtime

    try:
        return task.retry(exc=exc, countdown=open_runtime().settings.retry_delay_s, throw=False)
    except Retry as retry:
        return retry
    except Reject as reject:
        return Reject(f"retry could not be published: {reject.reason}", requeue=True)
