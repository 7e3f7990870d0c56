"""A submitted job: its status, a wait that always ends, its vectors, cancel and resume."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import redis
from tqdm import tqdm

from contract import keys
from contract.codec import Matrix
from contract.jobs import JobRecord, JobState, stall_error, unpack_digests, unpack_positions
from contract.lanes import Lane
from contract.redis_connection import as_bytes
from producer.errors import JobLostError, JobTimeoutError, ResultIncompleteError
from producer.job_rules import (
    CANCELLED_ERROR,
    OUTAGE_BACKOFF_S,
    RECOMPUTE_ROUNDS,
    Missing,
    StallClock,
    assemble,
    check_finished,
    missing_record,
    no_texts,
    outage,
    pause_s,
)
from producer.planning import clip_texts, plan_job

if TYPE_CHECKING:
    from producer.client import EmbeddingClient


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
            raise missing_record(self.id, self._seen, self.client.settings)
        self._seen = True
        if record.state.finished:
            self._final = record  # an ended job's record no longer changes
        return record

    def wait(self, timeout: float | None = None, progress: bool = False) -> JobRecord:
        """Block until the job ends or `timeout` passes (checked between Redis calls: one call that
        hangs on a dead connection can add up to EMBED_REDIS_SOCKET_TIMEOUT_S per retry).

        Rides out a Redis outage of EMBED_REDIS_OUTAGE_S; a job whose build has no live worker
        and that makes no progress for EMBED_STALL_TIMEOUT_S is ended failed, saying so.
        """
        settings = self.client.settings
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = _ProgressWatch(self.client, keys.job_channel(self.id))
        watch.open()  # before the first status read, so no announcement falls between the two
        bar: tqdm | None = None
        stall = StallClock()
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
                if stall.stalled(record, settings.stall_timeout_s) and self._end_if_unserved(record):
                    continue
                watch.wait(pause_s(deadline, record, timeout, settings.wait_poll_s))
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
        blobs = self._fetch(record, missing)
        if missing == "recompute" and None in blobs:
            blobs = self._recompute(blobs)
        return assemble(record, blobs, missing)

    def cancel(self) -> JobRecord:
        """End the job now; queued chunks are skipped, vectors already computed stay cached."""
        self.status()
        self.client.ledger.end_job(self.id, JobState.CANCELLED, CANCELLED_ERROR)
        return self.status()

    def resume(self, texts: Sequence[str] | None = None) -> Job:
        """Submit the same texts again (after JobLostError, a failure or a cancel); cached rows are reused."""
        texts = texts if texts is not None else self.texts
        if texts is None:
            raise no_texts(self.id)
        return self.client.submit(texts, priority=self.priority)

    def _status_through_outage(self, deadline: float | None) -> JobRecord:
        started = time.monotonic()
        while True:
            try:
                return self.status()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                waited = time.monotonic() - started
                if waited > self.client.settings.redis_outage_s:
                    raise outage(self.id, self.client.settings, waited, exc) from exc
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
        bound = client.ledger.server_time() - settings.stall_timeout_s
        error = stall_error(record, settings.stall_timeout_s)
        return client.ledger.end_job(self.id, JobState.FAILED, error, bound) != 0

    def _digests(self, record: JobRecord) -> list[str]:
        if self._digests_known is not None:
            return self._digests_known
        blob = self.client.redis.get(keys.job_digests_key(self.id))
        if blob:
            return unpack_digests(as_bytes(blob))
        if self.texts is None:
            raise ResultIncompleteError(
                f"the input digests of job {self.id} are gone from Redis: resubmit the texts"
            )
        return plan_job(
            clip_texts(list(self.texts), self.client.settings.max_text_chars), record.fingerprint
        ).digests

    def _fetch(self, record: JobRecord, missing: Missing) -> list[bytes | None]:
        check_finished(record, missing, self._failed_positions() if record.state is not JobState.DONE else [])
        return self.client.cache.fetch(record.fingerprint, self._digests(record))

    def _recompute(self, blobs: list[bytes | None]) -> list[bytes | None]:
        """Embed the evicted rows again, in rounds: a full LRU cache may evict some fresh vectors too."""
        filled = list(blobs)
        for _ in range(RECOMPUTE_ROUNDS):
            absent = [position for position, blob in enumerate(filled) if blob is None]
            if not absent:
                break
            if self.texts is None:
                raise no_texts(self.id, len(absent))
            again = self.client.submit([self.texts[position] for position in absent], priority=self.priority)
            again.wait()
            for position, blob in zip(absent, again._fetch(again.status(), "raise"), strict=True):
                filled[position] = blob
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
