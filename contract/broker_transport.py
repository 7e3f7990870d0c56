"""kombu's Redis transport as the fleet runs it: guarded against queue entries that are not kombu
messages and against a channel closing after its transport, and one client object per channel.

A Redis list takes anything LPUSHed to it: a buggy producer, or anyone allowed to enqueue, can put
text that is not a kombu message in a lane. kombu's consumer raises on such an entry, Celery takes
that for a lost broker connection and restarts its consumer; a burst of them (the fault drills'
fuzz) crashed a worker's prefork pool. Here the entry, already popped, is dropped with an error
in the log (not its content: it may hold user text), and the consumer carries on.

kombu also builds a new redis.Redis (its ~170 response callbacks) for every publish, queue-length
read and ack outside the event loop: ~0.2 ms of CPU each, where a 1-text job costs its client
about 3 ms in all. The channel keeps one instead, on the same connection pool.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)
MALFORMED = (ValueError, TypeError, KeyError, AttributeError)


class GuardedChannel(kombu_redis.Channel):
    _sync_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client:
            yield client
            return
        pool = self.pool  # a new pool after a fork or a disconnect: then a new client for it
        if self._sync_client is None or self._sync_client.connection_pool is not pool:
            self._sync_client = self._create_client()
        yield self._sync_client

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """A connection error, not AttributeError, where the transport was closed under the channel.

        After a lost connection (a Redis restart) a channel may close after its transport did, with
        deliveries still unacked; kombu then reads the closed transport's settings and raises
        AttributeError (kombu #582, #970), which Celery's consumer takes for an unrecoverable error:
        the worker's main process exited. A connection error is what kombu ignores while closing,
        and the consumer connects again. (The unacked deliveries come back by the visibility timeout.)
        """
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection was closed under this channel")
        return dict(super()._connparams(asynchronous=asynchronous))

    def _disconnect_pools(self) -> None:
        self._sync_client = None  # it holds the old pool; the next call builds one on the new pool
        super()._disconnect_pools()

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))
        except MALFORMED as exc:
            log.error("dropped a queue entry that is not a kombu message (%s)", type(exc).__name__)
            raise kombu_redis.Empty() from exc


class GuardedRedisTransport(kombu_redis.Transport):
    Channel = GuardedChannel


GUARDED = f"{__name__}:GuardedRedisTransport"


def install() -> None:
    """Make redis:// and rediss:// URLs use the guarded transport in this process (kombu's registry).

    Registered under kombu's own scheme names, so URLs, Celery's banner and Flower's broker page
    still read redis://.
    """
    TRANSPORT_ALIASES.update(redis=GUARDED, rediss=GUARDED)
