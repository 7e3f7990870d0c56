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


def test_a_channel_closed_after_its_transport_still_closes_without_an_attribute_error(
    connection: Connection,
) -> None:
    """A Redis restart can close the transport under a channel that holds unacked deliveries; kombu
    then raised AttributeError ('NoneType' has no 'hostname', kombu #582 and #970) from the
    channel's close, which Celery's consumer takes for an unrecoverable error: the worker died."""
    queue = connection.SimpleQueue("test.transport.closed-under")
    queue.put({"n": 1})
    channel = queue.channel
    assert channel.basic_get(queue.queue.name, no_ack=False) is not None  # delivered, not acked
    channel._disconnect_pools()  # what a lost connection does
    connection.transport.client = None  # what a close of the transport leaves behind
    connection.maybe_close_channel(channel)  # connection errors are ignored; AttributeError was not
