"""Every Redis key the fleet writes, in one place (producers and workers must agree on them)."""

from __future__ import annotations

VECTOR_PREFIX = "emb"
JOB_PREFIX = "job"
FLEET_PREFIX = "fleet"


def vector_key(fingerprint: str, digest: str) -> str:
    """One vector per (model fingerprint, text digest): content-addressed, shared by all jobs."""
    return f"{VECTOR_PREFIX}:{fingerprint}:{digest}"


def truncated_set_key(fingerprint: str) -> str:
    """Digests whose text was cut at the model's limit, so cache hits still count as truncated."""
    return f"{VECTOR_PREFIX}:{fingerprint}:truncated"


def job_key(job_id: str) -> str:
    """Hash: the job record (see contract.jobs.JobRecord)."""
    return f"{JOB_PREFIX}:{job_id}"


def job_digests_key(job_id: str) -> str:
    """String: the job's digests in input order, packed as raw bytes."""
    return f"{JOB_PREFIX}:{job_id}:digests"


def job_chunks_done_key(job_id: str) -> str:
    """Set: chunk numbers already counted, so a redelivered chunk never counts twice."""
    return f"{JOB_PREFIX}:{job_id}:chunks"


def job_attempts_key(job_id: str) -> str:
    """Hash: deliveries per chunk number, to stop a chunk that keeps killing its worker."""
    return f"{JOB_PREFIX}:{job_id}:attempts"


def job_channel(job_id: str) -> str:
    """Pub/sub channel where progress is announced, so waiters block instead of polling."""
    return f"{JOB_PREFIX}:{job_id}:progress"


def model_advert_key(model_name: str) -> str:
    """Hash a worker writes at start: fingerprint and dims of the artifact it serves."""
    return f"{FLEET_PREFIX}:model:{model_name}"
