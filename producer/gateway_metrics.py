"""The gateway's Prometheus metrics: its requests, what the cache already held, and the fleet's gauges."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from contract.fleet_metrics import FleetCollector, queue_probe
from contract.redis_connection import connect
from contract.settings import FleetSettings

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ROUTES = ("/v1/embeddings", "/v1/jobs", "/healthz", "/readyz", "/metrics")


class GatewayMetrics:
    def __init__(self, settings: FleetSettings) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "embedfleet_gateway_request_seconds",
            "gateway requests, from arrival to answer",
            ["route", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.lookups = Counter(
            "embedfleet_cache_lookups",
            "texts submitted, by whether the cache already held their vector",
            ["result"],
            registry=self.registry,
        )
        cache = connect(settings.cache_url, settings, 0)
        self.registry.register(FleetCollector(settings, cache, queue_probe(settings)))

    @contextmanager
    def request(self, path: str) -> Iterator[Callable[[int], None]]:
        """Times a request; the route label folds job ids away so the label set stays small."""
        route = next((known for known in ROUTES if path.startswith(known)), "other")
        started = time.perf_counter()
        statuses: list[int] = []
        try:
            yield statuses.append
        finally:  # a request that raised is observed too, as a 500
            self.requests.labels(route, str(statuses[0] if statuses else 500)).observe(
                time.perf_counter() - started
            )

    def submitted(self, cached: int, total: int) -> None:
        self.lookups.labels("hit").inc(cached)
        self.lookups.labels("miss").inc(total - cached)

    async def render(self) -> tuple[bytes, str]:
        return await asyncio.to_thread(generate_latest, self.registry), CONTENT_TYPE_LATEST
