"""Chunk messages stored with their job in one step (producer.queue_entries), on a real Redis and fleet."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from contract.celery_config import send_chunk
from contract.jobs import ChunkRef, JobState
from contract.settings import FleetSettings
from localfleet.fleet import LocalFleet
from localfleet.redis_server import RedisServer
from producer import EmbeddingClient
from producer.async_client import AsyncEmbeddingClient
from producer.queue_entries import QueueEntries
from tests.fleet.test_jobs import JOB_TIMEOUT_S, unique_texts

pytestmark = pytest.mark.fleet


def _comparable(entry: bytes) -> dict[str, Any]:
    """An entry less what differs between any two publishes (its delivery tag) and its queue's name."""
    message = json.loads(entry)
    message["properties"].pop("delivery_tag")
    message["properties"]["delivery_info"].pop("routing_key")
    return dict(message)


def test_a_chunk_entry_is_the_one_celerys_send_task_pushes(broker_server: RedisServer) -> None:
    settings = FleetSettings(broker_url=broker_server.url, cache_url=broker_server.url)
    assert QueueEntries.usable(settings)
    with EmbeddingClient(settings) as client:
        assert client.entries is not None
        ref = ChunkRef("f" * 32, 3, 7)
        send_chunk(client.celery, ref, "test.entries.sent")
        client.redis.lpush("test.entries.built", client.entries.entry(ref, "test.entries.built"))
        sent = _comparable(client.redis.rpop("test.entries.sent"))  # type: ignore[arg-type]
        built = _comparable(client.redis.rpop("test.entries.built"))  # type: ignore[arg-type]
    # send_task also copies its own options into the properties; Celery reads them from the headers.
    for option in ("argsrepr", "kwargsrepr"):
        assert sent["properties"].pop(option) == sent["headers"][option]
    assert built == sent


def test_clients_apart_from_the_broker_publish_through_celery() -> None:
    apart = FleetSettings(broker_url="redis://broker:6379/0", cache_url="redis://cache:6379/0")
    other_db = FleetSettings(broker_url="redis://one:6379/0", cache_url="redis://one:6379/1")
    rabbit = FleetSettings(broker_url="amqp://guest:guest@rabbit:5672//", cache_url="redis://one:6379/0")
    assert not any(QueueEntries.usable(settings) for settings in (apart, other_db, rabbit))
    assert QueueEntries.usable(FleetSettings(broker_url="redis://one:6379/0"))  # the cache defaults to it


def test_on_one_redis_jobs_run_without_a_single_celery_publish(
    one_redis_fleet: LocalFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = unique_texts(1_300)  # three bulk chunks, then a small job on the interactive lane
    with one_redis_fleet.client() as client:

        def refuse(*_: object, **__: object) -> None:
            raise AssertionError("a chunk was published apart from its job")

        monkeypatch.setattr(client.celery, "send_task", refuse)
        bulk = client.submit(texts, priority="bulk")
        assert bulk.wait(timeout=JOB_TIMEOUT_S).state is JobState.DONE
        vectors = bulk.result()
        again = client.embed([texts[5], *unique_texts(2)], timeout=JOB_TIMEOUT_S)
    assert vectors.shape == (1_300, 384)
    np.testing.assert_array_equal(again[0], vectors[5])


def test_an_async_client_on_one_redis_expects_its_end_before_storing_it(
    one_redis_fleet: LocalFleet,
) -> None:
    async def run() -> list[np.ndarray]:
        async with AsyncEmbeddingClient(one_redis_fleet.settings) as aclient:
            assert aclient.entries is not None
            return list(
                await asyncio.gather(
                    *(aclient.embed(unique_texts(2), timeout=JOB_TIMEOUT_S) for _ in range(20))
                )
            )

    assert [vectors.shape for vectors in asyncio.run(run())] == [(2, 384)] * 20
