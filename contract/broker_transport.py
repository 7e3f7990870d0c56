"""kombu's Redis transport, guarded against entries of a queue that are not kombu messages.

A Redis list takes anything LPUSHed to it: a buggy producer, or anyone allowed to enqueue, can put
text that is not a kombu message in a lane. kombu's consumer raises on such an entry, Celery takes
that for a lost broker connection and restarts its consumer; a burst of them (the fault drills'
fuzz) crashed a worker's prefork pool. Here the entry, already popped, is dropped with an error
in the log (not its content: it may hold user text), and the consumer carries on.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)
MALFORMED = (ValueError, TypeError, KeyError, AttributeError)


class GuardedChannel(kombu_redis.Channel):
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
