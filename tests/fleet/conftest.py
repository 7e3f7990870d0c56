"""Real parts: private redis-servers on free ports and a real prefork Celery worker with the model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from contract.settings import FleetSettings
from producer import EmbeddingClient
from producer.local_redis import RedisServer, start_redis
from tests.conftest import ROOT

WORKER_PROCESSES = 2
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
TEST_ENV = {
    "EMBED_WORKER_CONCURRENCY": str(WORKER_PROCESSES),
    "EMBED_INTRA_OP_THREADS": "1",
    "EMBED_CHUNK_SIZE": "16",
    "EMBED_MAX_CHUNK_ATTEMPTS": "3",
    "EMBED_RETRY_DELAY_S": "0.2",
}


@dataclass
class Fleet:
    settings: FleetSettings
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, **overrides: object) -> EmbeddingClient:
        return EmbeddingClient(self.settings.model_copy(update=overrides))

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel=INFO"]
    command += ["--pool=prefork", "--without-gossip", "--without-mingle", "-n", f"test-{uuid.uuid4().hex[:6]}@%h"]
    with log.open("wb") as sink:
        return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=sink, stderr=sink)


def wait_ready(fleet: Fleet) -> None:
    """Ready when the worker answers a ping and every pool child has opened its engine."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    with fleet.client() as client:
        while time.monotonic() < deadline:
            if fleet.process.poll() is not None:
                raise RuntimeError(f"worker exited: {fleet.log.read_text()[-3000:]}")
            if client.celery.control.ping(timeout=0.5) and fleet.log.read_text().count("engine ready") >= WORKER_PROCESSES:
                return
            time.sleep(0.2)
    raise RuntimeError(f"worker not ready after {READY_TIMEOUT_S}s: {fleet.log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def broker_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("broker"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cache_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("cache"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fleet(
    broker_server: RedisServer, cache_server: RedisServer, static_artifact: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    """Broker and cache on two Redis servers, as a production deployment may have them."""
    env = {
        **TEST_ENV,
        "EMBED_BROKER_URL": broker_server.url,
        "EMBED_CACHE_URL": cache_server.url,
        "EMBED_MODEL_DIR": str(static_artifact),
    }
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    settings = FleetSettings(**{key.removeprefix("EMBED_").lower(): value for key, value in env.items()})
    fleet = Fleet(settings, start_worker(env, log), log)
    try:
        wait_ready(fleet)
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def client(fleet: Fleet) -> Iterator[EmbeddingClient]:
    with fleet.client() as client:
        yield client
