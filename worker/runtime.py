"""What one worker process holds for its whole life: one engine (one ORT session) and one Redis store."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from contract.settings import FleetSettings, get_settings
from contract.vector_cache import VectorCache
from worker.engine import EmbeddingEngine
from worker.store import JobProgress

log = logging.getLogger(__name__)


@dataclass
class ProcessRuntime:
    settings: FleetSettings
    engine: EmbeddingEngine
    cache: VectorCache
    progress: JobProgress


_runtime: ProcessRuntime | None = None


def open_runtime(settings: FleetSettings | None = None) -> ProcessRuntime:
    """Open the session once per process (at worker_process_init), warm it, and keep it."""
    global _runtime
    if _runtime is None:
        settings = settings or get_settings()
        engine = EmbeddingEngine(settings.model_dir, settings)
        engine.warm_up()
        client = redis.Redis.from_url(
            settings.cache_url,
            socket_timeout=settings.redis_socket_timeout_s,
            socket_connect_timeout=settings.redis_socket_timeout_s,
            socket_keepalive=True,
            health_check_interval=settings.redis_health_check_interval_s,
        )
        _runtime = ProcessRuntime(
            settings,
            engine,
            VectorCache(client, settings.cache_ttl_s, settings.fetch_batch_size),
            JobProgress(client, settings.job_ttl_s),
        )
        log.info(
            "engine ready: %s (%s), %d intra-op threads",
            engine.manifest.name,
            engine.fingerprint,
            engine.threads,
        )
    return _runtime
