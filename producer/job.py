"""A submitted job: its status, a blocking wait with optional progress bar, and its vectors."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from contract import keys
from contract.codec import Matrix, decode_vectors
from contract.jobs import JobRecord, JobState, unpack_digests
from producer.errors import EmbedFleetError, JobFailedError, JobNotFoundError, JobTimeoutError

if TYPE_CHECKING:
    from producer.client import EmbeddingClient


class Job:
    def __init__(self, client: EmbeddingClient, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self) -> JobRecord:
        raw = self.client.redis.hgetall(keys.job_key(self.id))
        if not raw:
            raise JobNotFoundError(
                f"no job {self.id} on {self.client.settings.cache_url}: check the id and "
                f"EMBED_CACHE_URL (jobs expire after EMBED_JOB_TTL_S={self.client.settings.job_ttl_s})"
            )
        return JobRecord.from_redis(raw)

    def wait(self, timeout: float | None = None, progress: bool = False) -> JobRecord:
        """Block on the job's progress channel (no busy polling) until it finishes or time runs out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.client.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.job_channel(self.id))
        record = self.status()  # read after subscribing, so no announcement is missed
        bar = tqdm(total=record.total, unit="text", desc=f"job {self.id[:8]}", disable=not progress)
        try:
            while True:
                bar.update(record.done + record.failed - bar.n)
                if record.state.finished:
                    return record
                pause = self.client.settings.wait_poll_s
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise JobTimeoutError(
                            f"job {self.id} not finished after {timeout}s ({record.done}/"
                            f"{record.total} done); it keeps running: wait again or re-attach "
                            f"with client.job({self.id!r})"
                        )
                    pause = min(pause, left)
                pubsub.get_message(timeout=pause)
                record = self.status()
        finally:
            bar.close()
            pubsub.close()

    def result(self) -> Matrix:
        """Vectors in input order, fetched from the cache by digest; never via Celery results."""
        record = self.status()
        if record.state is JobState.FAILED:
            raise JobFailedError(f"job {self.id} failed: {record.error}")
        if record.state is not JobState.DONE:
            raise EmbedFleetError(
                f"job {self.id} is still running ({record.done}/{record.total}): call wait() first"
            )
        blob = self.client.redis.get(keys.job_digests_key(self.id)) or b""
        digests = unpack_digests(blob if isinstance(blob, bytes) else blob.encode())
        if not digests:
            return np.zeros((0, record.dims), dtype=np.float32)
        blobs = self.client.cache.fetch(record.fingerprint, digests)
        lost = sum(value is None for value in blobs)
        if lost:
            raise JobFailedError(
                f"{lost} of {len(digests)} vectors of job {self.id} are gone from the cache "
                "(evicted or past EMBED_CACHE_TTL_S): resubmit the texts"
            )
        return decode_vectors([value for value in blobs if value is not None], record.dims)
