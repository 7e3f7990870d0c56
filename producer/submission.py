"""What a submit decides and writes, the same for the sync and the asyncio client.

Which build takes the job, its record and chunk payloads, the call that stores it in one step
(submit_job.lua's KEYS and ARGV) and the commands that withdraw it (queued on the caller's
pipeline): the two clients differ only in how they wait for Redis.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from celery import Celery
from redis.client import Pipeline
from redis.typing import EncodableT

from contract import keys
from contract.celery_config import send_chunk
from contract.fleet_registry import BuildAdvert
from contract.jobs import ChunkRef, JobRecord, JobState, pack_digests
from contract.lanes import Lane, lane_for, queue_name
from contract.redis_connection import as_bytes, mask_url
from contract.settings import FleetSettings
from producer.errors import FleetUnavailableError
from producer.planning import JobPlan, chunk_payloads


@dataclass
class PreparedJob:
    record: JobRecord
    plan: JobPlan
    payloads: list[str]
    sizes: list[int]  # texts per chunk, for the messages' size header

    def refs(self) -> list[ChunkRef]:
        return [ChunkRef(self.record.id, chunk, texts) for chunk, texts in enumerate(self.sizes)]


def pick_build(live: list[BuildAdvert]) -> BuildAdvert:
    """Among the builds of the newest artifact (the last to come up), one weighted by its processes."""
    first_seen: dict[str, float] = {}
    for build in live:
        first_seen[build.artifact] = min(first_seen.get(build.artifact, build.since), build.since)
    newest = max(first_seen, key=lambda artifact: first_seen[artifact])
    candidates = [build for build in live if build.artifact == newest]
    return random.choices(candidates, weights=[max(1, build.processes) for build in candidates])[0]


def choose_build(live: list[BuildAdvert], settings: FleetSettings) -> BuildAdvert:
    """A live build to submit to (EMBED_MODEL_FINGERPRINT pins one), or FleetUnavailableError.

    During a rolling upgrade new jobs go to the newest artifact, while jobs already queued finish
    on the build they were submitted for. Where one artifact runs on two kinds of host (VNNI and
    AVX2: two builds), each job goes to one of them at random, weighted by its live processes.
    """
    pinned = settings.model_fingerprint
    if pinned:
        live = [build for build in live if build.fingerprint == pinned]
    if not live:
        which = f"build {pinned} of {settings.model_name!r}" if pinned else f"model {settings.model_name!r}"
        raise FleetUnavailableError(
            f"no live worker serves {which} on {mask_url(settings.cache_url)}: start one with "
            "`celery -A worker worker` (workers advertise while they consume)"
        )
    return pick_build(live)


def prepare_job(
    plan: JobPlan,
    build: BuildAdvert,
    hits: list[bool],
    cut: list[bool],
    settings: FleetSettings,
    priority: Lane | str | None,
    notify: str = "",
) -> PreparedJob:
    """The record and payloads of a job: only cache misses, each distinct text once, by length.

    `notify`: a waiting thread's own channel, where the job's end is announced too.
    """
    # Chunks of similar length pad little in the worker's batches; order is kept by the digests.
    # Longest first, and the last chunks halving down to one engine run (EMBED_MAX_BATCH_SIZE texts):
    # a job's last chunks are its quickest, so its processes finish close together.
    misses = sorted(
        (i for i, hit in enumerate(hits) if not hit), key=lambda i: len(plan.unique_texts[i]), reverse=True
    )
    lane = lane_for(len(misses), settings.interactive_max_texts, Lane(priority) if priority else None)
    chunks = chunk_payloads(
        plan, misses, settings.chunk_size, settings.max_batch_size, settings.max_payload_bytes
    )
    payloads, sizes = [payload for payload, _ in chunks], [texts for _, texts in chunks]
    now = time.time()
    record = JobRecord(
        id=uuid.uuid4().hex,
        total=len(plan.digests),
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
        notify=notify,
    )
    if not payloads:
        record.state, record.finished = JobState.DONE, now
    return PreparedJob(record, plan, payloads, sizes)


SUBMIT_SCRIPT = "submit_job"


def submit_call(
    job: PreparedJob, settings: FleetSettings, entries: Sequence[bytes] = (), look: Sequence[str] = ()
) -> tuple[list[str], list[EncodableT]]:
    """KEYS and ARGV of submit_job.lua: the whole job in one step, with its chunks' queue entries
    (where the broker is this Redis) and, for a small job stored whole, a look at its `look` digests."""
    record = job.record
    fingerprint = record.fingerprint
    fields = [item for pair in record.to_redis().items() for item in pair]
    script_keys = [
        keys.job_key(record.id),
        keys.job_digests_key(record.id),
        keys.job_payloads_key(record.id),
        keys.running_jobs_key(),
        queue_name(record.model, fingerprint, record.lane),
        keys.truncated_set_key(fingerprint),
        *(keys.vector_key(fingerprint, digest) for digest in look),
    ]
    args: list[EncodableT] = [
        settings.job_ttl_s,
        settings.cache_ttl_s,
        record.id,
        record.created,
        pack_digests(job.plan.digests),
        len(fields) // 2,
        *fields,
        len(job.payloads),
        *job.payloads,
        len(entries),
        *entries,
        *look,
    ]
    return script_keys, args


def read_submit_reply(reply: object) -> tuple[list[bool], list[bool]]:
    """(cached, cut) per looked-up digest, from submit_job.lua's reply."""
    flags, cut = cast(list[object], reply)
    return [flag == ord("1") for flag in as_bytes(flags)], [bool(flag) for flag in cast(list[object], cut)]


@dataclass
class WholeSmallJob:
    """A small job stored whole, as if no text were cached, in the same step that looks its texts up:
    for small requests new texts are the rule, and the worker counts cached texts without embedding
    them again. Where every text turns out cached, the job is stored again, ended, under a new id."""

    plan: JobPlan
    build: BuildAdvert
    settings: FleetSettings
    priority: Lane | str | None
    notify: str

    @staticmethod
    def fits(plan: JobPlan, settings: FleetSettings) -> bool:
        return 0 < len(plan.unique_digests) <= settings.interactive_max_texts

    def prepare(self) -> PreparedJob:
        """The job as stored: every text to embed."""
        misses = [False] * len(self.plan.unique_digests)
        return prepare_job(self.plan, self.build, misses, misses, self.settings, self.priority, self.notify)

    def call(self, job: PreparedJob, entries: Sequence[bytes]) -> tuple[list[str], list[EncodableT]]:
        return submit_call(job, self.settings, entries, look=self.plan.unique_digests)

    def ended(self, reply: object) -> tuple[list[bool], PreparedJob | None]:
        """Which texts were cached, and the ended job to store instead where all of them were."""
        hits, cut = read_submit_reply(reply)
        if not all(hits):
            return hits, None
        return hits, prepare_job(self.plan, self.build, hits, cut, self.settings, self.priority, self.notify)


def queue_withdraw(pipe: Pipeline, job_id: str) -> None:
    """Undo a submit whose publishing failed (best effort: the reconciler finishes what is left)."""
    pipe.delete(*keys.job_keys(job_id))
    pipe.zrem(keys.running_jobs_key(), job_id)


class PublishFailed(Exception):
    """Publishing stopped after `sent` chunks; the caller withdraws the job and says so."""

    def __init__(self, sent: int, cause: Exception) -> None:
        super().__init__(str(cause))
        self.sent = sent
        self.cause = cause


def publish_chunks(celery: Celery, job: PreparedJob) -> None:
    """One message per chunk, to its build's lane queue (blocking: kombu's publish is synchronous)."""
    record = job.record
    queue = queue_name(record.model, record.fingerprint, record.lane)
    for sent, ref in enumerate(job.refs()):
        try:
            send_chunk(celery, ref, queue)
        except Exception as exc:
            raise PublishFailed(sent, exc) from exc


def publish_failed(
    settings: FleetSettings, job: JobRecord, sent: int, exc: Exception
) -> FleetUnavailableError:
    return FleetUnavailableError(
        f"the broker at {mask_url(settings.broker_url)} failed after {sent} of {job.chunks} chunks were "
        f"queued ({type(exc).__name__}: {exc}); the job was withdrawn: submit it again"
    )
