"""Whether a Redis list may have gained entries since this process last looked, known without a round
trip: Redis's client-side caching ("tracking") in its two-connection mode.

A bulk task looks for waiting interactive chunks before each engine run (worker.interjection). A
look is a round trip, and while the engine keeps every core busy redis-server waits for one: 1.6 %
of a bulk task's time on 2 cores (docs/benchmarks.md). So each look also reads the list's length
on a connection with tracking on: Redis then sends one invalidation to this process's listening
connection when the list next changes. Until one comes, a list the look found empty is
still empty, and checking costs a poll of a local socket.

Anything unexpected (tracking refused by an ACL or a proxy, the listener's connection lost) means a
look before every run again, as without the watch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import cast

import redis
from redis.client import PubSub
from redis.connection import AbstractConnection

log = logging.getLogger(__name__)
INVALIDATIONS = "__redis__:invalidate"  # the channel Redis sends a redirected client's invalidations on


class ListWatch:
    """Pops a list and tracks it; `quiet` says whether it is still as empty as the last pop left it."""

    def __init__(
        self, looker: redis.Redis, connect_listener: Callable[[], redis.Redis], setup_timeout_s: float
    ) -> None:
        """`looker`: a client of its own (tracking is per connection): only pops and tracked reads go
        through it. `connect_listener`: a client that does not retry, since a lost listener only
        means looking every time until the next pop opens another."""
        self._looker = looker
        self._connect_listener = connect_listener
        self._setup_timeout_s = setup_timeout_s
        self._listener: PubSub | None = None
        self._listener_id = 0
        self._listener_lost = False
        self._quiet: set[str] = set()
        self.refused = ""  # why Redis refused tracking: the watch then stays off

    def quiet(self, key: str) -> bool:
        """The list was empty after the last pop, and Redis has said nothing of it since."""
        if key in self._quiet and self._heard():
            self._quiet.clear()
        return key in self._quiet

    def pop(self, key: str, count: int) -> list[bytes]:
        """RPOP up to `count` entries, in the round trip that asks Redis to say when the list changes."""
        self._quiet.discard(key)
        self._heard()  # what came since: at most one invalidation is owed per tracked read
        listener_id = self._listen()
        pipe = self._looker.pipeline(transaction=False)
        if listener_id:
            pipe.client_tracking_on(clientid=listener_id, noloop=True)  # each time: the looker may reconnect
        pipe.rpop(key, count)
        pipe.llen(key)  # a read: from now on, Redis tracks the key for this process
        replies = pipe.execute(raise_on_error=False)
        if listener_id and isinstance(replies[0], Exception):
            self._tracking_failed(replies[0])
        popped, length = replies[-2:]
        if isinstance(popped, Exception):
            raise popped
        if self._listener_id and length == 0:  # still listening: tracking was not refused or lost
            self._quiet.add(key)
        return cast(list[bytes], popped or [])

    def stirred(self, key: str) -> None:
        """This process changed the list itself (say, put entries back): look again next time."""
        self._quiet.discard(key)

    def _listen(self) -> int:
        """The listening connection's client id, opened when first needed; 0 where there is none."""
        if self.refused:
            return 0
        if self._listener is None:
            try:
                self._listener, self._listener_id = self._open_listener()
            except redis.ResponseError as exc:
                self._refuse(exc)
            except redis.RedisError as exc:
                log.warning("no invalidation listener this time (%s): looking before every run", exc)
        return self._listener_id

    def _open_listener(self) -> tuple[PubSub, int]:
        listener = self._connect_listener().pubsub()
        try:
            listener.execute_command("CLIENT", "ID")
            reply = listener.parse_response(block=False, timeout=self._setup_timeout_s)
            if reply is None:
                raise redis.TimeoutError("no reply to CLIENT ID")
            client_id = int(reply)
            connection = cast(AbstractConnection, listener.connection)
            connection.register_connect_callback(self._reconnected)
            listener.subscribe(INVALIDATIONS)
            listener.get_message(timeout=self._setup_timeout_s)  # the confirmation: listening from here on
        except Exception:
            listener.close()
            raise
        return listener, client_id

    def _heard(self) -> bool:
        """Anything on the listener (an invalidation, or a lost connection: a change either way),
        consumed; True where there is no listener."""
        listener = self._listener
        if listener is None:
            return True
        connection = listener.connection
        heard = False
        try:
            while connection is not None and connection.can_read(timeout=0):  # may reconnect
                heard = True
                listener.get_message(timeout=0)
        except (redis.RedisError, OSError):
            self._listener_lost = True
        if self._listener_lost:  # Redis stopped sending to the old connection's id
            self._close_listener()
            return True
        return heard

    def _reconnected(self, _connection: AbstractConnection) -> None:
        self._listener_lost = True

    def _tracking_failed(self, exc: Exception) -> None:
        """Refused for good (an ACL, a command a proxy lacks), or a listener Redis no longer knows."""
        if isinstance(exc, redis.exceptions.NoPermissionError) or "unknown" in str(exc).lower():
            self._refuse(exc)
        else:
            self._close_listener()

    def _refuse(self, exc: Exception) -> None:
        self.refused = str(exc)
        log.warning("Redis refused client tracking (%s): looking for waiting chunks before every run", exc)
        self._close_listener()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        self._listener_id, self._listener_lost = 0, False
        self._quiet.clear()
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.close()
