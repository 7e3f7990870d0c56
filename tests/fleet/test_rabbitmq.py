"""RabbitMQ as the broker (EMBED_BROKER_URL=amqp://...): the fleet's jobs, counts and faults as on
Redis; the cache stays on Redis. Uses the RabbitMQ these machines run on 127.0.0.1:5672; each run
uses a model name of its own, so its queues are its own."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest

from contract import keys
from contract.celery_config import EMBED_TASK, make_celery
from contract.fleet_metrics import AmqpQueueProbe
from contract.jobs import ChunkRef
from contract.lanes import Lane, queue_name
from localfleet.fleet import LocalFleet
from producer import EmbeddingClient
from tests.fleet.conftest import RABBITMQ_URL
from tests.fleet.test_jobs import JOB_TIMEOUT_S, unique_texts
from worker.reconciler import Reconciler

pytestmark = pytest.mark.fleet


@pytest.fixture
def rabbit_client(rabbit_fleet: LocalFleet) -> Iterator[EmbeddingClient]:
    with rabbit_fleet.client() as client:
        yield client


def test_jobs_run_end_to_end_on_rabbitmq(rabbit_client: EmbeddingClient) -> None:
    texts = unique_texts(400)
    job = rabbit_client.submit(texts, priority="bulk")
    record = job.wait(timeout=JOB_TIMEOUT_S)
    assert (record.state.value, record.done, record.counted) == ("done", 400, record.chunks)
    assert job.result().shape == (400, 384)
    assert rabbit_client.embed(unique_texts(3), timeout=JOB_TIMEOUT_S).shape == (3, 384)
    again = rabbit_client.submit(texts)
    assert again.status().chunks == 0
    np.testing.assert_array_equal(again.result(), job.result())


def test_a_chunk_delivered_twice_counts_once_on_rabbitmq(rabbit_client: EmbeddingClient) -> None:
    job = rabbit_client.submit(unique_texts(40), priority="bulk")
    record = job.wait(timeout=JOB_TIMEOUT_S)
    ref = ChunkRef(job.id, 0)
    queue = queue_name(record.model, record.fingerprint, record.lane)
    rabbit_client.celery.send_task(EMBED_TASK, kwargs=ref.to_kwargs(), queue=queue, **ref.send_options())
    time.sleep(1)
    again = job.status()
    assert (again.done, again.counted, again.state.value) == (40, record.chunks, "done")


def test_a_killed_pool_child_loses_nothing_on_rabbitmq(
    rabbit_fleet: LocalFleet, rabbit_client: EmbeddingClient
) -> None:
    job = rabbit_client.submit(unique_texts(600), priority="bulk")
    while job.status().done == 0:
        time.sleep(0.01)
    os.kill(rabbit_fleet.children()[0], signal.SIGKILL)
    record = job.wait(timeout=JOB_TIMEOUT_S)
    assert (record.state.value, record.done, record.failed) == ("done", 600, 0)
    assert rabbit_client.redis.scard(keys.job_chunks_done_key(job.id)) == record.chunks


def test_queue_depth_is_read_from_rabbitmq(rabbit_fleet: LocalFleet, rabbit_client: EmbeddingClient) -> None:
    build = rabbit_client.build()
    bulk = queue_name(build.model, build.fingerprint, Lane.BULK)
    job = rabbit_client.submit(unique_texts(3_000), priority="bulk")
    depth = AmqpQueueProbe(RABBITMQ_URL).depths([bulk])[bulk]
    job.wait(timeout=JOB_TIMEOUT_S)
    assert depth > 0 and AmqpQueueProbe(RABBITMQ_URL).depths([bulk])[bulk] == 0


def test_a_redis_fleet_sharing_the_cache_leaves_rabbitmq_chunks_alone(
    fleet: LocalFleet, rabbit_client: EmbeddingClient
) -> None:
    """Its reconciler cannot see RabbitMQ's queues: it must not take queued chunks for lost ones."""
    job = rabbit_client.submit(unique_texts(3_000), priority="bulk")
    settings = fleet.settings.model_copy(update={"reconcile_grace_s": 0})  # resend at first sight
    report = Reconciler(make_celery(settings), rabbit_client.redis, settings).sweep([job.id])
    assert not job.status().state.finished
    job.cancel()
    assert report.jobs == 1 and report.resent == []
