"""Bad input gets a clear error and loses nothing else; the workers stay up for the next job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from contract import keys
from contract.celery_config import EMBED_TASK
from contract.jobs import ChunkRef, JobRecord
from contract.lanes import Lane, queue_name
from contract.settings import FleetSettings
from localfleet.fleet import LocalFleet
from producer import EmbeddingClient, InvalidTextError, JobFailedError, JobTooLargeError
from tests.conftest import ROOT
from tests.fleet.test_jobs import JOB_TIMEOUT_S, unique_texts

pytestmark = pytest.mark.fleet


def test_an_empty_string_is_embedded(client: EmbeddingClient) -> None:
    vectors = client.embed(["", "not empty"], timeout=JOB_TIMEOUT_S)
    assert vectors.shape == (2, 384)
    assert abs(float(np.linalg.norm(vectors[0])) - 1.0) < 1e-4


def test_a_non_string_is_refused_naming_its_position(client: EmbeddingClient) -> None:
    with pytest.raises(InvalidTextError, match="position 2 is int"):
        client.submit(["fine", "also fine", 42])


def test_a_text_over_the_token_limit_is_truncated_and_counted(client: EmbeddingClient) -> None:
    long_text = " ".join(f"word{i}" for i in range(2_000)) + uuid.uuid4().hex
    texts = [long_text, "short", long_text]
    job = client.submit(texts)
    record = job.wait(timeout=JOB_TIMEOUT_S)
    assert record.truncated == 2
    assert job.result().shape == (3, 384)
    again = client.submit([long_text]).status()  # a cache hit still counts as truncated
    assert again.chunks == 0 and again.truncated == 1


def test_a_job_over_the_size_limit_is_refused_with_the_limit(fleet: LocalFleet) -> None:
    with fleet.client(max_job_texts=5) as small, pytest.raises(JobTooLargeError, match="limit of 5"):
        small.submit(unique_texts(6))


def test_invalid_utf8_in_an_input_file_is_refused_naming_the_line(fleet: LocalFleet, tmp_path: Path) -> None:
    path = tmp_path / "texts.txt"
    path.write_bytes(b"good line\nsecond line\nbad \xff\xfe line\n")
    result = run_cli(fleet, "submit", str(path))
    assert result.returncode == 2
    assert "line 3" in result.stderr and "UTF-8" in result.stderr


def test_a_forged_chunk_is_refused_and_fails_only_its_job(fleet: LocalFleet, client: EmbeddingClient) -> None:
    """A payload that a buggy or hostile producer wrote is counted failed with the reason, never retried."""
    build = client.build()
    job_id = uuid.uuid4().hex
    record = JobRecord(
        id=job_id,
        total=2,
        fingerprint=build.fingerprint,
        dims=build.dims,
        model=build.model,
        chunks=1,
        created=time.time(),
        updated=time.time(),
    )
    client.redis.hset(keys.job_key(job_id), mapping=record.to_redis())
    client.redis.hset(
        keys.job_payloads_key(job_id), "0", json.dumps({"texts": [12345, "fine"], "positions": [[0], [1]]})
    )
    ref = ChunkRef(job_id, 0)
    queue = queue_name(build.model, build.fingerprint, Lane.BULK)
    client.celery.send_task(EMBED_TASK, kwargs=ref.to_kwargs(), queue=queue, task_id=ref.task_id)
    final = client.job(job_id).wait(timeout=JOB_TIMEOUT_S)
    assert final.state.value == "failed" and final.counted == 1
    assert "refused: malformed payload (texts.0" in final.error
    assert client.redis.hget(keys.job_attempts_key(job_id), "failures:0") is None  # refused, not retried
    with pytest.raises(JobFailedError, match="refused"):
        client.job(job_id).result()
    assert client.embed(unique_texts(20), timeout=JOB_TIMEOUT_S).shape == (20, 384)


def test_a_pool_child_killed_mid_job_loses_nothing_and_counts_exactly(
    fleet: LocalFleet, client: EmbeddingClient
) -> None:
    """SIGKILL a real pool child: its chunk is redelivered (reject on worker lost), counted once."""
    texts = unique_texts(400)
    job = client.submit(texts)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while job.status().done == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(fleet.children()[0], signal.SIGKILL)
    record = job.wait(timeout=JOB_TIMEOUT_S)
    assert (record.state.value, record.done, record.failed) == ("done", 400, 0)
    assert client.redis.scard(keys.job_chunks_done_key(job.id)) == record.chunks
    assert job.result().shape == (400, 384)
    assert client.embed(unique_texts(10), timeout=JOB_TIMEOUT_S).shape == (10, 384)


def run_cli(fleet: LocalFleet, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli_with(fleet.settings, *args)


def run_cli_with(
    settings: FleetSettings, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m producer ...` in a process of its own, against the fleet's Redis servers."""
    env = {
        **os.environ,
        **(env or {}),
        "EMBED_BROKER_URL": settings.broker_url,
        "EMBED_CACHE_URL": settings.cache_url,
    }
    command = [sys.executable, "-m", "producer", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
