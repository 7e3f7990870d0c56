"""A submitted job: its status, a wait that always ends, its vectors, cancel and resume."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import redis
from tqdm import tqdm

from contract import keys
from contract.codec import Matrix, decode_vectors, encode_vector
from contract.jobs import JobRecord, JobState, describe_positions, unpack_digests, unpack_positions
from contract.lanes import Lane
from contract.redis_connection import as_bytes, mask_url
from producer.errors import (
    EmbedFleetError,
    FleetUnavailableError,
    JobFailedError,
    JobLostError,
    JobNotFoundError,
    JobTimeoutError,
    ResultIncompleteError,
)
from producer.planning import plan_job

if TYPE_CHECKING:
    from producer.client import EmbeddingClient

Missing = Literal["raise", "mask", "recompute"]
OUTAGE_BACKOFF_S = 0.5
CANCELLED_ERROR = "cancelled by its caller"


class Job:
    """A job by id. The Job that `submit` returns also keeps the texts, so it can resume or recompute."""

    def __init__(
        self,
        client: EmbeddingClient,
        job_id: str,
        texts: Sequence[str] | None = None,
        priority: Lane | str | None = None,
        digests: list[str] | None = None,
    ) -> None:
        self.client = client
        self.id = job_id
        self.texts = texts
        self.priority = priority
        self._seen = texts is not None
        self._digests_known = digests
        self._final: JobRecord | None = None

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self) -> JobRecord:
        record = self.client.ledger.record(self.id)
        if record is None:
            raise self._missing()
        self._seen = True
        if record.state.finished:
            self._final = record  # an ended job's record no longer changes
        return record

    def wait(self, timeout: float | None = None, progress: bool = False) -> JobRecord:
        """Block until the job ends or `timeout` passes; never longer, whatever fails meanwhile.

        Rides out a Redis outage of EMBED_REDIS_OUTAGE_S; a job whose build has no live worker
        and that makes no progress for EMBED_STALL_TIMEOUT_S is ended failed, saying so.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = _ProgressWatch(self.client, keys.job_channel(self.id))
        watch.open()  # before the first status read, so no announcement falls between the two
        bar: tqdm | None = None
        stall = _StallClock()
        try:
            while True:
                record = self._status_through_outage(deadline)
                if bar is None:
                    bar = tqdm(
                        total=record.total, unit="text", desc=f"job {self.id[:8]}", disable=not progress
                    )
                bar.update(record.done + record.failed - bar.n)
                if record.state.finished:
                    return record
                if stall.stalled(record, self.client.settings.stall_timeout_s) and self._end_if_unserved(
                    record
                ):
                    continue
                watch.wait(self._pause(deadline, record, timeout))
        finally:
            if bar is not None:
                bar.close()
            watch.close()

    def result(self, missing: Missing = "raise") -> Matrix:
        """Vectors in input order, exactly `total` rows, fetched from the cache by digest.

        Rows without a vector (the inputs of failed chunks, or vectors evicted from the cache):
        `missing="raise"` raises naming their positions, `"mask"` returns a numpy masked array
        with those rows masked, `"recompute"` embeds evicted rows again (needs the texts: the Job
        that `submit` returned has them).
        """
        try:
            record = self._final or self.status()
        except JobLostError:
            if missing != "recompute" or self.texts is None:
                raise
            again = self.resume()  # the record itself was evicted: embed the texts again
            again.wait()
            return again.result(missing="recompute")
        if record.state is JobState.QUEUED:
            raise EmbedFleetError(
                f"job {self.id} is still running ({record.done}/{record.total}): call wait() first"
            )
        if record.state is not JobState.DONE and missing != "mask":
            raise JobFailedError(
                f"job {self.id} {record.state.value}: {record.error}", self._failed_positions()
            )
        digests = self._digests(record)
        blobs = self.client.cache.fetch(record.fingerprint, digests)
        absent = [position for position, blob in enumerate(blobs) if blob is None]
        if absent and missing == "recompute":
            blobs = self._recompute(blobs, absent)
            absent = []
        if absent and missing == "raise":
            raise ResultIncompleteError(
                f"{len(absent)} of {record.total} vectors of job {self.id} are gone from the cache "
                f"(evicted or past EMBED_CACHE_TTL_S), inputs {describe_positions(absent)}: call "
                "result(missing='recompute') on the Job that submit() returned, or resubmit the texts",
                absent,
            )
        rows = [blob if blob is not None else bytes(4 * record.dims) for blob in blobs]
        vectors = decode_vectors(rows, record.dims)
        if vectors.shape[0] != record.total:
            raise EmbedFleetError(f"job {self.id}: {vectors.shape[0]} rows for {record.total} inputs")
        if missing == "mask":
            mask = np.zeros(vectors.shape, dtype=bool)
            mask[absent] = True
            return np.ma.MaskedArray(vectors, mask=mask)
        return vectors

    def cancel(self) -> JobRecord:
        """End the job now; queued chunks are skipped, vectors already computed stay cached."""
        self.status()
        self.client.ledger.end_job(self.id, JobState.CANCELLED, CANCELLED_ERROR)
        return self.status()

    def resume(self, texts: Sequence[str] | None = None) -> Job:
        """Submit the same texts again (after JobLostError, a failure or a cancel); cached rows are reused."""
        texts = texts if texts is not None else self.texts
        if texts is None:
            raise EmbedFleetError(
                f"job {self.id} was re-attached by id, so this Job holds no texts: call job.resume(texts)"
            )
        return self.client.submit(texts, priority=self.priority)

    def _missing(self) -> EmbedFleetError:
        url = mask_url(self.client.settings.cache_url)
        if self._seen:
            return JobLostError(
                f"job {self.id} vanished from {url} (Redis restarted without persistence, was flushed, or "
                "evicted it): call job.resume() to submit the same texts again"
            )
        return JobNotFoundError(
            f"no job {self.id} on {url}: check the id and EMBED_CACHE_URL (jobs expire after "
            f"EMBED_JOB_TTL_S={self.client.settings.job_ttl_s})"
        )

    def _status_through_outage(self, deadline: float | None) -> JobRecord:
        started = time.monotonic()
        while True:
            try:
                return self.status()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                waited = time.monotonic() - started
                if waited > self.client.settings.redis_outage_s:
                    raise FleetUnavailableError(
                        f"Redis at {mask_url(self.client.settings.cache_url)} unreachable for {waited:.0f} s "
                        f"({exc}); job {self.id} may still finish: re-attach with client.job({self.id!r})"
                    ) from exc
                if deadline is not None and time.monotonic() > deadline:
                    raise JobTimeoutError(
                        f"job {self.id}: Redis unreachable until the timeout ({exc})"
                    ) from exc
                time.sleep(OUTAGE_BACKOFF_S)

    def _end_if_unserved(self, record: JobRecord) -> bool:
        """End a stalled job whose build nobody serves; True when it ended (or had ended)."""
        client, settings = self.client, self.client.settings
        if client.registry.live_nodes(record.model, record.fingerprint):
            return False
        error = (
            f"no live worker served build {record.fingerprint} of {record.model} for "
            f"{settings.stall_timeout_s:.0f} s: start workers, then job.resume()"
        )
        bound = client.ledger.server_time() - settings.stall_timeout_s
        return client.ledger.end_job(self.id, JobState.FAILED, error, bound) != 0

    def _pause(self, deadline: float | None, record: JobRecord, timeout: float | None) -> float:
        pause = self.client.settings.wait_poll_s
        if deadline is None:
            return pause
        left = deadline - time.monotonic()
        if left <= 0:
            raise JobTimeoutError(
                f"job {self.id} not finished after {timeout}s ({record.done}/{record.total} done); it keeps "
                f"running: wait again or re-attach with client.job({self.id!r})"
            )
        return min(pause, left)

    def _digests(self, record: JobRecord) -> list[str]:
        if self._digests_known is not None and record.fingerprint:
            return self._digests_known
        blob = self.client.redis.get(keys.job_digests_key(self.id))
        if blob:
            digests = unpack_digests(as_bytes(blob))
        elif self.texts is not None:
            digests = plan_job(self.texts, record.fingerprint).digests
        else:
            raise ResultIncompleteError(
                f"the input digests of job {self.id} are gone from Redis (evicted): resubmit the texts"
            )
        if len(digests) != record.total:
            raise EmbedFleetError(f"job {self.id} has {len(digests)} digests for {record.total} inputs")
        return digests

    def _recompute(self, blobs: list[bytes | None], absent: list[int]) -> list[bytes | None]:
        if self.texts is None:
            raise ResultIncompleteError(
                f"{len(absent)} vectors of job {self.id} were evicted and this Job holds no texts to "
                "recompute them: resubmit the texts",
                absent,
            )
        again = self.client.submit([self.texts[position] for position in absent], priority=self.priority)
        again.wait()
        fresh = again.result()
        filled = list(blobs)
        for row, position in enumerate(absent):
            filled[position] = encode_vector(fresh[row])
        return filled

    def _failed_positions(self) -> list[int]:
        blob = self.client.redis.get(keys.job_failed_positions_key(self.id))
        return unpack_positions(as_bytes(blob)) if blob else []


class _ProgressWatch:
    """The job's pub/sub channel, on the calling thread's pub/sub connection (kept between waits:
    a new connection per wait costs more than the rest of a small job's round trip). A broken
    connection is dropped and a new one subscribes on the next wait."""

    def __init__(self, client: EmbeddingClient, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.pubsub: redis.client.PubSub | None = None

    def open(self) -> None:
        try:
            self.pubsub = self.client.thread_pubsub()
            self.pubsub.subscribe(self.channel)
        except (redis.ConnectionError, redis.TimeoutError):
            self._drop()

    def wait(self, timeout: float) -> None:
        """Until an announcement or `timeout`; after a lost connection, re-subscribe and return at once."""
        if self.pubsub is None:
            time.sleep(min(timeout, OUTAGE_BACKOFF_S))
            self.open()
            return
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                # Subscribe and unsubscribe confirmations come back as None: keep waiting past them.
                if self.pubsub.get_message(timeout=left) is not None:
                    return
        except (redis.ConnectionError, redis.TimeoutError):
            self._drop()

    def close(self) -> None:
        if self.pubsub is not None:
            try:
                self.pubsub.unsubscribe(self.channel)
            except redis.RedisError:
                self._drop()
            self.pubsub = None

    def _drop(self) -> None:
        self.client.drop_thread_pubsub()
        self.pubsub = None


class _StallClock:
    """When the job's progress last changed, on this host's monotonic clock."""

    def __init__(self) -> None:
        self.mark: tuple[int, float] | None = None
        self.since = time.monotonic()

    def stalled(self, record: JobRecord, stall_timeout_s: float) -> bool:
        """True once per stall period without progress; the clock restarts each time it says so."""
        mark = (record.counted, record.updated)
        now = time.monotonic()
        if mark != self.mark:
            self.mark, self.since = mark, now
            return False
        if now - self.since < stall_timeout_s:
            return False
        self.since = now
        return True
