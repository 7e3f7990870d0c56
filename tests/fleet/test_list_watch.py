"""The watch on a queue's list against a real redis-server: a list a pop left empty stays quiet until
Redis says it changed, and every doubt (entries left, a lost listener, tracking refused) means
looking again."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import redis

from contract.redis_connection import connect
from contract.settings import FleetSettings
from localfleet.redis_server import RedisServer, start_redis
from tests.fleet.test_jobs import wait_for
from worker.list_watch import ListWatch

pytestmark = pytest.mark.fleet

QUEUE = "watched-queue"
SETUP_TIMEOUT_S = 5.0
NOTICE_TIMEOUT_S = 5.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of its own: these tests kill connections and change users."""
    running = start_redis(tmp_path, persistent=False)
    yield running
    running.stop()


def watch_of(url: str) -> ListWatch:
    settings = FleetSettings(redis_outage_s=1)
    return ListWatch(connect(url, settings), partial(connect, url, settings, outage_s=0), SETUP_TIMEOUT_S)


def test_a_list_a_pop_left_empty_stays_quiet_until_another_client_pushes(server: RedisServer) -> None:
    watch, other = watch_of(server.url), redis.Redis.from_url(server.url)

    assert watch.pop(QUEUE, 8) == []
    assert watch.quiet(QUEUE)
    assert watch.quiet(QUEUE), "nothing changed: still quiet"

    other.lpush(QUEUE, b"entry")
    wait_for(lambda: not watch.quiet(QUEUE), NOTICE_TIMEOUT_S)
    assert watch.pop(QUEUE, 8) == [b"entry"]
    assert watch.quiet(QUEUE), "armed again by the pop that emptied it"


def test_entries_left_or_put_back_mean_looking_again(server: RedisServer) -> None:
    watch, other = watch_of(server.url), redis.Redis.from_url(server.url)
    other.lpush(QUEUE, b"a", b"b", b"c")

    assert watch.pop(QUEUE, 1) == [b"a"]
    assert not watch.quiet(QUEUE), "two entries are still there"
    assert watch.pop(QUEUE, 8) == [b"b", b"c"]
    assert watch.quiet(QUEUE)

    other.rpush(QUEUE, b"c")  # as RedisListSource puts back what does not fit
    watch.stirred(QUEUE)
    assert not watch.quiet(QUEUE)


def test_a_lost_listener_means_looking_again_then_a_new_listener(server: RedisServer) -> None:
    watch, other = watch_of(server.url), redis.Redis.from_url(server.url)
    watch.pop(QUEUE, 8)
    assert watch.quiet(QUEUE)

    other.client_kill_filter(_type="pubsub")
    wait_for(lambda: not watch.quiet(QUEUE), NOTICE_TIMEOUT_S)

    watch.pop(QUEUE, 8)  # opens a listener under a new client id
    assert watch.quiet(QUEUE)
    other.lpush(QUEUE, b"entry")
    wait_for(lambda: not watch.quiet(QUEUE), NOTICE_TIMEOUT_S)
    assert watch.pop(QUEUE, 8) == [b"entry"]


def test_tracking_refused_by_an_acl_means_looking_every_time(server: RedisServer) -> None:
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser(
        "no-tracking",
        enabled=True,
        passwords=["+secret"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-client"],
    )
    watch = watch_of(f"redis://no-tracking:secret@127.0.0.1:{server.port}/0")
    admin.lpush(QUEUE, b"entry")

    assert watch.pop(QUEUE, 8) == [b"entry"], "the pop still works"
    assert watch.refused
    assert not watch.quiet(QUEUE)
    assert watch.pop(QUEUE, 8) == []
    assert not watch.quiet(QUEUE)
