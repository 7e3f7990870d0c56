"""How jobs end on a real fleet: cancelled by the caller, revoked by an operator, purged and
reconciled, refused by a worker without its artifact, failed for good as Flower shows it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from contract import keys
from contract.lanes import Lane, queue_name
from localfleet.fleet import LocalFleet
from localfleet.redis_server import RedisServer
from producer import EmbeddingClient, JobFailedError
from tests.conftest import ROOT
from tests.fleet.test_bad_input import run_cli
from tests.fleet.test_jobs import JOB_TIMEOUT_S, unique_texts

pytestmark = pytest.mark.fleet


def test_cancel_ends_the_job_and_its_queued_chunks_are_skipped(client: EmbeddingClient) -> None:
    job = client.submit(unique_texts(3_000), priority="bulk")
    record = job.cancel()
    assert record.state.value == "cancelled" and record.finished > 0
    assert client.redis.zscore(keys.running_jobs_key(), job.id) is None
    with pytest.raises(JobFailedError, match="cancelled by its caller"):
        job.result()
    masked = job.result(missing="mask")
    assert masked.shape == (3_000, 384)
    assert client.embed(unique_texts(5), timeout=JOB_TIMEOUT_S).shape == (5, 384)


def test_cancel_from_the_cli(fleet: LocalFleet, client: EmbeddingClient) -> None:
    job = client.submit(unique_texts(2_000), priority="bulk")
    result = run_cli(fleet, "cancel", job.id)
    assert result.returncode == 1 and '"state": "cancelled"' in result.stdout
    assert job.status().state.value == "cancelled"


def test_a_revoked_chunk_counts_failed_so_its_job_ends(fleet: LocalFleet, client: EmbeddingClient) -> None:
    job = client.submit(unique_texts(2_000), priority="bulk")
    record = job.status()
    last = f"{job.id}.{record.chunks - 1}"
    client.celery.control.revoke(last)  # as Flower's "revoke" button does
    final = job.wait(timeout=JOB_TIMEOUT_S)
    assert final.state.value == "failed" and final.counted == final.chunks
    assert f"chunk {record.chunks - 1} was cancelled (revoked by an operator)" in final.error
    assert final.done + final.failed == final.total and final.failed > 0


def test_purged_chunks_are_sent_again_by_the_reconciler(
    fleet: LocalFleet, client: EmbeddingClient, broker_server: RedisServer
) -> None:
    texts = unique_texts(3_000)
    job = client.submit(texts, priority="bulk")
    record = job.status()
    purged = broker_server.client().delete(queue_name(record.model, record.fingerprint, Lane.BULK))
    final = job.wait(timeout=JOB_TIMEOUT_S)
    assert purged == 1
    assert (final.state.value, final.done, final.failed) == ("done", 3_000, 0)
    assert job.result().shape == (3_000, 384)


def test_reconcile_by_hand(fleet: LocalFleet, client: EmbeddingClient, broker_server: RedisServer) -> None:
    job = client.submit(unique_texts(3_000), priority="bulk")
    record = job.status()
    broker_server.client().delete(queue_name(record.model, record.fingerprint, Lane.BULK))
    env = {
        **os.environ,
        **fleet.env,
        "EMBED_RECONCILE_GRACE_S": "0",
        "EMBED_MODEL_DIR": str(fleet.settings.model_dir),
    }
    result = subprocess.run(
        [sys.executable, "-m", "worker", "reconcile", job.id],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "1 running jobs swept" in result.stdout and "chunks sent again" in result.stdout
    assert job.wait(timeout=JOB_TIMEOUT_S).state.value == "done"


def test_a_chunk_failed_for_good_shows_as_failure_in_the_event_stream(
    fleet: LocalFleet, client: EmbeddingClient
) -> None:
    """Flower reads the task events: a chunk counted failed must be a task-failed event, not SUCCESS."""
    seen: dict[str, str] = {}
    app = client.celery
    receivers: list[Any] = []

    def record(event: dict[str, Any]) -> None:
        seen[event.get("uuid", "")] = event["type"]

    def listen() -> None:
        with app.connection_for_read() as connection:
            receiver = app.events.Receiver(
                connection, handlers={"task-failed": record, "task-succeeded": record}
            )
            receivers.append(receiver)
            receiver.capture(limit=None, timeout=None, wakeup=False)  # until should_stop

    app.control.enable_events()  # as Flower does when it starts watching
    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(1)
    build = client.build()
    job_id = _forged_job(client, build.fingerprint, build.dims, build.model)
    record_ = client.job(job_id).wait(timeout=JOB_TIMEOUT_S)
    deadline = time.monotonic() + 10
    while f"{job_id}.0" not in seen and time.monotonic() < deadline:
        time.sleep(0.1)
    receivers[0].should_stop = True
    thread.join(5)
    app.control.disable_events()
    assert record_.state.value == "failed"
    assert seen.get(f"{job_id}.0") == "task-failed"


def test_a_worker_without_its_artifact_exits_before_consuming(fleet: LocalFleet, tmp_path: Path) -> None:
    env = {**os.environ, **fleet.env, "EMBED_MODEL_DIR": str(tmp_path / "nothing-here")}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel=INFO", "-n", "broken@%h"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and time.monotonic() - started < 30
    assert "cannot serve" in result.stderr and "manifest.json missing" in result.stderr
    assert "ready." not in result.stderr


def _forged_job(client: EmbeddingClient, fingerprint: str, dims: int, model: str) -> str:
    import json
    import uuid

    from contract.celery_config import EMBED_TASK
    from contract.jobs import ChunkRef, JobRecord

    job_id = uuid.uuid4().hex
    now = time.time()
    record = JobRecord(job_id, 1, fingerprint, dims, model=model, chunks=1, created=now, updated=now)
    client.redis.hset(keys.job_key(job_id), mapping=record.to_redis())
    client.redis.hset(keys.job_payloads_key(job_id), "0", json.dumps({"texts": [1], "positions": [[0]]}))
    ref = ChunkRef(job_id, 0)
    queue = queue_name(model, fingerprint, Lane.BULK)
    client.celery.send_task(EMBED_TASK, kwargs=ref.to_kwargs(), queue=queue, task_id=ref.task_id)
    return job_id
