"""Real parts: private redis-servers on free ports and a real prefork Celery worker with the model."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import pytest
from kombu import Connection

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
RABBITMQ_URL = os.environ.get("EMBED_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


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


@contextmanager
def _running_fleet(
    tmp_path_factory: pytest.TempPathFactory, name: str, artifact: Path, env: dict[str, str]
) -> Iterator[LocalFleet]:
    """Two prefork processes of the test settings plus `env`, stopped after use."""
    settings, fleet_environment = fleet_env({**TEST_ENV, "EMBED_MODEL_DIR": str(artifact), **env})
    log = tmp_path_factory.mktemp(name) / "worker.log"
    with LocalFleet(
        settings, fleet_environment, log
    ) as fleet:  # entered first: a failed start still stops it
        yield fleet.start()


@pytest.fixture(scope="session")
def fleet(
    broker_server: RedisServer,
    cache_server: RedisServer,
    static_artifact: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalFleet]:
    """Broker and cache on two Redis servers, as production may have them."""
    urls = {"EMBED_BROKER_URL": broker_server.url, "EMBED_CACHE_URL": cache_server.url}
    with _running_fleet(tmp_path_factory, "worker", static_artifact, urls) as fleet:
        yield fleet


@pytest.fixture(scope="session")
def one_redis_fleet(static_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    """Broker and cache on one Redis, as by default: clients store chunk messages with their job."""
    server = start_redis(tmp_path_factory.mktemp("one-redis"))
    urls = {"EMBED_BROKER_URL": server.url, "EMBED_CACHE_URL": server.url}
    try:
        with _running_fleet(tmp_path_factory, "one-redis-worker", static_artifact, urls) as fleet:
            yield fleet
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rabbit_fleet(
    cache_server: RedisServer, static_artifact: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFleet]:
    """RabbitMQ as the broker, the cache on Redis; a model name of its own, so its queues are its own."""
    try:
        with Connection(RABBITMQ_URL, connect_timeout=5) as connection:
            connection.connect()
    except OSError as exc:
        pytest.fail(f"no RabbitMQ at {RABBITMQ_URL} ({exc}): start it, or set EMBED_TEST_RABBITMQ_URL")
    env = {
        "EMBED_BROKER_URL": RABBITMQ_URL,
        "EMBED_CACHE_URL": cache_server.url,
        "EMBED_MODEL_NAME": f"minilm-rabbit-{uuid.uuid4().hex[:8]}",
    }
    with _running_fleet(tmp_path_factory, "rabbit", static_artifact, env) as fleet:
        yield fleet


@pytest.fixture
def client(fleet: LocalFleet) -> Iterator[EmbeddingClient]:
    with fleet.client() as client:
        yield client


FLEETS = {"redis": "fleet", "one-redis": "one_redis_fleet", "rabbitmq": "rabbit_fleet"}


@pytest.fixture(params=list(FLEETS))
def any_fleet(request: pytest.FixtureRequest) -> LocalFleet:
    """The fleet on each broker: a test that takes it runs on Redis (broker and cache apart, and on
    one server) and on RabbitMQ."""
    return cast(LocalFleet, request.getfixturevalue(FLEETS[request.param]))


@pytest.fixture
def any_client(any_fleet: LocalFleet) -> Iterator[EmbeddingClient]:
    with any_fleet.client() as client:
        yield client


@pytest.fixture(params=["redis", "one-redis"])
def redis_fleet(request: pytest.FixtureRequest) -> LocalFleet:
    """A Redis fleet with broker and cache apart, then on one server: the two ways clients publish."""
    return cast(LocalFleet, request.getfixturevalue(FLEETS[request.param]))


@pytest.fixture
def redis_client(redis_fleet: LocalFleet) -> Iterator[EmbeddingClient]:
    with redis_fleet.client() as client:
        yield client
