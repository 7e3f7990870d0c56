"""The fleet's Redis transport against a real redis-server through kombu: one client per channel,
following the channel's pool (the guard against foreign queue entries is a drill: tests/drills)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kombu import Connection

from contract import broker_transport
from localfleet.redis_server import RedisServer

pytestmark = pytest.mark.fleet


@pytest.fixture
def connection(broker_server: RedisServer) -> Iterator[Connection]:
    broker_transport.install()
    with Connection(broker_server.url) as connection:
        yield connection


def test_a_channel_keeps_one_client_and_builds_a_new_one_on_a_new_pool(connection: Connection) -> None:
    channel = connection.default_channel
    assert isinstance(channel, broker_transport.GuardedChannel)
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
        assert first.ping()
    channel._disconnect_pools()  # what kombu does after a fork and on a failed connection
    with channel.conn_or_acquire() as fresh:
        assert fresh is not first
        assert fresh.connection_pool is channel.pool
        assert fresh.ping()
    with channel.conn_or_acquire(client=first) as given:
        assert given is first
