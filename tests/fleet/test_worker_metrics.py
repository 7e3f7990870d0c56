"""A worker node's /metrics (EMBED_METRICS_PORT): every pool process's counters and the fleet's
queue gauges, moving during a job; and its liveness command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from localfleet.fleet import LocalFleet
from localfleet.redis_server import free_port
from tests.conftest import ROOT
from tests.fleet.test_gateway import _sample
from tests.fleet.test_jobs import JOB_TIMEOUT_S, unique_texts

pytestmark = pytest.mark.fleet


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def test_worker_metrics_move_during_a_job(fleet: LocalFleet, tmp_path: Path) -> None:
    port = free_port()
    env = {**fleet.env, "EMBED_METRICS_PORT": str(port)}
    with LocalFleet(fleet.settings, env, tmp_path / "metrics-node.log") as node:
        node.start()
        with node.client() as client:
            job = client.submit(unique_texts(3_000), priority="bulk")
            depths = []
            while not job.status().state.finished:
                depths.append(_sample(scrape(port), "embedfleet_queue_depth{", 'lane="bulk"'))
                time.sleep(0.1)
            text = scrape(port)
        health = subprocess.run(
            [sys.executable, "-m", "worker", "health", "--node", node.worker.name],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert max(depths) > 0
    assert _sample(text, "embedfleet_chunks_total{", 'outcome="done"') > 0
    assert _sample(text, "embedfleet_texts_total{", 'source="embedded"') > 0
    assert "embedfleet_engine_batch_texts_bucket" in text and "embedfleet_jobs_running" in text
    assert health.returncode == 0 and "healthy" in health.stdout
    gone = subprocess.run(
        [sys.executable, "-m", "worker", "health", "--node", "celery@nowhere"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    assert gone.returncode == 1
