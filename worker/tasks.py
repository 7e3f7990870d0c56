"""The one task: embed a chunk's cache misses, store them, count the chunk once."""

from __future__ import annotations

import logging

from celery import Task

from contract.celery_config import EMBED_TASK
from contract.jobs import ChunkMessage
from worker.app import app
from worker.runtime import ProcessRuntime, open_runtime

log = logging.getLogger(__name__)


class FingerprintMismatch(RuntimeError):
    """The job was submitted for another model build than this worker serves; retrying cannot help."""


@app.task(name=EMBED_TASK, bind=True)
def embed_chunk(self: Task, **fields: object) -> int:
    message = ChunkMessage(**fields)  # type: ignore[arg-type]
    runtime = open_runtime()
    attempts = runtime.progress.record_attempt(message)
    limit = runtime.settings.max_chunk_attempts
    if attempts > limit:
        last = runtime.progress.last_error(message) or "its worker process died (killed or out of memory)"
        return give_up(runtime, message, last)
    try:
        return embed_message(runtime, message)
    except FingerprintMismatch as exc:
        return runtime.progress.complete(message, 0, error=str(exc))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "chunk %s of job %s failed (attempt %d/%d): %s",
            message.chunk,
            message.job_id,
            attempts,
            limit,
            error,
        )
        runtime.progress.record_error(message, error)
        if attempts >= limit:
            return give_up(runtime, message, error)
        raise self.retry(exc=exc, countdown=runtime.settings.retry_delay_s, max_retries=limit) from exc


def give_up(runtime: ProcessRuntime, message: ChunkMessage, last_error: str) -> int:
    """Count the chunk as failed, so its job ends instead of waiting forever."""
    limit = runtime.settings.max_chunk_attempts
    error = f"chunk {message.chunk} failed {limit} times; last error: {last_error}"
    return runtime.progress.complete(message, 0, error=error)


def embed_message(runtime: ProcessRuntime, message: ChunkMessage) -> int:
    engine, cache = runtime.engine, runtime.cache
    if message.fingerprint != engine.fingerprint:
        raise FingerprintMismatch(
            f"job {message.job_id} was submitted for model {message.fingerprint}, but this worker "
            f"serves {engine.fingerprint}: resubmit the job (the fleet now serves another build)"
        )
    cached = cache.touch(message.fingerprint, message.digests)
    missing = [i for i, hit in enumerate(cached) if not hit]
    hits = [i for i, hit in enumerate(cached) if hit]
    truncated = [False] * len(message.texts)
    if missing:
        result = engine.embed([message.texts[i] for i in missing])
        cache.write(
            message.fingerprint, [message.digests[i] for i in missing], result.vectors, result.truncated
        )
        for index, flag in zip(missing, result.truncated, strict=True):
            truncated[index] = flag
    hit_flags = cache.truncated(message.fingerprint, [message.digests[i] for i in hits])
    for index, flag in zip(hits, hit_flags, strict=True):
        truncated[index] = flag
    counts = message.counts or [1] * len(message.texts)
    cut_positions = sum(count for count, flag in zip(counts, truncated, strict=True) if flag)
    return runtime.progress.complete(message, cut_positions)
