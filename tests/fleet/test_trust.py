"""The worker trusts no producer, and no user text or secret leaves through monitoring or logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract import keys
from contract.celery_config import EMBED_TASK
from contract.digest import digest_for
from contract.jobs import ChunkRef, JobRecord, pack_digests
from contract.lanes import Lane, queue_name
from localfleet.fleet import LocalFleet, fleet_env
from localfleet.redis_server import start_redis
from producer import EmbeddingClient
from tests.conftest import ROOT
from tests.fleet.conftest import TEST_ENV
from tests.fleet.test_bad_input import run_cli_with
from tests.fleet.test_jobs import JOB_TIMEOUT_S, unique_texts
from worker.engine import EmbeddingEngine

pytestmark = pytest.mark.fleet


def forge(
    client: EmbeddingClient, digests_of: list[str], texts: list[object], positions: list[object]
) -> str:
    """A job as a buggy or hostile producer might write it, straight into Redis, and its message."""
    build = client.build()
    job_id = uuid.uuid4().hex
    now = time.time()
    record = JobRecord(
        job_id,
        len(digests_of),
        build.fingerprint,
        build.dims,
        model=build.model,
        chunks=1,
        created=now,
        updated=now,
    )
    client.redis.hset(keys.job_key(job_id), mapping=record.to_redis())
    digests = [digest_for(build.fingerprint, text) for text in digests_of]
    client.redis.set(keys.job_digests_key(job_id), pack_digests(digests))
    client.redis.hset(
        keys.job_payloads_key(job_id), "0", json.dumps({"texts": texts, "positions": positions})
    )
    ref = ChunkRef(job_id, 0)
    queue = queue_name(build.model, build.fingerprint, Lane.BULK)
    client.celery.send_task(EMBED_TASK, kwargs=ref.to_kwargs(), queue=queue, **ref.send_options())
    return job_id


def test_a_forged_digest_cannot_change_what_another_texts_key_returns(
    client: EmbeddingClient, static_artifact: Path
) -> None:
    victim, attacker = unique_texts(2)
    fingerprint = client.build().fingerprint
    victim_key = keys.vector_key(fingerprint, digest_for(fingerprint, victim))
    job_id = forge(client, digests_of=[victim], texts=[attacker], positions=[[0]])
    record = client.job(job_id).wait(timeout=JOB_TIMEOUT_S)
    assert record.state.value == "failed" and "do not match the job's inputs at positions 0" in record.error
    assert client.redis.exists(victim_key) == 0  # nothing was written under the victim's key
    attacker_key = keys.vector_key(fingerprint, digest_for(fingerprint, attacker))
    assert client.redis.exists(attacker_key) == 0
    engine = EmbeddingEngine(static_artifact)
    vector = client.embed([victim], timeout=JOB_TIMEOUT_S)
    assert float(np.dot(vector[0], engine.embed([victim]).vectors[0])) >= 0.9999


@pytest.mark.parametrize(
    ("texts", "positions", "reason"),
    [
        (["a"], [[3]], "outside the job's 1 inputs"),
        (["a"], [[-1]], "outside"),
        (["a", "a"], [[0], [0]], "named twice"),
        (["a"], [[]], "a text with no input position"),
        (["a"], [[0], [1]], "1 texts but 2 position lists"),
        ([None], [[0]], "malformed payload"),
    ],
)
def test_malformed_payloads_are_counted_failed_with_the_reason(
    client: EmbeddingClient, texts: list[object], positions: list[object], reason: str
) -> None:
    job_id = forge(client, digests_of=["a"], texts=texts, positions=positions)
    record = client.job(job_id).wait(timeout=JOB_TIMEOUT_S)
    assert record.state.value == "failed" and reason in record.error and record.counted == 1


def test_an_oversized_payload_is_refused_by_the_worker(client: EmbeddingClient, fleet: LocalFleet) -> None:
    huge = "x" * (fleet.settings.max_payload_bytes + 10)
    job_id = forge(client, digests_of=[huge], texts=[huge], positions=[[0]])
    record = client.job(job_id).wait(timeout=JOB_TIMEOUT_S)
    assert record.state.value == "failed" and "over EMBED_MAX_PAYLOAD_BYTES" in record.error


def test_no_text_reaches_inspect_events_or_logs(fleet: LocalFleet, client: EmbeddingClient) -> None:
    texts = [f"confidential-{uuid.uuid4().hex} {text}" for text in unique_texts(3_000)]
    markers = [text.split()[0] for text in texts]
    seen: list[str] = []
    app = client.celery
    app.control.enable_events()
    listener = threading.Thread(target=_capture_events, args=(app, seen), daemon=True)
    listener.start()
    time.sleep(0.5)
    job = client.submit(texts)
    while job.status().done < 500:
        time.sleep(0.01)
    env = {**os.environ, **fleet.env}
    active = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "inspect", "active", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    job.wait(timeout=JOB_TIMEOUT_S)
    time.sleep(1)
    app.control.disable_events()
    events = "\n".join(seen)
    assert "embedfleet.embed_chunk" in active.stdout or '"' in active.stdout
    assert f"job {job.id}" in events  # the summary Flower shows: job and chunk
    for where, text in (
        ("inspect active", active.stdout),
        ("events", events),
        ("worker log", fleet.worker.log_text()),
    ):
        leaked = [marker for marker in markers if marker in text]
        assert not leaked, f"{len(leaked)} texts leaked into {where}"


def test_a_password_never_reaches_logs_errors_or_cli_output(tmp_path: Path, static_artifact: Path) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    server = start_redis(tmp_path / "redis", password=password)
    url = server.url
    settings, env = fleet_env({**TEST_ENV, "EMBED_BROKER_URL": url, "EMBED_MODEL_DIR": str(static_artifact)})
    outputs: list[str] = []
    try:
        with LocalFleet(settings, env, tmp_path / "worker.log") as fleet:
            fleet.start()
            with fleet.client() as client:
                assert client.embed(unique_texts(3), timeout=JOB_TIMEOUT_S).shape == (3, 384)
            source = tmp_path / "texts.txt"
            source.write_text("one\ntwo\n")
            outputs.append(run_cli_with(settings, "submit", str(source), "--wait").stdout)
            wrong = settings.model_copy(
                update={"broker_url": url.replace(password, "wrong" + password[::-1])}
            )
            for result in (
                run_cli_with(wrong, "submit", str(source)),
                run_cli_with(settings, "status", "nope"),
            ):
                outputs += [result.stdout, result.stderr]
            reconcile = subprocess.run(
                [sys.executable, "-m", "worker", "reconcile"],
                cwd=ROOT,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            outputs += [reconcile.stdout, reconcile.stderr]
            outputs.append(fleet.worker.log_text())
    finally:
        server.stop()
    assert "***" in "".join(outputs)  # the URL is shown, masked
    assert not [text for text in outputs if password in text or password[::-1] in text]


def _capture_events(app: Any, seen: list[str]) -> None:
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(
            connection, handlers={"*": lambda event: seen.append(json.dumps(event))}
        )
        try:
            receiver.capture(limit=None, timeout=30, wakeup=False)
        except Exception:
            return
