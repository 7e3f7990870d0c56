"""Every Redis key the fleet writes, in one place (producers and workers must agree on them)."""

from __future__ import annotations

VECTOR_PREFIX = "emb"
JOB_PREFIX = "job"
JOBS_PREFIX = "jobs"
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


def job_payloads_key(job_id: str) -> str:
    """Hash: chunk number -> its texts and input positions (JSON), until the chunk is counted.

    Celery messages carry only (job, chunk): the texts stay here, so a lost message can be sent
    again from what Redis holds, and no text reaches the broker, Flower or a task event.
    """
    return f"{JOB_PREFIX}:{job_id}:payloads"


def job_chunks_done_key(job_id: str) -> str:
    """Set: chunk numbers already counted, so a redelivered chunk never counts twice."""
    return f"{JOB_PREFIX}:{job_id}:chunks"


def job_leases_key(job_id: str) -> str:
    """Hash: chunk number -> "<worker node> <expiry>" while a worker holds the chunk."""
    return f"{JOB_PREFIX}:{job_id}:leases"


def job_attempts_key(job_id: str) -> str:
    """Hash: per chunk, failures (errors, crashes of its process) and the last error."""
    return f"{JOB_PREFIX}:{job_id}:attempts"


def job_orphans_key(job_id: str) -> str:
    """Hash: chunk number -> when the reconciler first found it neither queued, held nor counted."""
    return f"{JOB_PREFIX}:{job_id}:orphans"


def job_failed_positions_key(job_id: str) -> str:
    """String: input positions of failed chunks, packed as little-endian uint32."""
    return f"{JOB_PREFIX}:{job_id}:failed"


def job_keys(job_id: str) -> list[str]:
    """Every key of one job, to renew or drop together."""
    return [
        job_key(job_id),
        job_digests_key(job_id),
        job_payloads_key(job_id),
        job_chunks_done_key(job_id),
        job_leases_key(job_id),
        job_attempts_key(job_id),
        job_orphans_key(job_id),
        job_failed_positions_key(job_id),
    ]


def job_channel(job_id: str) -> str:
    """Pub/sub channel where progress is announced, so waiters block instead of polling."""
    return f"{JOB_PREFIX}:{job_id}:progress"


def waiter_channel(waiter_id: str) -> str:
    """Pub/sub channel of one waiting client thread: the end of each job it submitted to wait on is
    announced there as well, so it stays subscribed instead of subscribing per job."""
    return f"{JOBS_PREFIX}:waiter:{waiter_id}"


def running_jobs_key() -> str:
    """Sorted set: ids of unfinished jobs (score: creation time), what the reconciler sweeps."""
    return f"{JOBS_PREFIX}:running"


def stats_key() -> str:
    """Hash: jobs ended so far by state (`done`, `failed`, `cancelled`), for the jobs-by-state metric."""
    return f"{JOBS_PREFIX}:ended"


def node_key(node: str) -> str:
    """Hash with a short TTL: a worker node's heartbeat (build, processes, host)."""
    return f"{FLEET_PREFIX}:node:{node}"


def build_key(model_name: str, fingerprint: str) -> str:
    """Hash: what producers need to submit to a build (fingerprint, dims, name)."""
    return f"{FLEET_PREFIX}:build:{model_name}:{fingerprint}"


def build_nodes_key(model_name: str, fingerprint: str) -> str:
    """Sorted set: worker nodes of a build, scored by when their heartbeat expires (server time)."""
    return f"{FLEET_PREFIX}:build:{model_name}:{fingerprint}:nodes"


def builds_key(model_name: str) -> str:
    """Sorted set: every build of a model ever advertised, scored by when it first came up."""
    return f"{FLEET_PREFIX}:builds:{model_name}"


def tokenizer_key(artifact: str) -> str:
    """String: an artifact's tokenizer.json, published by its workers so a gateway can count tokens."""
    return f"{FLEET_PREFIX}:tokenizer:{artifact}"


def carried_key(task_id: str) -> str:
    """String with a TTL: the chunks a running task carried off its queue (worker.gathering)."""
    return f"{FLEET_PREFIX}:carried:{task_id}"


def reconciler_lock_key(model: str) -> str:
    """String with a TTL: the node whose turn it is to sweep, so one sweep of a model's jobs runs at once."""
    return f"{FLEET_PREFIX}:reconciler:{model}"
