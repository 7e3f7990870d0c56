"""End-to-end jobs through real prefork workers running the static-INT8 artifact; tests that take
`any_client` or `any_fleet` run on both brokers (Redis and RabbitMQ), the cache on Redis."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from contract import keys
from contract.celery_config import EMBED_TASK
from contract.codec import encode_vector
from contract.jobs import ChunkRef
from contract.lanes import Lane, queue_name
from contract.ledger import ClaimStatus, JobLedger
from contract.settings import FleetSettings
from localfleet.fleet import LocalFleet
from localfleet.redis_server import RedisServer
from producer import EmbeddingClient
from producer.errors import JobTimeoutError, ResultIncompleteError
from producer.planning import plan_job
from tests.conftest import SENTENCES
from worker.engine import EmbeddingEngine

pytestmark = pytest.mark.fleet
JOB_TIMEOUT_S = 120.0


def unique_texts(count: int) -> list[str]:
    """Fresh texts per test, so no test sees another's cache entries."""
    tag = uuid.uuid4().hex[:8]
    return [f"{SENTENCES[i % len(SENTENCES)]} (sample {i} of run {tag})" for i in range(count)]


@pytest.fixture(scope="module")
def engine(static_artifact: Path) -> EmbeddingEngine:
    return EmbeddingEngine(static_artifact, FleetSettings(intra_op_threads=1))


def test_job_returns_vectors_in_input_order_equal_to_the_engine(
    any_client: EmbeddingClient, engine: EmbeddingEngine
) -> None:
    texts = unique_texts(50)
    job = any_client.submit(texts)
    record = job.wait(timeout=JOB_TIMEOUT_S)
    vectors = job.result()
    expected = engine.embed(texts).vectors
    assert record.state.value == "done"
    assert (record.total, record.done, record.failed) == (50, 50, 0)
    assert vectors.shape == (50, engine.dims) and vectors.dtype == np.float32
    assert np.min(np.sum(vectors * expected, axis=1)) >= 0.9999


def test_resubmitting_the_same_texts_executes_no_task(any_client: EmbeddingClient) -> None:
    texts = unique_texts(40)
    first = any_client.embed(texts, timeout=JOB_TIMEOUT_S)
    again = any_client.submit(texts)
    record = again.status()
    assert record.chunks == 0 and record.state.value == "done" and record.done == 40
    np.testing.assert_array_equal(again.result(), first)


def test_a_small_job_queued_whole_never_embeds_its_cached_texts_again(client: EmbeddingClient) -> None:
    texts = unique_texts(3)
    client.embed(texts[:2], timeout=JOB_TIMEOUT_S)
    fingerprint = client.build().fingerprint
    marker = np.zeros(384, dtype=np.float32)
    marker[7] = 1.0  # a vector no embedding gives: it stays only if no worker writes this text again
    digest = plan_job([texts[0]], fingerprint).digests[0]
    client.redis.set(keys.vector_key(fingerprint, digest), encode_vector(marker))
    job = client.submit(texts)  # two cached texts, one new: queued whole
    record = job.wait(timeout=JOB_TIMEOUT_S)
    vectors = job.result()
    assert record.state.value == "done" and (record.chunks, record.done) == (1, 3)
    np.testing.assert_array_equal(vectors[0], marker)
    assert abs(float(np.linalg.norm(vectors[2])) - 1.0) < 1e-3


def test_evicted_rows_raise_by_position_and_recompute_embeds_them_again(client: EmbeddingClient) -> None:
    texts = unique_texts(120)
    job = client.submit(texts)
    job.wait(timeout=JOB_TIMEOUT_S)
    reference = job.result()
    fingerprint = job.status().fingerprint
    evicted = [3, 64, 119]
    digests = plan_job(texts, fingerprint).digests
    client.redis.delete(*(keys.vector_key(fingerprint, digests[position]) for position in evicted))
    with pytest.raises(ResultIncompleteError) as raised:
        job.result()
    assert raised.value.positions == evicted
    masked = job.result(missing="mask")
    assert list(np.flatnonzero(masked.mask.any(axis=1))) == evicted
    recomputed = job.result(missing="recompute")
    np.testing.assert_allclose(recomputed, reference, atol=1e-6)
    assert job.result().shape == (120, 384)  # the rows are cached again


def test_identical_texts_in_one_job_are_embedded_once(any_client: EmbeddingClient) -> None:
    base = unique_texts(5)
    texts = base * 4
    job = any_client.submit(texts)
    record = job.wait(timeout=JOB_TIMEOUT_S)
    vectors = job.result()
    assert record.chunks == 1 and record.done == 20 and record.lane.value == "interactive"
    np.testing.assert_array_equal(vectors[:5], vectors[15:])


def test_a_chunk_delivered_twice_counts_once(fleet: LocalFleet, client: EmbeddingClient) -> None:
    texts = unique_texts(40)
    job = client.submit(texts, priority="bulk")
    record = job.wait(timeout=JOB_TIMEOUT_S)
    # Deliver chunk 0 again exactly as the producer sent it, as Redis does after a visibility timeout.
    ref = ChunkRef(job.id, 0)
    queue = queue_name(record.model, record.fingerprint, record.lane)
    client.celery.send_task(EMBED_TASK, kwargs=ref.to_kwargs(), queue=queue, task_id=ref.task_id)
    finished = f"[{ref.task_id}] succeeded in"
    wait_for(lambda: fleet.worker.log_text().count(finished) == 2)
    assert "skipped: finished" in fleet.worker.log_text().split(finished)[-1][:120]
    again = job.status()
    assert (again.done, again.failed, again.counted, again.state.value) == (40, 0, record.chunks, "done")


def test_two_jobs_at_once(any_fleet: LocalFleet) -> None:
    texts = [unique_texts(60), unique_texts(45)]
    results: dict[int, np.ndarray] = {}

    def run(index: int) -> None:
        with any_fleet.client() as own:
            results[index] = own.embed(texts[index], timeout=JOB_TIMEOUT_S)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOB_TIMEOUT_S)
    assert results[0].shape == (60, 384) and results[1].shape == (45, 384)
    assert not np.allclose(results[0][:45], results[1])


def test_broker_and_cache_live_on_two_redis_servers(
    client: EmbeddingClient, broker_server: RedisServer, cache_server: RedisServer
) -> None:
    texts = unique_texts(10)
    client.embed(texts, timeout=JOB_TIMEOUT_S)
    fingerprint = client.model().fingerprint
    pattern = keys.vector_key(fingerprint, "*")
    assert broker_server.url != cache_server.url
    assert len(list(cache_server.client().scan_iter(pattern))) >= 10
    assert list(broker_server.client().scan_iter(pattern)) == []
    assert list(broker_server.client().scan_iter("_kombu.binding.*"))


def test_wait_times_out_with_a_clear_error_and_the_job_goes_on(any_client: EmbeddingClient) -> None:
    job = any_client.submit(unique_texts(200))
    with pytest.raises(JobTimeoutError, match="re-attach"):
        job.wait(timeout=0.01)
    record = any_client.job(job.id).wait(timeout=JOB_TIMEOUT_S, progress=True)
    assert record.done == 200


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_concurrent_embed_calls_on_one_client_share_jobs_and_get_their_own_rows(
    any_fleet: LocalFleet, engine: EmbeddingEngine
) -> None:
    calls = [unique_texts(1 + i % 3) for i in range(24)]
    results: dict[int, np.ndarray] = {}
    with any_fleet.client() as shared:
        before = shared.redis.keys("job:*:digests")

        def call(index: int) -> None:
            results[index] = shared.embed(calls[index], timeout=JOB_TIMEOUT_S)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOB_TIMEOUT_S)
        jobs = len(shared.redis.keys("job:*:digests")) - len(before)
    for index, texts in enumerate(calls):
        expected = engine.embed(texts).vectors
        assert results[index].shape == (len(texts), 384)
        assert np.min(np.sum(results[index] * expected, axis=1)) >= 0.9999
    assert jobs < len(calls)


def test_a_chunk_of_a_vanished_job_is_skipped_and_its_batch_runs(
    fleet: LocalFleet, client: EmbeddingClient
) -> None:
    gone = [ChunkRef(f"vanished-{uuid.uuid4().hex[:8]}", chunk, texts=1) for chunk in range(6)]
    claims = JobLedger(client.redis).claim_many(gone[:1], "test-node", 10.0)
    assert claims[0].status is ClaimStatus.GONE
    record = client.submit(unique_texts(1)).wait(timeout=JOB_TIMEOUT_S)
    queue = queue_name(record.model, record.fingerprint, Lane.INTERACTIVE)
    for ref in gone:  # waiting beside real 1-text jobs, so a task carries some of them along
        client.celery.send_task(EMBED_TASK, kwargs=ref.to_kwargs(), queue=queue, **ref.send_options())
    jobs = [client.submit(unique_texts(1)) for _ in range(6)]
    for job in jobs:
        assert job.wait(timeout=JOB_TIMEOUT_S).done == 1
    wait_for(lambda: "skipped: gone" in fleet.worker.log_text())


def test_workers_publish_the_tokenizer_again_when_it_is_gone(client: EmbeddingClient) -> None:
    key = keys.tokenizer_key(client.build().artifact)
    assert client.redis.exists(key)
    client.redis.delete(key)
    wait_for(lambda: bool(client.redis.exists(key)), timeout_s=10)
    assert client.redis.ttl(key) > 0
