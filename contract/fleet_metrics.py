"""The fleet's state as Prometheus gauges, read from Redis at each scrape (workers and gateways both
export them): queue depth per lane and build, counting chunks workers have already prefetched;
the age of the oldest waiting chunk; jobs running and ended by state. Autoscaling reads the depth.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from contract import keys
from contract.jobs import ChunkRef, task_id_of
from contract.lanes import Lane, queue_name
from contract.redis_connection import as_text
from contract.settings import FleetSettings

UNACKED_KEY = "unacked"  # kombu's Redis transport: delivery tag -> [message, exchange, routing key]


class FleetCollector(Collector):
    def __init__(self, settings: FleetSettings, cache: redis.Redis, broker: redis.Redis | None) -> None:
        self.settings = settings
        self.cache = cache
        self.broker = broker  # None where the broker is not Redis: no queue gauges then

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._jobs()

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "embedfleet_queue_depth",
            "chunks waiting or prefetched, per lane and build",
            labels=["lane", "build"],
        )
        oldest = GaugeMetricFamily(
            "embedfleet_queue_oldest_seconds",
            "age of the oldest waiting chunk's job",
            labels=["lane", "build"],
        )
        if self.broker is not None:
            model = self.settings.model_name
            builds = [as_text(fp) for fp in self.cache.zrange(keys.builds_key(model), 0, -1)]
            prefetched = self._prefetched()
            for build in builds:
                for lane in Lane:
                    queue = queue_name(model, build, lane)
                    depth.add_metric([lane.value, build], self.broker.llen(queue) + prefetched[queue])
                    oldest.add_metric([lane.value, build], self._oldest_age(queue))
        yield depth
        yield oldest

    def _prefetched(self) -> Counter[str]:
        assert self.broker is not None
        counts: Counter[str] = Counter()
        for raw in self.broker.hvals(UNACKED_KEY):
            try:
                counts[str(json.loads(raw)[2])] += 1
            except (ValueError, IndexError, TypeError):
                continue
        return counts

    def _oldest_age(self, queue: str) -> float:
        assert self.broker is not None
        raw = self.broker.lindex(queue, -1)  # kombu pops from the right: the oldest entry
        ref = ChunkRef.from_task_id(task_id_of(raw)) if raw else None
        created = self.cache.hget(keys.job_key(ref.job_id), "created") if ref else None
        return max(0.0, time.time() - float(as_text(created))) if created else 0.0

    def _jobs(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("embedfleet_jobs_running", "jobs not yet ended")
        running.add_metric([], float(self.cache.zcard(keys.running_jobs_key())))
        ended = CounterMetricFamily("embedfleet_jobs_ended", "jobs ended, by state", labels=["state"])
        for state, count in self.cache.hgetall(keys.stats_key()).items():
            ended.add_metric([as_text(state)], float(as_text(count)))
        yield running
        yield ended
