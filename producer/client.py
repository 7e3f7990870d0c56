"""What applications import: submit texts, get a job id at once, fetch vectors later."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from contract.celery_config import make_celery
from contract.codec import Matrix
from contract.fleet_registry import BuildAdvert, FleetRegistry
from contract.jobs import JobRecord
from contract.lanes import Lane
from contract.ledger import JobLedger
from contract.lua_scripts import load_lua
from contract.redis_connection import connect, explain, mask_url
from contract.settings import FleetSettings
from contract.vector_cache import VectorCache
from producer.announcements import WaiterChannel
from producer.coalescing import EmbedCoalescer
from producer.errors import RedisUnavailableError
from producer.job import Job
from producer.job_rules import CALL_RETRY_S
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

# A blip (a failover, a dropped connection) is retried this long inside one call; wait() rides out
# longer outages itself (EMBED_REDIS_OUTAGE_S), and submit() fails fast so a request never hangs.


@dataclass(frozen=True)
class ModelIdentity:
    fingerprint: str
    dims: int


class EmbeddingClient:
    def __init__(self, settings: FleetSettings | None = None) -> None:
        self.settings = settings or FleetSettings()
        self.redis = connect(self.settings.cache_url, self.settings, CALL_RETRY_S)
        self.cache = VectorCache(self.redis, self.settings.cache_ttl_s, self.settings.fetch_batch_size)
        self.ledger = JobLedger(self.redis)
        self.registry = FleetRegistry(self.redis, self.settings.heartbeat_ttl_s)
        self.celery = make_celery(self.settings, main="producer")
        self.entries = QueueEntries(self.celery) if QueueEntries.usable(self.settings) else None
        self._submit_script = self.redis.register_script(load_lua(SUBMIT_SCRIPT))
        self._builds: tuple[float, list[BuildAdvert]] = (0.0, [])
        self._threads = threading.local()
        self._lock = threading.Lock()
        self._embeds: EmbedCoalescer | None = None

    def close(self) -> None:
        if self._embeds is not None:
            self._embeds.close()
        self.drop_thread_pubsub()
        waiter = getattr(self._threads, "waiter", None)
        if waiter is not None:
            waiter.close()
        self.redis.close()
        if self.entries is not None:
            self.entries.close()
        self.celery.close()

    def thread_pubsub(self) -> redis.client.PubSub:
        """This thread's pub/sub connection, kept for its next wait."""
        pubsub: redis.client.PubSub | None = getattr(self._threads, "pubsub", None)
        if pubsub is None:
            pubsub = self._threads.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        return pubsub

    def thread_waiter(self) -> WaiterChannel:
        """This thread's own announcement channel (producer.announcements), kept for its next job."""
        waiter: WaiterChannel | None = getattr(self._threads, "waiter", None)
        if waiter is None:
            waiter = self._threads.waiter = WaiterChannel(self.redis, self.settings.redis_socket_timeout_s)
        return waiter

    def drop_thread_pubsub(self) -> None:
        pubsub = getattr(self._threads, "pubsub", None)
        self._threads.pubsub = None
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                pubsub.close()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def build(self) -> BuildAdvert:
        """A live build of the model to submit to; see producer.submission.choose_build."""
        return choose_build(self._live_builds(self.settings.model_name), self.settings)

    def model(self) -> ModelIdentity:
        build = self.build()
        return ModelIdentity(build.fingerprint, build.dims)

    def submit(self, texts: Sequence[str], priority: Lane | str | None = None) -> Job:
        """Queue the cache misses, each distinct text once; returns at once with the job.

        A small job (at most EMBED_INTERACTIVE_MAX_TEXTS distinct texts) is queued whole, in the
        cache look's round trip: the worker counts its cached texts without embedding them again.

        Jobs with at most EMBED_INTERACTIVE_MAX_TEXTS texts to embed ride the interactive lane,
        larger ones the bulk lane; `priority="interactive"|"bulk"` chooses explicitly.
        """
        return self._submit(texts, priority, None)

    def submit_to_wait(self, texts: Sequence[str], priority: Lane | str | None = None) -> Job:
        """As `submit`, for a `wait()` on this same thread: the job's end is announced on the thread's
        own channel, so the wait costs no subscribe and no status read (producer.announcements)."""
        waiter = self.thread_waiter()
        return self._submit(texts, priority, waiter if waiter.ready() else None)

    def _submit(self, texts: Sequence[str], priority: Lane | str | None, waiter: WaiterChannel | None) -> Job:
        texts = validate_texts(texts, self.settings.max_job_texts)
        build = self.build()
        plan = plan_job(clip_texts(texts, self.settings.max_text_chars), build.fingerprint)
        notify = waiter.channel if waiter is not None else ""
        if WholeSmallJob.fits(plan, self.settings):
            job = self._store_whole(WholeSmallJob(plan, build, self.settings, priority, notify))
        else:
            hits, cut = self.cache.look(build.fingerprint, plan.unique_digests)
            job = prepare_job(plan, build, hits, cut, self.settings, priority, notify)
            self._store(job)
        if self.entries is None:
            self._publish(job)
        final = job.record if job.record.state.finished else None  # every text was cached
        return Job(self, job.record.id, texts, priority, plan.digests, waiter=waiter, final=final)

    def _store_whole(self, small: WholeSmallJob) -> PreparedJob:
        job = small.prepare()
        script_keys, args = small.call(job, self._entries_of(job))
        _, ended = small.ended(self._submit_script(keys=script_keys, args=args))
        if ended is None:
            return job
        self._store(ended, replacing=job.record.id)
        return ended

    def _store(self, job: PreparedJob, replacing: str = "") -> None:
        script_keys, args = submit_call(job, self.settings, self._entries_of(job))
        if not replacing:
            self._submit_script(keys=script_keys, args=args)
            return
        pipe = self.redis.pipeline(transaction=True)
        queue_withdraw(pipe, replacing)
        pipe.eval(load_lua(SUBMIT_SCRIPT), len(script_keys), *script_keys, *args)
        pipe.execute()

    def _entries_of(self, job: PreparedJob) -> list[bytes]:
        """Where the broker is this Redis, the chunks' messages are stored with the job."""
        return self.entries.entries(job) if self.entries is not None else []

    def job(self, job_id: str) -> Job:
        job = Job(self, job_id)
        job.status()  # fail now on an unknown id
        return job

    def embed(self, texts: Sequence[str], timeout: float | None = None) -> Matrix:
        """Submit on the interactive lane, wait, return the vectors: for requests that wait on them.

        Concurrent calls on one client share jobs while earlier ones are in flight (producer.coalescing).
        """
        texts = validate_texts(texts, self.settings.max_job_texts)
        if 0 < len(texts) <= self.settings.coalesce_max_texts:
            return self._coalescer().embed(texts, timeout)
        job = self.submit_to_wait(texts, priority=Lane.INTERACTIVE)
        job.wait(timeout=timeout)
        return job.result()

    def _coalescer(self) -> EmbedCoalescer:
        with self._lock:
            if self._embeds is None:
                self._embeds = EmbedCoalescer(
                    self, self.settings.coalesce_max_texts, self.settings.coalesce_inflight
                )
            return self._embeds

    def cancel(self, job_id: str) -> JobRecord:
        return self.job(job_id).cancel()

    def _live_builds(self, name: str) -> list[BuildAdvert]:
        """The registry's answer, reused for one heartbeat interval while it names a live build."""
        expires, builds = self._builds
        if builds and time.monotonic() < expires:
            return builds
        try:
            builds = self.registry.live_builds(name)
        except redis.RedisError as exc:
            where = mask_url(self.settings.cache_url)
            raise RedisUnavailableError(
                f"Redis at {where} is unreachable ({explain(exc)}): nothing was queued"
            ) from exc
        self._builds = (time.monotonic() + self.settings.heartbeat_interval_s, builds)
        return builds

    def _publish(self, job: PreparedJob) -> None:
        """Send one message per chunk; a publish that fails withdraws the job, so none is left orphaned."""
        try:
            publish_chunks(self.celery, job)
        except PublishFailed as failure:
            self._withdraw(job.record.id)
            raise publish_failed(self.settings, job.record, failure.sent, failure.cause) from failure.cause

    def _withdraw(self, job_id: str) -> None:
        with contextlib.suppress(redis.RedisError):
            pipe = self.redis.pipeline(transaction=True)
            queue_withdraw(pipe, job_id)
            pipe.execute()
