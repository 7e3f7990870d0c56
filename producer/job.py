"""A submitted job: its status, a wait that always ends, its vectors, cancel and resume."""

from __future__ import annotations

import threading
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
from producer.announcements import JobChannelWatch, WaiterChannel, Watch
from producer.errors import JobLostError, JobTimeoutError, ResultIncompleteError
from producer.job_rules import (
    CANCELLED_ERROR,
    OUTAGE_BACKOFF_S,
    RECOMPUTE_ROUNDS,
    Missing,
    StallClock,
    assemble,
    check_finished,
    in_input_order,
    missing_record,
    no_texts,
    outage,
    pause_s,
    still_to_read,
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
        waiter: WaiterChannel | None = None,
        final: JobRecord | None = None,
    ) -> None:
        self.client = client
        self.id = job_id
        self.texts = texts
        self.priority = priority
        self._seen = texts is not None
        self._digests_known = digests
        self._final = final
        # the submitting thread's own channel announces this job's end (EmbeddingClient.submit_to_wait)
        self._waiter = (waiter, threading.get_ident()) if waiter is not None else None

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
        if self._final is not None:
            return self._final  # an ended job's record no longer changes
        settings = self.client.settings
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = self._watch()
        bar = _ProgressBar(self.id, progress)
        stall = StallClock()
        try:
            record = None if watch.heard_from_start else self._status_through_outage(deadline)
            while True:
                if record is not None:
                    bar.show(record)
                    if record.state.finished:
                        self._final = record
                        return record
                    if stall.stalled(record, settings.stall_timeout_s) and self._end_if_unserved(record):
                        record = self._status_through_outage(deadline)
                        continue
                announced = watch.wait(pause_s(deadline, self.id, record, timeout, settings.wait_poll_s))
                record = announced or self._status_through_outage(deadline)
        finally:
            bar.close()
            watch.close()

    def _watch(self) -> Watch:
        """The thread's own channel for the first wait on the thread that submitted, else the job's."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and waiter[1] == threading.get_ident():
            return waiter[0].for_job(self.id)
        return JobChannelWatch(self.client, self.id)

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
        digests = self._digests(record)
        wanted = still_to_read(digests, record.carried)
        read = self.client.cache.fetch(record.fingerprint, wanted) if wanted else []
        return in_input_order(digests, record.carried, wanted, read)

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


class _ProgressBar:
    """tqdm over the job's positions, made only when asked for (a small job's wait skips its cost)."""

    def __init__(self, job_id: str, shown: bool) -> None:
        self.job_id = job_id
        self.shown = shown
        self.bar: tqdm | None = None

    def show(self, record: JobRecord) -> None:
        if not self.shown:
            return
        if self.bar is None:
            self.bar = tqdm(total=record.total, unit="text", desc=f"job {self.job_id[:8]}")
        self.bar.update(record.done + record.failed - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
