"""What applications import: submit texts, get a job id at once, fetch vectors later."""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from contract import keys
from contract.celery_config import EMBED_TASK, make_celery
from contract.codec import Matrix
from contract.fleet_registry import BuildAdvert, FleetRegistry
from contract.jobs import ChunkRef, JobRecord, JobState, pack_digests
from contract.lanes import Lane, lane_for, queue_name
from contract.ledger import JobLedger
from contract.redis_connection import connect, explain, mask_url
from contract.settings import FleetSettings
from contract.vector_cache import VectorCache
from producer.coalescing import EmbedCoalescer
from producer.errors import FleetUnavailableError, RedisUnavailableError
from producer.job import Job
from producer.planning import JobPlan, chunk_payloads, clip_texts, plan_job, validate_texts

# A blip (a failover, a dropped connection) is retried this long inside one call; wait() rides out
# longer outages itself (EMBED_REDIS_OUTAGE_S), and submit() fails fast so a request never hangs.
CALL_RETRY_S = 1.0


@dataclass(frozen=True)
class ModelIdentity:
    fingerprint: str
    dims: int


def pick_build(live: list[BuildAdvert]) -> BuildAdvert:
    """Among the builds of the newest artifact (the last to come up), one weighted by its processes."""
    first_seen: dict[str, float] = {}
    for build in live:
        first_seen[build.artifact] = min(first_seen.get(build.artifact, build.since), build.since)
    newest = max(first_seen, key=lambda artifact: first_seen[artifact])
    candidates = [build for build in live if build.artifact == newest]
    return random.choices(candidates, weights=[max(1, build.processes) for build in candidates])[0]


class EmbeddingClient:
    def __init__(self, settings: FleetSettings | None = None) -> None:
        self.settings = settings or FleetSettings()
        self.redis = connect(self.settings.cache_url, self.settings, CALL_RETRY_S)
        self.cache = VectorCache(self.redis, self.settings.cache_ttl_s, self.settings.fetch_batch_size)
        self.ledger = JobLedger(self.redis)
        self.registry = FleetRegistry(self.redis, self.settings.heartbeat_ttl_s)
        self.celery = make_celery(self.settings, main="producer")
        self._builds: tuple[float, list[BuildAdvert]] = (0.0, [])
        self._threads = threading.local()
        self._lock = threading.Lock()
        self._embeds: EmbedCoalescer | None = None

    def close(self) -> None:
        if self._embeds is not None:
            self._embeds.close()
        self.drop_thread_pubsub()
        self.redis.close()
        self.celery.close()

    def thread_pubsub(self) -> redis.client.PubSub:
        """This thread's pub/sub connection, kept for its next wait."""
        pubsub: redis.client.PubSub | None = getattr(self._threads, "pubsub", None)
        if pubsub is None:
            pubsub = self._threads.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        return pubsub

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
        """A live build of the model to submit to (EMBED_MODEL_FINGERPRINT pins one).

        During a rolling upgrade new jobs go to the newest artifact, while jobs already queued
        finish on the build they were submitted for. Where one artifact runs on two kinds of
        host (VNNI and AVX2: two builds), each job goes to one of them at random, weighted by its
        live processes.
        """
        name = self.settings.model_name
        live = self._live_builds(name)
        pinned = self.settings.model_fingerprint
        if pinned:
            live = [build for build in live if build.fingerprint == pinned]
        if not live:
            which = f"build {pinned} of {name!r}" if pinned else f"model {name!r}"
            raise FleetUnavailableError(
                f"no live worker serves {which} on {mask_url(self.settings.cache_url)}: start one with "
                "`celery -A worker worker` (workers advertise while they consume)"
            )
        return pick_build(live)

    def model(self) -> ModelIdentity:
        build = self.build()
        return ModelIdentity(build.fingerprint, build.dims)

    def submit(self, texts: Sequence[str], priority: Lane | str | None = None) -> Job:
        """Queue only the cache misses, each distinct text once; returns at once with the job.

        Jobs with at most EMBED_INTERACTIVE_MAX_TEXTS texts to embed ride the interactive lane,
        larger ones the bulk lane; `priority="interactive"|"bulk"` chooses explicitly.
        """
        texts = validate_texts(texts, self.settings.max_job_texts)
        build = self.build()
        plan = plan_job(clip_texts(texts, self.settings.max_text_chars), build.fingerprint)
        hits, cut = self.cache.look(build.fingerprint, plan.unique_digests)
        # Chunks of similar length pad little in the worker's batches; order is kept by the digests.
        misses = sorted((i for i, hit in enumerate(hits) if not hit), key=lambda i: len(plan.unique_texts[i]))
        lane = lane_for(
            len(misses), self.settings.interactive_max_texts, Lane(priority) if priority else None
        )
        payloads = chunk_payloads(plan, misses, self.settings.chunk_size, self.settings.max_payload_bytes)
        now = time.time()
        record = JobRecord(
            id=uuid.uuid4().hex,
            total=len(texts),
            fingerprint=build.fingerprint,
            dims=build.dims,
            model=build.model,
            lane=lane,
            chunks=len(payloads),
            done=sum(plan.count(i) for i, hit in enumerate(hits) if hit),
            truncated=sum(
                plan.count(i) for i, (hit, flag) in enumerate(zip(hits, cut, strict=True)) if hit and flag
            ),
            created=now,
            updated=now,
        )
        if not payloads:
            record.state, record.finished = JobState.DONE, now
        self._store(record, plan, dict(enumerate(payloads)))
        self._publish(record)
        return Job(self, record.id, texts=texts, priority=priority, digests=plan.digests)

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
        job = self.submit(texts, priority=Lane.INTERACTIVE)
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

    def _store(self, record: JobRecord, plan: JobPlan, payloads: dict[int, str]) -> None:
        """Write the whole job at once, before any chunk is published."""
        ttl = self.settings.job_ttl_s
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.job_key(record.id), mapping=record.to_redis())
        pipe.expire(keys.job_key(record.id), ttl)
        pipe.set(keys.job_digests_key(record.id), pack_digests(plan.digests), ex=ttl)
        if payloads:
            pipe.hset(keys.job_payloads_key(record.id), mapping=payloads)  # type: ignore[arg-type]
            pipe.expire(keys.job_payloads_key(record.id), ttl)
            pipe.zadd(keys.running_jobs_key(), {record.id: record.created})
        pipe.execute()

    def _publish(self, record: JobRecord) -> None:
        """Send one message per chunk; a publish that fails withdraws the job, so none is left orphaned."""
        if not record.chunks:
            return
        queue = queue_name(record.model, record.fingerprint, record.lane)
        sent = 0
        try:
            for chunk in range(record.chunks):
                ref = ChunkRef(record.id, chunk)
                self.celery.send_task(EMBED_TASK, kwargs=ref.to_kwargs(), queue=queue, **ref.send_options())
                sent += 1
        except Exception as exc:
            self._withdraw(record.id)
            raise FleetUnavailableError(
                f"the broker at {mask_url(self.settings.broker_url)} failed after {sent} of {record.chunks} "
                f"chunks were queued ({type(exc).__name__}: {exc}); the job was withdrawn: submit it again"
            ) from exc

    def _withdraw(self, job_id: str) -> None:
        """Best effort: a record left behind is finished by the reconciler, which sends its chunks."""
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(*keys.job_keys(job_id))
            pipe.zrem(keys.running_jobs_key(), job_id)
            pipe.execute()
        except redis.RedisError:
            pass
