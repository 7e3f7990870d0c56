"""What one worker process holds for its whole life: one engine (one ORT session) and its Redis clients."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import redis

from contract.ledger import JobLedger
from contract.redis_connection import broker_client, connect
from contract.settings import FleetSettings, get_settings
from contract.vector_cache import VectorCache
from worker.engine import EmbeddingEngine
from worker.gathering import AmqpSource, LaneSource, QueueGatherer, RedisListSource
from worker.list_watch import ListWatch

log = logging.getLogger(__name__)


@dataclass
class ProcessRuntime:
    settings: FleetSettings
    engine: EmbeddingEngine
    redis: redis.Redis
    cache: VectorCache
    ledger: JobLedger
    gatherer: QueueGatherer


_runtime: ProcessRuntime | None = None


def open_runtime(settings: FleetSettings | None = None) -> ProcessRuntime:
    """Open the session once per process (at worker_process_init), warm it, and keep it.

    The Redis client retries a lost connection for EMBED_REDIS_OUTAGE_S, so a chunk rides out a
    Redis restart instead of failing.
    """
    global _runtime
    if _runtime is None:
        settings = settings or get_settings()
        engine = EmbeddingEngine(settings.model_dir, settings)
        engine.warm_up()
        client = connect(settings.cache_url, settings)
        source = _lane_source(settings, client)
        _runtime = ProcessRuntime(
            settings,
            engine,
            client,
            VectorCache(client, settings.cache_ttl_s, settings.fetch_batch_size),
            JobLedger(client),
            QueueGatherer(source, client, settings.gather_max_texts, settings.lease_s()),
        )
        log.info(
            "engine ready: %s (%s), %d intra-op threads",
            engine.manifest.name,
            engine.fingerprint,
            engine.threads,
        )
    return _runtime


def _lane_source(settings: FleetSettings, cache: redis.Redis) -> LaneSource:
    """Where waiting chunks are taken from: the broker's Redis lists, or RabbitMQ's queues."""
    broker = broker_client(settings, cache)
    if broker is not None:
        url = settings.broker_url
        listener = partial(connect, url, settings, outage_s=0)
        watch = ListWatch(connect(url, settings), listener, settings.redis_socket_timeout_s)
        return RedisListSource(broker, watch)
    from worker.app import app  # not at import: the app's module opens this runtime in each child

    return AmqpSource(app.connection_for_read)
