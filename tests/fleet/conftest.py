"""Real parts: private redis-servers on free ports and a real prefork Celery worker with the model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localfleet.fleet import LocalFleet, fleet_env
from localfleet.redis_server import RedisServer, start_redis
from producer import EmbeddingClient

TEST_ENV = {
    "EMBED_WORKER_CONCURRENCY": "2",
    "EMBED_INTRA_OP_THREADS": "1",
    "EMBED_CHUNK_SIZE": "16",
    "EMBED_MAX_CHUNK_ATTEMPTS": "3",
    "EMBED_RETRY_DELAY_S": "0.2",
    # Liveness on a test's time scale: a silent node is gone after 2 s, sweeps every second.
    "EMBED_HEARTBEAT_INTERVAL_S": "0.5",
    "EMBED_HEARTBEAT_TTL_S": "2",
    "EMBED_RECONCILE_INTERVAL_S": "1",
    "EMBED_RECONCILE_GRACE_S": "3",
    "EMBED_STALL_TIMEOUT_S": "10",
    "EMBED_REDIS_OUTAGE_S": "30",
}


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
    broker_server: RedisServer,
    cache_server: RedisServer,
    static_artifact: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalFleet]:
    """Two prefork processes; broker and cache on two Redis servers, as production may have them."""
    settings, env = fleet_env(
        {
            **TEST_ENV,
            "EMBED_BROKER_URL": broker_server.url,
            "EMBED_CACHE_URL": cache_server.url,
            "EMBED_MODEL_DIR": str(static_artifact),
        }
    )
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with LocalFleet(settings, env, log) as fleet:  # entered first: a failed start still stops the worker
        yield fleet.start()


@pytest.fixture
def client(fleet: LocalFleet) -> Iterator[EmbeddingClient]:
    with fleet.client() as client:
        yield client
