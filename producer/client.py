"""What applications import: submit texts, get a job id at once, fetch vectors later."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from contract import keys
from contract.celery_config import EMBED_TASK, make_celery
from contract.codec import Matrix
from contract.jobs import ChunkMessage, JobRecord, JobState, pack_digests
from contract.settings import FleetSettings
from contract.vector_cache import VectorCache
from producer.errors import FleetUnavailableError
from producer.job import Job
from producer.planning import JobPlan, chunk_ranges, plan_job, validate_texts


@dataclass(frozen=True)
class ModelIdentity:
    fingerprint: str
    dims: int


class EmbeddingClient:
    def __init__(self, settings: FleetSettings | None = None) -> None:
        self.settings = settings or FleetSettings()
        self.redis = redis.Redis.from_url(
            self.settings.cache_url,
            socket_timeout=self.settings.redis_socket_timeout_s,
            socket_connect_timeout=self.settings.redis_socket_timeout_s,
            socket_keepalive=True,
            health_check_interval=self.settings.redis_health_check_interval_s,
        )
        self.cache = VectorCache(self.redis, self.settings.cache_ttl_s, self.settings.fetch_batch_size)
        self.celery = make_celery(self.settings, main="producer")

    def close(self) -> None:
        self.redis.close()
        self.celery.close()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def model(self) -> ModelIdentity:
        """The fingerprint from settings, else from what the workers advertise; no artifact needed."""
        if self.settings.model_fingerprint and self.settings.model_dims:
            return ModelIdentity(self.settings.model_fingerprint, self.settings.model_dims)
        advert = self.redis.hgetall(keys.model_advert_key(self.settings.model_name))
        if not advert:
            raise FleetUnavailableError(
                f"no worker has advertised model {self.settings.model_name!r} on "
                f"{self.settings.cache_url}: start one with `celery -A worker worker`, or set "
                "EMBED_MODEL_FINGERPRINT and EMBED_MODEL_DIMS"
            )
        fields = {_text(key): _text(value) for key, value in advert.items()}
        return ModelIdentity(fields["fingerprint"], int(fields["dims"]))

    def submit(self, texts: Sequence[str]) -> Job:
        """Queue only the cache misses, each distinct text once; returns at once with the job."""
        texts = validate_texts(texts, self.settings.max_job_texts)
        model = self.model()
        plan = plan_job(texts, model.fingerprint)
        hits = self.cache.touch(model.fingerprint, plan.unique_digests)
        # Chunks of similar length pad little in the worker's batches; order is kept by the digests.
        misses = sorted((i for i, hit in enumerate(hits) if not hit), key=lambda i: len(plan.unique_texts[i]))
        chunks = chunk_ranges(len(misses), self.settings.chunk_size)
        record = JobRecord(
            id=uuid.uuid4().hex,
            total=len(texts),
            fingerprint=model.fingerprint,
            dims=model.dims,
            chunks=len(chunks),
            done=sum(plan.counts[i] for i, hit in enumerate(hits) if hit),
            truncated=self._truncated_hits(model.fingerprint, plan, hits),
            created=time.time(),
        )
        if not chunks:
            record.state, record.finished = JobState.DONE, record.created
        self._store(record, plan)
        for span in chunks:
            members = [misses[i] for i in span]
            message = ChunkMessage(
                job_id=record.id,
                chunk=span.start // self.settings.chunk_size,
                fingerprint=model.fingerprint,
                texts=[plan.unique_texts[i] for i in members],
                digests=[plan.unique_digests[i] for i in members],
                counts=[plan.counts[i] for i in members],
            )
            self.celery.send_task(EMBED_TASK, kwargs=message.to_kwargs(), queue=self.settings.queue)
        return Job(self, record.id)

    def job(self, job_id: str) -> Job:
        job = Job(self, job_id)
        job.status()  # fail now on an unknown id
        return job

    def embed(self, texts: Sequence[str], timeout: float | None = None) -> Matrix:
        job = self.submit(texts)
        job.wait(timeout=timeout)
        return job.result()

    def _truncated_hits(self, fingerprint: str, plan: JobPlan, hits: list[bool]) -> int:
        hit_index = [i for i, hit in enumerate(hits) if hit]
        flags = self.cache.truncated(fingerprint, [plan.unique_digests[i] for i in hit_index])
        return sum(plan.counts[i] for i, flag in zip(hit_index, flags, strict=True) if flag)

    def _store(self, record: JobRecord, plan: JobPlan) -> None:
        ttl = self.settings.job_ttl_s
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.job_key(record.id), mapping=record.to_redis())
        pipe.set(keys.job_digests_key(record.id), pack_digests(plan.digests), ex=ttl)
        pipe.expire(keys.job_key(record.id), ttl)
        pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
