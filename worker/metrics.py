"""Worker metrics for Prometheus, served by the node's main process on EMBED_METRICS_PORT.

Pool processes count chunks, texts, engine calls and run times; prometheus_client's multiprocess
mode adds them up across processes (worker.app points PROMETHEUS_MULTIPROC_DIR at a new directory
before anything imports prometheus_client, and before the pool forks). The fleet's queue gauges
(contract.fleet_metrics) come along, read from Redis at each scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from contract.fleet_metrics import FleetCollector, queue_probe
from contract.redis_connection import connect
from contract.settings import FleetSettings

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CHUNKS = Counter("embedfleet_chunks", "chunks a worker finished, by outcome", ["outcome"])
TEXTS = Counter("embedfleet_texts", "distinct texts of finished chunks, embedded or found cached", ["source"])
BATCH_TEXTS = Histogram("embedfleet_engine_batch_texts", "texts per engine call", buckets=BATCH_BUCKETS)
CHUNK_SECONDS = Histogram(
    "embedfleet_chunk_seconds", "one task's run (its chunks together)", buckets=SECONDS_BUCKETS
)


def serve(settings: FleetSettings) -> None:
    """The node's /metrics: every pool process's counters plus the fleet's queue gauges."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    cache = connect(settings.cache_url, settings, 0)
    registry.register(FleetCollector(settings, cache, queue_probe(settings)))
    start_http_server(settings.metrics_port, registry=registry)
