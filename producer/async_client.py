"""The asyncio client: the same API as EmbeddingClient, on redis.asyncio, for asyncio web apps.

Every Redis round trip is awaited, so no request blocks the event loop. Where the broker is the
cache's Redis, chunk messages are stored with their job in one step (producer.queue_entries);
elsewhere Celery's publish (kombu is synchronous) runs on a worker thread. Decisions, records and errors
come from the modules the sync client uses (producer.submission, producer.job_rules), so the two
cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis
from redis.typing import EncodableT

from contract import keys
from contract.celery_config import make_celery
from contract.codec import Matrix, encode_vector
from contract.fleet_registry import BuildAdvert, live_builds_call, parse_live_builds
from contract.jobs import JobRecord, JobState, stall_error, unpack_digests, unpack_positions
from contract.lanes import Lane
from contract.ledger import end_job_call
from contract.lua_scripts import load_lua
from contract.redis_connection import as_bytes, async_connect, explain, mask_url
from contract.settings import FleetSettings
from contract.vector_cache import VectorCache
from producer.announcements import AsyncJobChannelWatch, AsyncWaiterChannel, AsyncWaiterWatch
from producer.coalescing import AsyncEmbedCoalescer
from producer.errors import JobLostError, JobTimeoutError, RedisUnavailableError, ResultIncompleteError
from producer.job_rules import (
    CALL_RETRY_S,
    CANCELLED_ERROR,
    OUTAGE_BACKOFF_S,
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
from producer.planning import clip_texts, plan_job, validate_texts
from producer.queue_entries import QueueEntries
from producer.submission import (
    SUBMIT_SCRIPT,
    PreparedJob,
    PublishFailed,
    WholeSmallJob,
    choose_build,
    prepare_job,
    publish_chunks,
    publish_failed,
    queue_withdraw,
    submit_call,
)


class AsyncEmbeddingClient:
    def __init__(
        self, settings: FleetSettings | None = None, on_submit: Callable[[int, int], None] | None = None
    ) -> None:
        """`on_submit(cached, total)` hears, for each job, how many of its inputs the cache already held."""
        self.settings = settings or FleetSettings()
        self.on_submit = on_submit
        self.redis = async_connect(self.settings.cache_url, self.settings, CALL_RETRY_S)
        self.cache = VectorCache(
            cast(Any, self.redis), self.settings.cache_ttl_s, self.settings.fetch_batch_size
        )
        self.celery = make_celery(self.settings, main="producer")
        self.entries = QueueEntries(self.celery) if QueueEntries.usable(self.settings) else None
        self._submit_script = self.redis.register_script(load_lua(SUBMIT_SCRIPT))
        self._end = self.redis.register_script(load_lua("end_job"))
        self._waiter = AsyncWaiterChannel(
            self.redis, self.settings.redis_socket_timeout_s, self.settings.wait_poll_s
        )
        self._builds: tuple[float, list[BuildAdvert]] = (0.0, [])
        self._embeds = AsyncEmbedCoalescer(
            self, self.settings.coalesce_max_texts, self.settings.coalesce_inflight
        )

    async def aclose(self) -> None:
        await self._embeds.aclose()
        await self._waiter.aclose()
        await self.redis.aclose()
        if self.entries is not None:
            await asyncio.to_thread(self.entries.close)
        await asyncio.to_thread(self.celery.close)

    async def __aenter__(self) -> AsyncEmbeddingClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def build(self) -> BuildAdvert:
        return choose_build(await self._live_builds(), self.settings)

    async def submit(self, texts: Sequence[str], priority: Lane | str | None = None) -> AsyncJob:
        """As EmbeddingClient.submit: returns at once with the job; a small one is queued whole."""
        return await self._submit(texts, priority, None)

    async def submit_to_wait(self, texts: Sequence[str], priority: Lane | str | None = None) -> AsyncJob:
        """As EmbeddingClient.submit_to_wait: the job's end is announced on this client's own channel."""
        return await self._submit(texts, priority, self._waiter if await self._waiter.ready() else None)

    async def _submit(
        self, texts: Sequence[str], priority: Lane | str | None, waiter: AsyncWaiterChannel | None
    ) -> AsyncJob:
        texts = validate_texts(texts, self.settings.max_job_texts)
        build = await self.build()
        plan = plan_job(clip_texts(texts, self.settings.max_text_chars), build.fingerprint)
        notify = waiter.channel if waiter is not None else ""
        if WholeSmallJob.fits(plan, self.settings):
            small = WholeSmallJob(plan, build, self.settings, priority, notify)
            job, hits, end = await self._store_whole(small, waiter)
        else:
            pipe = self.redis.pipeline(transaction=False)
            self.cache.queue_look(cast(Any, pipe), build.fingerprint, plan.unique_digests)
            hits, cut = self.cache.read_look(await pipe.execute(), len(plan.unique_digests))
            job = prepare_job(plan, build, hits, cut, self.settings, priority, notify)
            end = await self._store(job, waiter=waiter)
        if self.on_submit is not None:
            self.on_submit(sum(plan.count(i) for i, hit in enumerate(hits) if hit), job.record.total)
        final = job.record if job.record.state.finished else None  # every text was cached
        if self.entries is None:
            await self._publish(job, end)
        return AsyncJob(self, job.record.id, texts, priority, plan.digests, end=end, final=final)

    async def _store_whole(
        self, small: WholeSmallJob, waiter: AsyncWaiterChannel | None
    ) -> tuple[PreparedJob, list[bool], End | None]:
        """As EmbeddingClient._store_whole; also gives which texts were cached, and the job's end."""
        job = small.prepare()
        script_keys, args = small.call(job, await self._entries_of(job))
        end = _expect(job, waiter)
        hits, ended = small.ended(await self._run_submit(script_keys, args, job, end))
        if ended is None:
            return job, hits, end
        _forget(end, job)
        await self._store(ended, replacing=job.record.id)
        return ended, hits, None

    async def _store(
        self, job: PreparedJob, replacing: str = "", waiter: AsyncWaiterChannel | None = None
    ) -> End | None:
        script_keys, args = submit_call(job, self.settings, await self._entries_of(job))
        end = _expect(job, waiter)
        if not replacing:
            await self._run_submit(script_keys, args, job, end)
            return end
        pipe = self.redis.pipeline(transaction=True)
        queue_withdraw(cast(Any, pipe), replacing)
        pipe.eval(load_lua(SUBMIT_SCRIPT), len(script_keys), *script_keys, *args)
        await pipe.execute()
        return end

    async def _run_submit(
        self, script_keys: list[str], args: list[EncodableT], job: PreparedJob, end: End | None
    ) -> object:
        """submit_job.lua; the job's end is expected first, as its messages may be stored with it."""
        try:
            return await self._submit_script(keys=script_keys, args=args)
        except BaseException:
            _forget(end, job)
            raise

    async def _entries_of(self, job: PreparedJob) -> list[bytes]:
        """As EmbeddingClient._entries_of; the broker channel is opened (it connects) off the event loop."""
        if self.entries is None:
            return []
        if not self.entries.opened:
            await asyncio.to_thread(self.entries.channel)
        return self.entries.entries(job)

    async def job(self, job_id: str) -> AsyncJob:
        job = AsyncJob(self, job_id)
        await job.status()
        return job

    async def embed(self, texts: Sequence[str], timeout: float | None = None) -> Matrix:
        """Submit on the interactive lane, wait, return the vectors (concurrent small calls share jobs)."""
        texts = validate_texts(texts, self.settings.max_job_texts)
        if 0 < len(texts) <= self.settings.coalesce_max_texts:
            return await self._embeds.embed(texts, timeout)
        job = await self.submit_to_wait(texts, priority=Lane.INTERACTIVE)
        await job.wait(timeout=timeout)
        return await job.result()

    async def cancel(self, job_id: str) -> JobRecord:
        return await (await self.job(job_id)).cancel()

    async def record(self, job_id: str) -> JobRecord | None:
        raw = await self.redis.hgetall(keys.job_key(job_id))
        return JobRecord.from_redis(raw) if raw else None

    async def end_job(
        self, job_id: str, state: JobState, error: str, unless_progress_since: float | None = None
    ) -> int:
        script_keys, args = end_job_call(job_id, state, error, unless_progress_since)
        return int(await self._end(keys=script_keys, args=args))

    async def server_time(self) -> float:
        seconds, micros = await self.redis.time()
        return float(seconds) + micros / 1e6

    async def live_nodes(self, model: str, fingerprint: str) -> list[bytes]:
        now = await self.server_time()
        return cast(
            list[bytes], await self.redis.zrangebyscore(keys.build_nodes_key(model, fingerprint), now, "+inf")
        )

    async def _live_builds(self) -> list[BuildAdvert]:
        expires, builds = self._builds
        if builds and time.monotonic() < expires:
            return builds
        script_keys, args = live_builds_call(self.settings.model_name)
        try:
            reply = await self.redis.eval_ro(load_lua("live_builds"), len(script_keys), *script_keys, *args)
        except redis.RedisError as exc:
            where = mask_url(self.settings.cache_url)
            raise RedisUnavailableError(
                f"Redis at {where} is unreachable ({explain(exc)}): nothing was queued"
            ) from exc
        builds = parse_live_builds(self.settings.model_name, cast(list[object], reply))
        self._builds = (time.monotonic() + self.settings.heartbeat_interval_s, builds)
        return builds

    async def _publish(self, job: PreparedJob, end: End | None) -> None:
        try:
            await asyncio.to_thread(publish_chunks, self.celery, job)
        except PublishFailed as failure:
            _forget(end, job)
            pipe = self.redis.pipeline(transaction=True)
            queue_withdraw(cast(Any, pipe), job.record.id)
            with contextlib.suppress(redis.RedisError):  # what is left, the reconciler finishes
                await pipe.execute()
            raise publish_failed(self.settings, job.record, failure.sent, failure.cause) from failure.cause
        except BaseException:
            _forget(end, job)
            raise


End = tuple[AsyncWaiterChannel, asyncio.Future[JobRecord]]


def _expect(job: PreparedJob, waiter: AsyncWaiterChannel | None) -> End | None:
    """The job's end on the client's own channel, expected before anything can announce it."""
    if waiter is None or job.record.state.finished:
        return None
    return waiter, waiter.expect(job.record.id)


def _forget(end: End | None, job: PreparedJob) -> None:
    if end is not None:
        end[0].forget(job.record.id)


class AsyncJob:
    """As producer.Job, awaited."""

    def __init__(
        self,
        client: AsyncEmbeddingClient,
        job_id: str,
        texts: Sequence[str] | None = None,
        priority: Lane | str | None = None,
        digests: list[str] | None = None,
        end: End | None = None,
        final: JobRecord | None = None,
    ) -> None:
        self.client = client
        self.id = job_id
        self.texts = texts
        self.priority = priority
        self._seen = texts is not None
        self._digests_known = digests
        self._final = final
        self._end = end  # the client's own channel will announce this job's end (submit_to_wait)

    def __repr__(self) -> str:
        return f"AsyncJob({self.id!r})"

    async def status(self) -> JobRecord:
        record = await self.client.record(self.id)
        if record is None:
            raise missing_record(self.id, self._seen, self.client.settings)
        self._seen = True
        if record.state.finished:
            self._final = record
        return record

    async def wait(self, timeout: float | None = None) -> JobRecord:
        """As Job.wait: ends by `timeout`, rides out a Redis outage, ends a stalled job."""
        if self._final is not None:
            return self._final
        settings = self.client.settings
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = self._watch()
        stall = StallClock()
        try:
            await watch.open()
            record = None if watch.heard_from_start else await self._status_through_outage(deadline)
            while True:
                if record is not None:
                    if record.state.finished:
                        self._final = record
                        return record
                    stalled = stall.stalled(record, settings.stall_timeout_s)
                    if stalled and await self._end_if_unserved(record):
                        record = await self._status_through_outage(deadline)
                        continue
                pause = pause_s(deadline, self.id, record, timeout, settings.wait_poll_s)
                record = await watch.wait(pause) or await self._status_through_outage(deadline)
        finally:
            await watch.close()

    def _watch(self) -> AsyncJobChannelWatch | AsyncWaiterWatch:
        """The client's own channel for the first wait of a job submitted to wait on, else the job's."""
        end, self._end = self._end, None
        if end is not None:
            return AsyncWaiterWatch(self.id, *end)
        return AsyncJobChannelWatch(self.client.redis, self.id)

    async def result(self, missing: Missing = "raise") -> Matrix:
        """As Job.result."""
        try:
            record = self._final or await self.status()
        except JobLostError:
            if missing != "recompute" or self.texts is None:
                raise
            again = await self.resume()
            await again.wait()
            return await again.result(missing="recompute")
        failed = await self._failed_positions() if record.state is not JobState.DONE else []
        check_finished(record, missing, failed)
        blobs = await self._fetch(record)
        if missing == "recompute" and None in blobs:
            blobs = await self._recompute(blobs)
        return assemble(record, blobs, missing)

    async def cancel(self) -> JobRecord:
        await self.status()
        await self.client.end_job(self.id, JobState.CANCELLED, CANCELLED_ERROR)
        return await self.status()

    async def resume(self, texts: Sequence[str] | None = None) -> AsyncJob:
        texts = texts if texts is not None else self.texts
        if texts is None:
            raise no_texts(self.id)
        return await self.client.submit(texts, priority=self.priority)

    async def _status_through_outage(self, deadline: float | None) -> JobRecord:
        started = time.monotonic()
        while True:
            try:
                return await self.status()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                waited = time.monotonic() - started
                if waited > self.client.settings.redis_outage_s:
                    raise outage(self.id, self.client.settings, waited, exc) from exc
                if deadline is not None and time.monotonic() > deadline:
                    raise JobTimeoutError(
                        f"job {self.id}: Redis unreachable until the timeout ({exc})"
                    ) from exc
                await asyncio.sleep(OUTAGE_BACKOFF_S)

    async def _end_if_unserved(self, record: JobRecord) -> bool:
        settings = self.client.settings
        if await self.client.live_nodes(record.model, record.fingerprint):
            return False
        bound = await self.client.server_time() - settings.stall_timeout_s
        error = stall_error(record, settings.stall_timeout_s)
        return await self.client.end_job(self.id, JobState.FAILED, error, bound) != 0

    async def _fetch(self, record: JobRecord) -> list[bytes | None]:
        digests = await self._digests(record)
        wanted = still_to_read(digests, record.carried)
        read: list[bytes | None] = []
        size = self.client.settings.fetch_batch_size
        for start in range(0, len(wanted), size):
            batch = [keys.vector_key(record.fingerprint, d) for d in wanted[start : start + size]]
            read.extend(
                None if value is None else as_bytes(value) for value in await self.client.redis.mget(batch)
            )
        return in_input_order(digests, record.carried, wanted, read)

    async def _digests(self, record: JobRecord) -> list[str]:
        if self._digests_known is not None:
            return self._digests_known
        blob = await self.client.redis.get(keys.job_digests_key(self.id))
        if blob:
            return unpack_digests(as_bytes(blob))
        if self.texts is None:
            raise ResultIncompleteError(
                f"the input digests of job {self.id} are gone from Redis: resubmit the texts"
            )
        max_chars = self.client.settings.max_text_chars
        return plan_job(clip_texts(list(self.texts), max_chars), record.fingerprint).digests

    async def _recompute(self, blobs: list[bytes | None]) -> list[bytes | None]:
        absent = [position for position, blob in enumerate(blobs) if blob is None]
        if self.texts is None:
            raise no_texts(self.id, len(absent))
        again = await self.client.submit(
            [self.texts[position] for position in absent], priority=self.priority
        )
        await again.wait()
        fresh = await again.result()
        filled = list(blobs)
        for row, position in enumerate(absent):
            filled[position] = encode_vector(fresh[row])
        return filled

    async def _failed_positions(self) -> list[int]:
        blob = await self.client.redis.get(keys.job_failed_positions_key(self.id))
        return unpack_positions(as_bytes(blob)) if blob else []
