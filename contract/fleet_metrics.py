"""The fleet's state as Prometheus gauges, read at each scrape (workers and gateways both export them):
queue depth per lane and build, counting chunks workers have already prefetched where the broker
shows them (Redis); the age of the oldest waiting chunk (Redis); jobs running and ended by state.
Autoscaling reads the depth.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Protocol

import redis
from kombu import Connection
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from contract import keys
from contract.jobs import ChunkRef, task_id_of
from contract.lanes import Lane, queue_name
from contract.redis_connection import REDIS_SCHEMES, as_text, connect
from contract.settings import FleetSettings

UNACKED_KEY = "unacked"  # kombu's Redis transport: delivery tag -> [message, exchange, routing key]
AMQP_TIMEOUT_S = 5


class QueueProbe(Protocol):
    def depths(self, queues: list[str]) -> dict[str, int]: ...
    def oldest(self, queue: str) -> ChunkRef | None: ...


class RedisQueueProbe:
    """Waiting entries of a list plus the ones kombu has handed to a worker and not yet acked."""

    def __init__(self, broker: redis.Redis) -> None:
        self.broker = broker

    def depths(self, queues: list[str]) -> dict[str, int]:
        prefetched: Counter[str] = Counter()
        for raw in self.broker.hvals(UNACKED_KEY):
            try:
                prefetched[str(json.loads(raw)[2])] += 1
            except (ValueError, IndexError, TypeError):
                continue
        return {queue: int(self.broker.llen(queue)) + prefetched[queue] for queue in queues}

    def oldest(self, queue: str) -> ChunkRef | None:
        raw = self.broker.lindex(queue, -1)  # kombu pops from the right: the oldest entry
        return ChunkRef.from_task_id(task_id_of(raw)) if raw else None


class AmqpQueueProbe:
    """RabbitMQ's count of ready messages (a passive declare); it does not say which is oldest."""

    def __init__(self, url: str) -> None:
        self.url = url

    def depths(self, queues: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        with Connection(self.url, connect_timeout=AMQP_TIMEOUT_S) as connection:
            for queue in queues:
                try:
                    found[queue] = int(
                        connection.default_channel.queue_declare(queue, passive=True).message_count
                    )
                except connection.channel_errors:
                    found[queue] = 0  # not declared yet: nothing waits there
                    connection.default_channel  # noqa: B018  (a failed passive declare closes the channel)
        return found

    def oldest(self, queue: str) -> ChunkRef | None:
        return None


def queue_probe(settings: FleetSettings) -> QueueProbe:
    if settings.broker_url.startswith(REDIS_SCHEMES):
        return RedisQueueProbe(connect(settings.broker_url, settings, 0))
    return AmqpQueueProbe(settings.broker_url)


class FleetCollector(Collector):
    def __init__(self, settings: FleetSettings, cache: redis.Redis, probe: QueueProbe) -> None:
        self.settings = settings
        self.cache = cache
        self.probe = probe

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
        model = self.settings.model_name
        builds = [as_text(fp) for fp in self.cache.zrange(keys.builds_key(model), 0, -1)]
        lanes = {queue_name(model, build, lane): (lane, build) for build in builds for lane in Lane}
        for queue, count in self.probe.depths(list(lanes)).items():
            lane, build = lanes[queue]
            depth.add_metric([lane.value, build], count)
            oldest.add_metric([lane.value, build], self._age(self.probe.oldest(queue)))
        yield depth
        yield oldest

    def _age(self, ref: ChunkRef | None) -> float:
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
