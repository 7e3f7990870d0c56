"""Chunk messages stored with their job in one step, where the broker is the cache's Redis.

Celery's `send_task` costs a producer about 0.23 ms of CPU and a round trip per chunk (routing,
declaring, kombu's retrying publish): as much as all the rest of a 1-text submit. What it leaves
in Redis is one LPUSH of Celery's task message in kombu's envelope. The same entry is built here
from the same parts: Celery's `create_task_message`, kombu's serializer and `prepare_message`, and
kombu's channel routing it into a publish batch (the hook kombu's `Producer.batch` uses) that
keeps the entry instead of sending it. submit_job.lua pushes the entries as it stores the job: a
submit is one round trip, and a job is never stored without its messages, nor queued without its
record.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery
from kombu.serialization import dumps

from contract.celery_config import EMBED_TASK
from contract.jobs import NO_ARGS, ChunkRef
from contract.lanes import queue_name
from contract.redis_connection import REDIS_SCHEMES
from contract.settings import FleetSettings
from producer.submission import PreparedJob

PERSISTENT = 2  # AMQP delivery mode, as Celery sets it for its default queues
DEFAULT_EXCHANGE = ""  # Celery sends to a named queue through the default (direct) exchange


class _Collected:
    """kombu's publish-batch interface (`add(command, *args)`): keeps the entry kombu would LPUSH."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.entries: list[bytes] = []

    def add(self, name: str, key: str, *args: Any) -> None:
        if name != "lpush" or key != self.queue:
            raise RuntimeError(
                f"kombu would {name.upper()} {key!r} to publish to {self.queue!r}: queues with options "
                "(an expiry, priorities) are not supported here; use a broker apart from the cache"
            )
        self.entries.extend(arg if isinstance(arg, bytes) else str(arg).encode() for arg in args)


class QueueEntries:
    """A job's chunk messages, as entries for the broker's own Redis lists."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._connection: Any = None
        self._channel: Any = None
        self._lock = threading.Lock()

    @staticmethod
    def usable(settings: FleetSettings) -> bool:
        """Only where the broker is the very Redis (and database) that stores the jobs."""
        return settings.broker_url == settings.cache_url and settings.broker_url.startswith(REDIS_SCHEMES)

    @property
    def opened(self) -> bool:
        return self._channel is not None

    def channel(self) -> Any:
        """kombu's channel of the broker connection, opened once (it pings Redis) and kept for its routing."""
        with self._lock:
            if self._channel is None:
                self._connection = self._connection or self.app.connection_for_write()
                self._channel = self._connection.default_channel
            return self._channel

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
            self._connection = self._channel = None

    def entries(self, job: PreparedJob) -> list[bytes]:
        """One entry per chunk of `job`, for its lane's list (submit_job.lua pushes them)."""
        record = job.record
        queue = queue_name(record.model, record.fingerprint, record.lane)
        return [self.entry(ref, queue) for ref in job.refs()]

    def entry(self, ref: ChunkRef, queue: str) -> bytes:
        """What Celery's send_task would LPUSH to `queue` for this chunk."""
        channel = self.channel()
        headers, properties, body, _ = self.app.amqp.create_task_message(
            ref.task_id,
            EMBED_TASK,
            (),
            ref.to_kwargs(),
            reply_to=self.app.thread_oid,
            argsrepr=NO_ARGS,
            kwargsrepr=ref.summary,
            ignore_result=None,  # as send_task leaves it: the task's own setting decides
        )
        headers.update(ref.headers())
        properties["delivery_mode"] = PERSISTENT
        content_type, encoding, data = dumps(body, serializer=self.app.conf.task_serializer)
        message = channel.prepare_message(data, 0, content_type, encoding, headers, properties)
        collected = _Collected(queue)
        channel.basic_publish(message, DEFAULT_EXCHANGE, queue, _publish_batch=collected)
        (entry,) = collected.entries
        return entry
