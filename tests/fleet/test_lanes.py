"""Two lanes and cross-request batching on a real fleet, on each broker (Redis and RabbitMQ): small
jobs overtake a bulk backlog, and small chunks that run together still count and fail one by one."""

from __future__ import annotations

import re
import threading
import uuid
from pathlib import Path

import pytest

from contract import keys
from localfleet.fleet import LocalFleet, fleet_env
from producer import EmbeddingClient
from tests.fleet.test_jobs import JOB_TIMEOUT_S, unique_texts, wait_for

pytestmark = pytest.mark.fleet
SERVED = re.compile(r"served [1-9]\d* waiting interactive chunks in \d+ batches between its runs")
CARRIED = re.compile(r"chunks \((\d+) carried\)")
# "then served 30 waiting chunks in 3 batches" (drained after a task's own batch), or "served 5
# waiting interactive chunks in 2 batches between its runs" (served by a bulk task)
BATCHED = re.compile(r"served (\d+) waiting (?:interactive )?chunks in (\d+) batches")
DRAINED = re.compile(r"then served (\d+) waiting chunks in \d+ batches")


def ran_together(log: str) -> bool:
    """Some engine run served several small chunks: a task's own with those it carried, or a batch
    drained after it or served between a bulk chunk's runs."""
    carried = any(int(n) > 0 for n in CARRIED.findall(log))
    return carried or any(int(served) > int(batches) for served, batches in BATCHED.findall(log))


def test_an_interactive_job_finishes_before_a_bulk_backlog_does(any_client: EmbeddingClient) -> None:
    backlog = any_client.submit(unique_texts(4_000))
    assert backlog.status().lane.value == "bulk"
    vectors = any_client.embed(unique_texts(1), timeout=JOB_TIMEOUT_S)
    behind = backlog.status()
    assert vectors.shape == (1, 384)
    assert not behind.state.finished and behind.done < behind.total
    assert backlog.wait(timeout=JOB_TIMEOUT_S).state.value == "done"


def test_a_bulk_chunk_serves_waiting_interactive_chunks_between_its_runs(any_fleet: LocalFleet) -> None:
    """Both processes run one long bulk chunk each; a 1-text job does not wait for either to end."""
    long_chunk = 1_024  # 16 engine runs of 64 texts: seconds on one thread
    with any_fleet.client(chunk_size=long_chunk) as client:
        bulk = client.submit(unique_texts(2 * long_chunk), priority="bulk")
        leases = keys.job_leases_key(bulk.id)
        wait_for(lambda: client.redis.hlen(leases) >= 2, JOB_TIMEOUT_S)
        vectors = client.embed(unique_texts(1), timeout=JOB_TIMEOUT_S)
        behind = bulk.status()
        assert vectors.shape == (1, 384)
        assert behind.done == 0, "the 1-text job waited for a bulk chunk to end"
        assert bulk.wait(timeout=JOB_TIMEOUT_S).state.value == "done"
    # Celery logs a task's return after the job it finished has ended: wait for the line.
    wait_for(lambda: SERVED.search(any_fleet.worker.log_text()) is not None, JOB_TIMEOUT_S)


def test_small_chunks_run_together_yet_count_one_by_one(any_fleet: LocalFleet) -> None:
    """Many 1-text jobs at once: workers carry waiting chunks along, and every job ends exact."""
    texts = [unique_texts(1) for _ in range(120)]
    jobs = []
    with any_fleet.client() as client:
        backlog = client.submit(unique_texts(2_000))  # keeps both processes busy while the small jobs queue

        def submit(batch: list[list[str]]) -> None:
            with any_fleet.client() as own:
                jobs.extend(own.submit(one) for one in batch)

        threads = [threading.Thread(target=submit, args=(texts[i::4],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        records = [client.job(job.id).wait(timeout=JOB_TIMEOUT_S) for job in jobs]
        backlog.wait(timeout=JOB_TIMEOUT_S)
    assert all(
        (r.state.value, r.done, r.counted, r.lane.value) == ("done", 1, 1, "interactive") for r in records
    )
    assert ran_together(any_fleet.worker.log_text())


def test_gathered_chunks_keep_each_texts_cache_and_cut_flags(any_fleet: LocalFleet) -> None:
    """Small jobs that mix cached, new and cut texts run gathered (one cache look for the batch):
    every job still ends with all its rows and exactly its own count of cut texts."""
    cut_cached, cut_new = (f"{unique_texts(1)[0]} " + "embedding " * 600 for _ in range(2))
    cached = unique_texts(8)
    fresh = unique_texts(48)
    with any_fleet.client() as client:
        client.embed([*cached, cut_cached], timeout=JOB_TIMEOUT_S)
        batches = [
            [
                fresh[i],
                cached[i % len(cached)],
                *([cut_cached] if i % 3 == 0 else []),
                *([cut_new] * (i % 4 == 1)),
            ]
            for i in range(len(fresh))
        ]
        backlog = client.submit(unique_texts(2_000))  # both processes busy: the small jobs wait, and gather
        jobs = [client.submit(texts) for texts in batches]
        records = [job.wait(timeout=JOB_TIMEOUT_S) for job in jobs]
        rows = [job.result() for job in jobs]
        backlog.wait(timeout=JOB_TIMEOUT_S)
    for texts, record, vectors in zip(batches, records, rows, strict=True):
        cut = sum(text in (cut_cached, cut_new) for text in texts)
        assert (record.state.value, record.done, record.truncated) == ("done", len(texts), cut)
        assert vectors.shape == (len(texts), 384)
    assert ran_together(any_fleet.worker.log_text())


def test_an_interactive_task_drains_what_queued_behind_it(fleet: LocalFleet, tmp_path: Path) -> None:
    """One process, busy with a bulk chunk while 1-text jobs queue; gathering takes no more than the
    task's own text here, so the first interactive task runs its own, then the waiting ones one batch
    each without a round through Celery, and every job still counts exactly."""
    settings, env = fleet_env(
        {
            **fleet.env,
            "EMBED_MODEL_NAME": f"drain-{uuid.uuid4().hex[:8]}",  # queues of its own
            "EMBED_WORKER_CONCURRENCY": "1",
            "EMBED_CHUNK_SIZE": "512",
            "EMBED_GATHER_MAX_TEXTS": "1",
            "EMBED_INTERJECT_MAX_TEXTS": "0",
        }
    )
    with LocalFleet(settings, env, tmp_path / "worker.log") as single, single.start().client() as client:
        bulk = client.submit(unique_texts(1_024), priority="bulk")
        wait_for(lambda: client.redis.hlen(keys.job_leases_key(bulk.id)) >= 1, JOB_TIMEOUT_S)
        jobs = [client.submit(unique_texts(1)) for _ in range(12)]
        records = [job.wait(timeout=JOB_TIMEOUT_S) for job in jobs]
        assert bulk.wait(timeout=JOB_TIMEOUT_S).state.value == "done"
        log = single.worker.log_text()
    assert all((r.state.value, r.done, r.counted) == ("done", 1, 1) for r in records)
    drained = [int(served) for served in DRAINED.findall(log)]
    assert drained and sum(drained) >= len(jobs) // 2, log[-2_000:]
