"""All configuration in one place, read from the environment with the `EMBED_` prefix."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DAY_S = 24 * 3600


def usable_cpus() -> int:
    """CPUs this process may run on (affinity and cgroup quota), not the host's core count."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(count, quota) if quota else count)


def _cgroup_cpu_quota() -> int | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, int(int(quota) / int(period)))


class FleetSettings(BaseSettings):
    """Settings shared by producers and workers; every field is `EMBED_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="EMBED_", frozen=True)

    broker_url: str = "redis://localhost:6379/0"
    cache_url: str = Field("", description="Redis for vectors and jobs; empty = broker_url")
    model_dir: Path = Path("artifacts/all-MiniLM-L6-v2")
    model_name: str = "all-MiniLM-L6-v2"

    model_fingerprint: str = Field("", description="submit only to the live build with this fingerprint")

    chunk_size: int = Field(
        512,
        gt=0,
        description=(
            "distinct texts per Celery task (a job's last chunks halve down to EMBED_MAX_BATCH_SIZE); "
            "larger spreads each task's queue work over more texts"
        ),
    )
    interactive_max_texts: int = Field(
        64, ge=0, description="jobs with at most this many texts to embed ride the interactive lane"
    )
    gather_max_texts: int = Field(
        64, ge=0, description="texts of waiting small chunks a worker process runs with its own (0 = none)"
    )
    interject_max_texts: int = Field(
        64,
        ge=0,
        description="texts of waiting interactive chunks a bulk task runs before each engine run (0 = none)",
    )
    interactive_drain_s: float = Field(
        1.0,
        ge=0,
        description=(
            "seconds an interactive task goes on serving the chunks waiting on its queue after its "
            "own, batch after batch, without a round through Celery for each (0 = none)"
        ),
    )
    coalesce_max_texts: int = Field(
        64, ge=0, description="texts of concurrent embed() calls one client sends as one job (0 = never)"
    )
    coalesce_inflight: int = Field(4, gt=0, description="jobs one client keeps in flight for embed() calls")
    max_job_texts: int = Field(100_000, gt=0, description="texts per submitted job")
    max_text_chars: int = Field(
        8_192, gt=0, description="characters kept before tokenising (tokenisation is superlinear)"
    )
    max_payload_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="bytes of one chunk's texts and positions; larger is refused"
    )
    cache_ttl_s: int = Field(30 * DAY_S, gt=0)
    job_ttl_s: int = Field(7 * DAY_S, gt=0)

    token_budget: int = Field(8_192, gt=0, description="padded tokens per inference batch")
    max_batch_size: int = Field(64, gt=0)
    max_run_s: float = Field(
        0.1,
        ge=0,
        description=(
            "seconds one inference run may take: each worker process caps a batch's padded tokens by "
            "the cost it measures, since a small request waits behind bulk work for one run "
            "(0 = no cap beyond the token budget)"
        ),
    )
    run_overhead_tokens: int | None = Field(
        None,
        ge=0,
        description="one more inference run costs about this many padded tokens (batching); "
        "empty = each worker process measures it after its warm-up",
    )
    intra_op_threads: int = Field(0, ge=0, description="0 = usable CPUs / worker processes")
    worker_concurrency: int = Field(0, ge=0, description="0 = one process per usable CPU")
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])

    wait_poll_s: float = Field(5.0, gt=0, description="status re-read while waiting on pub/sub")
    fetch_batch_size: int = Field(1_000, gt=0, description="vectors per MGET when fetching results")

    task_time_limit_s: int = Field(300, gt=0)
    visibility_timeout_s: int = Field(3_600, gt=0)
    max_chunk_attempts: int = Field(
        3, gt=0, description="failures of a chunk (errors, killed processes, time limits) before it fails"
    )
    retry_delay_s: float = Field(2.0, ge=0)
    redis_socket_timeout_s: float = Field(10.0, gt=0)
    redis_health_check_interval_s: int = Field(
        5,
        gt=0,
        description="PING an idle connection after this long; kombu drops a BRPOP without reply after "
        "about twice this, so a worker rejoins within seconds of a healed network partition",
    )
    redis_outage_s: float = Field(
        30.0, ge=0, description="how long a lost Redis connection is retried before the error surfaces"
    )

    redis_tls_ca_file: Path | None = Field(
        None, description="CA bundle that signs Redis' certificate (rediss://)"
    )
    redis_tls_cert_file: Path | None = Field(None, description="client certificate, where Redis asks for one")
    redis_tls_key_file: Path | None = Field(None, description="the client certificate's private key")
    redis_tls_verify: Literal["required", "optional", "none"] = Field(
        "required", description="how Redis' certificate is checked; `none` only for tests"
    )

    api_keys: str = Field("", description="gateway API keys, comma-separated; none: no authentication")
    api_keys_file: Path | None = Field(
        None, description="gateway API keys, one a line (with or beside api_keys)"
    )
    max_request_bytes: int = Field(16 * 1024 * 1024, gt=0, description="largest gateway request body")
    gateway_timeout_s: float = Field(60.0, gt=0, description="how long /v1/embeddings waits for its vectors")
    metrics_port: int = Field(0, ge=0, description="worker: serve Prometheus metrics on this port (0 = off)")

    heartbeat_interval_s: float = Field(2.0, gt=0, description="how often a worker renews its advert")
    heartbeat_ttl_s: float = Field(10.0, gt=0, description="a worker silent this long counts as gone")
    reconcile_interval_s: float = Field(10.0, gt=0, description="how often the fleet sweeps running jobs")
    reconcile_grace_s: float = Field(
        30.0, ge=0, description="a chunk neither queued, running nor counted this long is enqueued again"
    )
    stall_timeout_s: float = Field(
        120.0, gt=0, description="a job without progress while no live worker serves its build fails"
    )

    @model_validator(mode="after")
    def _default_cache_url(self) -> FleetSettings:
        if not self.cache_url:
            object.__setattr__(self, "cache_url", self.broker_url)
        return self

    @model_validator(mode="after")
    def _heartbeat_outlives_its_interval(self) -> FleetSettings:
        if self.heartbeat_ttl_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"EMBED_HEARTBEAT_TTL_S ({self.heartbeat_ttl_s}) must be at least twice "
                f"EMBED_HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s}), or live workers look gone"
            )
        return self

    @model_validator(mode="after")
    def _drain_within_time_limit(self) -> FleetSettings:
        if self.interactive_drain_s * 2 > self.task_time_limit_s:
            raise ValueError(
                f"EMBED_INTERACTIVE_DRAIN_S ({self.interactive_drain_s}) must be at most half of "
                f"EMBED_TASK_TIME_LIMIT_S ({self.task_time_limit_s}), or a draining task meets its time limit"
            )
        return self

    def lease_s(self) -> float:
        """How long a started chunk may stay unfinished before another worker may take it over."""
        return self.task_time_limit_s + self.heartbeat_ttl_s

    def processes(self) -> int:
        return self.worker_concurrency or usable_cpus()

    def threads_per_process(self) -> int:
        """Processes x threads <= CPUs, so prefork children never oversubscribe the host."""
        return self.intra_op_threads or max(1, usable_cpus() // self.processes())


@lru_cache(maxsize=1)
def get_settings() -> FleetSettings:
    return FleetSettings()
