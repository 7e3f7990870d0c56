"""How a waiting thread hears of a job's progress and end: Redis pub/sub, so it blocks instead of polling.

A wait on any job subscribes to the job's own channel for as long as it waits. A small job that a
thread submits only to wait on it (every `embed()` call) is cheaper: its record names the thread's
own channel, subscribed once for the thread's life, and the job's end is announced there too, with
the whole final record. Such a job costs no subscribe, no unsubscribe and no status read: half the
round trips of a 1-text job. The asyncio client does the same with one channel per client and a
reader task.

Pub/sub is at most once: a message lost with a dropped connection is made up for by the wait's
status read every EMBED_WAIT_POLL_S, and a dropped connection subscribes again on the next wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Protocol

import redis
import redis.asyncio as aioredis

from contract import keys
from contract.jobs import JobRecord, ended_record
from contract.redis_connection import as_text
from producer.job_rules import OUTAGE_BACKOFF_S

if TYPE_CHECKING:
    from producer.client import EmbeddingClient


class Watch(Protocol):
    heard_from_start: bool  # subscribed before the job was published: no status read needed first

    def wait(self, timeout: float) -> JobRecord | None:
        """Until an announcement or `timeout`: the ended record when one came, else None (read status)."""

    def close(self) -> None: ...


class JobChannelWatch:
    """The job's channel, on the calling thread's pub/sub connection (kept between waits: a new
    connection per wait costs more than the rest of a small job's round trip)."""

    heard_from_start = False

    def __init__(self, client: EmbeddingClient, job_id: str) -> None:
        self.client = client
        self.channel = keys.job_channel(job_id)
        self.pubsub: redis.client.PubSub | None = None
        self._open()  # before the caller's first status read, so no announcement falls between the two

    def wait(self, timeout: float) -> JobRecord | None:
        """After a lost connection, subscribe again and return at once."""
        if self.pubsub is None:
            time.sleep(min(timeout, OUTAGE_BACKOFF_S))
            self._open()
            return None
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                # Subscribe and unsubscribe confirmations come back as None: keep waiting past them.
                # So must a message of an earlier wait's channel, published before its unsubscribe
                # took effect and still buffered on this thread's connection.
                message = self.pubsub.get_message(timeout=left)
                if message is not None and as_text(message["channel"]) == self.channel:
                    return ended_record(message["data"])
        except (redis.ConnectionError, redis.TimeoutError):
            self._drop()
        return None

    def close(self) -> None:
        if self.pubsub is not None:
            try:
                self.pubsub.unsubscribe(self.channel)
            except redis.RedisError:
                self._drop()
            self.pubsub = None

    def _open(self) -> None:
        try:
            self.pubsub = self.client.thread_pubsub()
            self.pubsub.subscribe(self.channel)
        except (redis.ConnectionError, redis.TimeoutError):
            self._drop()

    def _drop(self) -> None:
        self.client.drop_thread_pubsub()
        self.pubsub = None


class WaiterChannel:
    """One thread's own channel, subscribed once; `for_job` gives the Watch of one job announced there.

    Only the thread that owns it may use it (redis-py's PubSub is not thread-safe).
    """

    def __init__(self, client: redis.Redis, confirm_timeout_s: float) -> None:
        self.client = client
        self.confirm_timeout_s = confirm_timeout_s
        self.channel = keys.waiter_channel(uuid.uuid4().hex)
        self.pubsub: redis.client.PubSub | None = None

    def ready(self) -> bool:
        """Subscribed, the subscription confirmed: announcements made from now on reach this thread.
        False where Redis cannot be reached (the caller submits without a waiter channel)."""
        if self.pubsub is not None:
            return True
        pubsub = self.client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            deadline = time.monotonic() + self.confirm_timeout_s
            while (left := deadline - time.monotonic()) > 0:
                message = pubsub.get_message(timeout=left)
                if message is not None and message["type"] == "subscribe":
                    self.pubsub = pubsub
                    return True
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        with contextlib.suppress(redis.RedisError):
            pubsub.close()
        return False

    def for_job(self, job_id: str) -> _WaiterWatch:
        return _WaiterWatch(self, job_id)

    def next_end(self, job_id: str, timeout: float) -> JobRecord | None:
        """The ended record of `job_id` if announced within `timeout`; other jobs' ends (of waits that
        timed out earlier) are dropped. None after a lost connection too: the caller reads status."""
        if self.pubsub is None:
            time.sleep(min(timeout, OUTAGE_BACKOFF_S))
            self.ready()
            return None
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                message = self.pubsub.get_message(timeout=left)
                heard = message is not None and message["type"] == "message"
                record = ended_record(message["data"]) if heard else None
                if record is not None and record.id == job_id:
                    return record
        except (redis.ConnectionError, redis.TimeoutError):
            self.close()
        return None

    def close(self) -> None:
        pubsub, self.pubsub = self.pubsub, None
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                pubsub.close()


class _WaiterWatch:
    heard_from_start = True

    def __init__(self, channel: WaiterChannel, job_id: str) -> None:
        self.channel = channel
        self.job_id = job_id

    def wait(self, timeout: float) -> JobRecord | None:
        return self.channel.next_end(self.job_id, timeout)

    def close(self) -> None:
        """The channel stays subscribed for the thread's next job."""


class AsyncWaiterChannel:
    """The asyncio client's own channel, subscribed once: a reader task hands each ended record to
    the wait of its job (a future per job, registered before the job is published)."""

    def __init__(self, client: aioredis.Redis, confirm_timeout_s: float, read_timeout_s: float) -> None:
        self.client = client
        self.confirm_timeout_s = confirm_timeout_s
        self.read_timeout_s = read_timeout_s
        self.channel = keys.waiter_channel(uuid.uuid4().hex)
        self._reader: asyncio.Task[None] | None = None
        self._ends: dict[str, asyncio.Future[JobRecord]] = {}
        self._subscribing = asyncio.Lock()  # concurrent submits share one subscription

    async def ready(self) -> bool:
        """Subscribed and confirmed, with a reader running; False where Redis cannot be reached."""
        async with self._subscribing:
            if self._reader is not None and not self._reader.done():
                return True
            return await self._subscribe()

    async def _subscribe(self) -> bool:
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            deadline = time.monotonic() + self.confirm_timeout_s
            while (left := deadline - time.monotonic()) > 0:
                message = await pubsub.get_message(timeout=left)
                if message is not None and message["type"] == "subscribe":
                    self._reader = asyncio.create_task(self._read(pubsub))
                    return True
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        with contextlib.suppress(redis.RedisError):
            await pubsub.aclose()
        return False

    def expect(self, job_id: str) -> asyncio.Future[JobRecord]:
        future: asyncio.Future[JobRecord] = asyncio.get_running_loop().create_future()
        self._ends[job_id] = future
        return future

    def forget(self, job_id: str) -> None:
        self._ends.pop(job_id, None)

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._reader = None

    async def _read(self, pubsub: aioredis.client.PubSub) -> None:
        """Until the connection fails (waits then end by reading status; the next submit subscribes again)."""
        try:
            while True:
                message = await pubsub.get_message(True, timeout=self.read_timeout_s)
                if message is None or (record := ended_record(message["data"])) is None:
                    continue
                future = self._ends.pop(record.id, None)
                if future is not None and not future.done():
                    future.set_result(record)
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        finally:
            with contextlib.suppress(redis.RedisError):
                await pubsub.aclose()


class AsyncJobChannelWatch:
    """The job's channel, on a pub/sub connection of its own for this wait."""

    heard_from_start = False

    def __init__(self, client: aioredis.Redis, job_id: str) -> None:
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.channel = keys.job_channel(job_id)

    async def open(self) -> None:
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            await self.pubsub.subscribe(self.channel)  # else status reads still end the wait

    async def wait(self, timeout: float) -> JobRecord | None:
        """Until an announcement or `timeout` (subscribe confirmations do not count): the ended record
        when the announcement carried it, else None (the caller reads status)."""
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                if message is not None:
                    return ended_record(message["data"])
        except (redis.ConnectionError, redis.TimeoutError):
            await asyncio.sleep(min(timeout, OUTAGE_BACKOFF_S))
        return None

    async def close(self) -> None:
        await self.pubsub.aclose()


class AsyncWaiterWatch:
    """The job's end as the client's own channel hands it over."""

    heard_from_start = True

    def __init__(self, job_id: str, waiter: AsyncWaiterChannel, end: asyncio.Future[JobRecord]) -> None:
        self.job_id = job_id
        self.waiter = waiter
        self.end = end

    async def open(self) -> None:
        """Subscribed before the job was published."""

    async def wait(self, timeout: float) -> JobRecord | None:
        try:  # shielded: a wait that times out leaves the future for the next one
            return await asyncio.wait_for(asyncio.shield(self.end), timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            return None

    async def close(self) -> None:
        self.waiter.forget(self.job_id)
