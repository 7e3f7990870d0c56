"""Redis ACL users (deploy/redis/users.acl): the fleet runs end to end with a producer, a worker and
a Flower user, and each is refused what it must not do."""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from localfleet.fleet import LocalFleet, fleet_env
from localfleet.redis_server import RedisServer, free_port, start_redis
from tests.conftest import ROOT
from tests.fleet.conftest import TEST_ENV
from tests.fleet.test_jobs import JOB_TIMEOUT_S, unique_texts

pytestmark = pytest.mark.fleet

ACL_FILE = ROOT / "deploy" / "redis" / "users.acl"
USERS = ("producer", "worker", "flower")


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    return {user: secrets.token_hex(12) for user in (*USERS, "admin")}


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory, passwords: dict[str, str]) -> Iterator[RedisServer]:
    """The shipped ACL file, rendered with test passwords, plus an admin user for the harness only."""
    text = ACL_FILE.read_text()
    for user in USERS:
        text = text.replace(f"${{EMBED_{user.upper()}_PASSWORD}}", passwords[user])
    text += f"user admin on >{passwords['admin']} ~* &* +@all\nuser default off\n"
    workdir = tmp_path_factory.mktemp("acl-redis")
    (workdir / "users.acl").write_text(text)
    server = start_redis(
        workdir,
        extra_args=["--aclfile", str(workdir / "users.acl")],
        password=passwords["admin"],
        username="admin",
    )
    yield server
    server.stop()


def url(server: RedisServer, user: str, passwords: dict[str, str]) -> str:
    return f"redis://{user}:{passwords[user]}@127.0.0.1:{server.port}/0"


def as_user(server: RedisServer, user: str, passwords: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(url(server, user, passwords))


def test_the_fleet_runs_with_separate_users(
    acl_server: RedisServer, passwords: dict[str, str], static_artifact: Path, tmp_path: Path
) -> None:
    worker_url = url(acl_server, "worker", passwords)
    settings, env = fleet_env(
        {**TEST_ENV, "EMBED_BROKER_URL": worker_url, "EMBED_MODEL_DIR": str(static_artifact)}
    )
    flower_port = free_port()
    flower_env = {"EMBED_BROKER_URL": url(acl_server, "flower", passwords), "FLOWER_UNAUTHENTICATED_API": "1"}
    with LocalFleet(settings, env, tmp_path / "worker.log") as fleet:
        fleet.start(flower_port=flower_port, flower_env=flower_env)
        producer_url = url(acl_server, "producer", passwords)
        with fleet.client(broker_url=producer_url, cache_url=producer_url) as client:
            assert client.embed(unique_texts(10), timeout=JOB_TIMEOUT_S).shape == (10, 384)
            job = client.submit(unique_texts(400))
            assert job.wait(timeout=JOB_TIMEOUT_S).state.value == "done" and job.result().shape == (400, 384)
            assert client.submit(unique_texts(3_000)).cancel().state.value == "cancelled"
        lanes = _flower_queue_lengths(flower_port)
    denied = as_user(acl_server, "admin", passwords).acl_log(100)
    assert not denied, denied
    assert any(name.endswith(".interactive") for name in lanes) and any(
        name.endswith(".bulk") for name in lanes
    )


def test_a_producer_cannot_write_a_vector(acl_server: RedisServer, passwords: dict[str, str]) -> None:
    producer = as_user(acl_server, "producer", passwords)
    assert producer.mget(["emb:fp:0"]) == [None]  # reading vectors is allowed
    for attempt in (
        lambda: producer.set("emb:fp:0", b"forged"),
        lambda: producer.delete("emb:fp:0"),
        lambda: producer.sadd("emb:fp:truncated", "x"),
        lambda: producer.hset("fleet:build:m:fp", "dims", 1),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    # EVAL on emb:* keys is allowed (touch_vectors.lua); Redis checks the commands inside as well
    for script in ("return redis.call('SET', KEYS[1], 'forged')", "return redis.call('DEL', KEYS[1])"):
        with pytest.raises(redis.exceptions.ResponseError, match="can't access"):
            producer.eval(script, 1, "emb:fp:0")
    assert producer.mget(["emb:fp:0"]) == [None]


def test_flower_cannot_enqueue_or_touch_vectors_and_jobs(
    acl_server: RedisServer, passwords: dict[str, str]
) -> None:
    flower = as_user(acl_server, "flower", passwords)
    assert flower.llen("embed.m.fp.bulk") == 0  # reading queue lengths is allowed
    for attempt in (
        lambda: flower.lpush("embed.m.fp.bulk", "x"),
        lambda: flower.get("emb:fp:0"),
        lambda: flower.hgetall("job:x"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()


@pytest.mark.parametrize("user", USERS)
def test_no_user_may_flush_configure_or_list_keys(
    acl_server: RedisServer, passwords: dict[str, str], user: str
) -> None:
    client = as_user(acl_server, user, passwords)
    for attempt in (
        client.flushall,
        lambda: client.config_get("*"),
        lambda: client.keys("*"),
        client.flushdb,
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()


def _flower_queue_lengths(port: int) -> dict[str, int]:
    """The queue lengths Flower shows, once it has asked the workers which queues they consume."""
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/workers?refresh=1", timeout=10).close()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/queues/length", timeout=10) as reply:
                found = json.load(reply).get("active_queues", [])
            if any(queue["name"].startswith("embed.") for queue in found):
                return {queue["name"]: int(queue.get("messages", 0)) for queue in found}
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("Flower did not list the queues")
        time.sleep(0.5)
