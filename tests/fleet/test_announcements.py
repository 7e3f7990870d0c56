"""How waits hear of a job's end (producer.announcements), on a real fleet and its Redis."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import redis

from contract import keys
from contract.jobs import JobRecord, JobState, ended_record
from localfleet.fleet import LocalFleet
from producer import EmbeddingClient
from producer.async_client import AsyncEmbeddingClient
from tests.fleet.test_jobs import JOB_TIMEOUT_S, unique_texts

pytestmark = pytest.mark.fleet


def _next_record(listener: redis.client.PubSub, timeout_s: float = JOB_TIMEOUT_S) -> JobRecord | None:
    message = listener.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
    return None if message is None else ended_record(message["data"])


def test_an_embed_hears_its_end_on_the_threads_own_channel_and_reads_no_status(
    redis_client: EmbeddingClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis_client
    channel = client.thread_waiter().channel
    listener = client.redis.pubsub()
    listener.subscribe(channel)
    assert listener.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    status_reads: list[str] = []
    read = client.ledger.record
    monkeypatch.setattr(client.ledger, "record", lambda job_id: status_reads.append(job_id) or read(job_id))

    vectors = client.embed(unique_texts(3), timeout=JOB_TIMEOUT_S)

    announced = _next_record(listener)
    assert vectors.shape == (3, 384) and status_reads == []
    assert announced is not None and announced.state is JobState.DONE and announced.done == 3
    assert announced.notify == channel and read(announced.id) == announced
    listener.close()


def test_a_small_jobs_end_carries_the_vectors_it_computed_and_the_wait_reads_only_the_rest(
    redis_client: EmbeddingClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis_client
    cached, new = unique_texts(2)
    reference = client.embed([cached], timeout=JOB_TIMEOUT_S)
    reads: list[list[str]] = []
    fetch = client.cache.fetch
    monkeypatch.setattr(
        client.cache, "fetch", lambda fp, digests: reads.append(list(digests)) or fetch(fp, digests)
    )

    job = client.submit_to_wait([new, cached, new])
    record = job.wait(timeout=JOB_TIMEOUT_S)
    vectors = job.result()

    assert len(record.carried) == 1 and reads == [[job._digests(record)[1]]]  # only the cached text is read
    np.testing.assert_array_equal(vectors[1], reference[0])
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert client.embed(unique_texts(3), timeout=JOB_TIMEOUT_S).shape == (3, 384) and len(reads) == 1


def test_a_wait_takes_no_earlier_jobs_end_left_on_the_threads_connection(client: EmbeddingClient) -> None:
    """An end announced on a job's channel after its wait stopped listening stays buffered on the
    thread's pub/sub connection; the thread's next wait, on another job, must not take it for its own."""
    first = client.submit(unique_texts(2))
    ended = first.wait(timeout=JOB_TIMEOUT_S)
    late = client.thread_pubsub()
    late.subscribe(keys.job_channel(first.id))
    client.redis.publish(keys.job_channel(first.id), json.dumps(list(sum(ended.to_redis().items(), ()))))
    late.unsubscribe(keys.job_channel(first.id))  # the announcement is left unread

    second = client.submit(unique_texts(600), priority="bulk")  # still queued when its wait starts
    record = second.wait(timeout=JOB_TIMEOUT_S)

    assert record.id == second.id and record.total == 600
    assert second.result().shape == (600, 384)


def test_a_cancelled_job_announces_its_ended_record_on_its_channel(client: EmbeddingClient) -> None:
    job = client.submit(unique_texts(3_000), priority="bulk")
    listener = client.redis.pubsub()
    listener.subscribe(keys.job_channel(job.id))
    listener.get_message(timeout=5)
    job.cancel()
    announced = None
    while announced is None and (message := listener.get_message(timeout=JOB_TIMEOUT_S)) is not None:
        if message["type"] == "message":
            announced = ended_record(message["data"])
    assert announced is not None and announced.state is JobState.CANCELLED and announced.id == job.id
    listener.close()


def test_a_wait_whose_own_channel_drops_still_ends_by_reading_status(client: EmbeddingClient) -> None:
    job = client.submit_to_wait(unique_texts(1_500), priority="bulk")
    client.redis.client_kill_filter(_type="pubsub")  # the announcement can no longer reach this wait
    record = job.wait(timeout=JOB_TIMEOUT_S)
    assert record.state is JobState.DONE and record.done == 1_500
    assert client.embed(unique_texts(2), timeout=JOB_TIMEOUT_S).shape == (2, 384)  # subscribed again


def test_an_async_embed_hears_its_end_on_the_clients_own_channel_and_reads_no_status(
    redis_fleet: LocalFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> tuple[np.ndarray, list[str]]:
        async with AsyncEmbeddingClient(redis_fleet.settings) as aclient:
            status_reads: list[str] = []
            read = aclient.record

            async def counted(job_id: str) -> JobRecord | None:
                status_reads.append(job_id)
                return await read(job_id)

            monkeypatch.setattr(aclient, "record", counted)
            return await aclient.embed(unique_texts(2), timeout=JOB_TIMEOUT_S), status_reads

    vectors, status_reads = asyncio.run(run())
    assert vectors.shape == (2, 384) and status_reads == []


def test_an_async_wait_whose_channel_drops_still_ends_by_reading_status(
    fleet: LocalFleet, client: EmbeddingClient
) -> None:
    async def run() -> JobRecord:
        async with AsyncEmbeddingClient(fleet.settings) as aclient:
            job = await aclient.submit_to_wait(unique_texts(1_500), priority="bulk")
            client.redis.client_kill_filter(_type="pubsub")
            record = await job.wait(timeout=JOB_TIMEOUT_S)
            assert (await aclient.embed(unique_texts(2), timeout=JOB_TIMEOUT_S)).shape == (2, 384)
            return record

    record = asyncio.run(run())
    assert record.state is JobState.DONE and record.done == 1_500
