"""Carrying waiting interactive chunks along: one engine run for many small requests.

Celery hands a pool process one message at a time, and a 1-text chunk alone wastes most of an
engine run. So a small task on the interactive lane also takes the small chunks waiting behind it
on the same queue, straight off the broker, oldest first, up to EMBED_GATHER_MAX_TEXTS texts in
all, and the runner embeds them together (docs/benchmarks.md compares this with the
alternatives). Each message's size header says how many texts it holds; the first that would not
fit goes back, in its place, so a big interactive job still spreads over every process. On Redis
one RPOP takes them off the list (kombu keeps a queue as a list); on RabbitMQ kombu's `Queue.get`
(basic_get) takes one at a time, acked once it fits, else rejected back to its place.

Taken messages leave the broker at once, so no ack is owed for them; the job protocol protects
them instead. The runner claims each one (a lease), checks and counts each one, and while they
run their references are noted under the carrier's task id: if the process dies, the main
process (worker.requests) counts a failure for each and publishes it again, so the chunks retry
apart and a poison text fails only its own job. If the whole host dies, the reconciler sends them
again, as it does for any chunk a dead node held.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import redis
from amqp.exceptions import AMQPError
from kombu import Connection, Queue
from kombu.exceptions import KombuError
from kombu.transport.virtual import Channel
from redis.client import Pipeline

from contract import keys
from contract.jobs import ChunkRef, ref_in, ref_of
from worker.list_watch import ListWatch

log = logging.getLogger(__name__)
BROKER_ERRORS = (OSError, KombuError, AMQPError)  # a lost connection, a failed reconnect, a channel error


class LaneSource(Protocol):
    def take(self, queue: str, budget: int, watched: bool = False) -> list[ChunkRef]:
        """Waiting chunks of `queue`, oldest first, up to `budget` texts, removed from the broker;
        `watched`: so that `quiet` can tell afterwards, without a round trip, whether more came."""

    def quiet(self, queue: str) -> bool:
        """`queue` is known to be as empty as the last watched take left it."""


class RedisListSource:
    """kombu's Redis transport: a queue is a list, consumers pop its right end. With a watch
    (worker.list_watch), Redis says when a list a take left empty gains entries."""

    def __init__(self, broker: redis.Redis, watch: ListWatch | None = None) -> None:
        self.broker = broker
        self.watch = watch

    def quiet(self, queue: str) -> bool:
        return self.watch is not None and self.watch.quiet(queue)

    def take(self, queue: str, budget: int, watched: bool = False) -> list[ChunkRef]:
        if watched and self.watch is not None:
            raws = self.watch.pop(queue, budget)
        else:
            raws = cast(list[bytes], self.broker.rpop(queue, budget) or [])
        taken: list[ChunkRef] = []
        for index, raw in enumerate(raws):
            ref = ref_of(raw)
            if ref is None or not 0 < ref.texts <= budget:
                self.broker.rpush(queue, *reversed(raws[index:]))  # back where they were, oldest last
                if self.watch is not None:
                    self.watch.stirred(queue)
                break
            taken.append(ref)
            budget -= ref.texts
        return taken


class AmqpSource:
    """RabbitMQ: basic_get on a connection of this process, opened when first needed (after the fork).

    A broker error ends the take with what it has (already acked, so it must run); the connection is
    opened again next time. Gathering is an optimisation: the task's own chunk runs either way.
    """

    def __init__(self, connect: Callable[[], Connection]) -> None:
        self.connect = connect
        self.connection: Connection | None = None

    def take(self, queue: str, budget: int, watched: bool = False) -> list[ChunkRef]:
        taken: list[ChunkRef] = []
        try:
            lane = Queue(queue, no_declare=True)(self._channel())
            while budget > 0 and (message := lane.get(no_ack=False)) is not None:
                ref = ref_in(message.headers or {})
                if ref is None or not 0 < ref.texts <= budget:
                    message.reject(requeue=True)  # RabbitMQ puts it back in its place
                    break
                message.ack()
                taken.append(ref)
                budget -= ref.texts
        except BROKER_ERRORS as exc:
            log.warning("gathering from %s stopped: %s: %s", queue, type(exc).__name__, exc)
            self.close()
        return taken

    def quiet(self, queue: str) -> bool:
        return False  # RabbitMQ says nothing of a queue unasked

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.release()

    def _channel(self) -> Channel:
        if self.connection is None:
            connection = self.connect()
            connection.ensure_connection(max_retries=1)
            self.connection = connection
        return self.connection.default_channel


class QueueGatherer:
    def __init__(self, source: LaneSource, cache: redis.Redis, max_texts: int, note_ttl_s: float) -> None:
        self.source = source
        self.cache = cache
        self.max_texts = max_texts
        self.note_ttl_s = note_ttl_s

    def take(self, queue: str, own_texts: int) -> list[ChunkRef]:
        """Waiting small chunks of `queue` that fit beside a chunk of `own_texts` texts, removed from it.

        None ([]) where the task's own chunk is not small (its size unknown, or already the whole budget).
        """
        if own_texts <= 0:
            return []
        return self._take(queue, self.max_texts - own_texts)

    def take_waiting(self, queue: str, max_texts: int, watched: bool = False) -> list[ChunkRef]:
        """Waiting small chunks of `queue`, up to `max_texts` texts, removed from it (for a bulk task
        that serves them between its engine runs, watching the queue, or a drain)."""
        return self._take(queue, max_texts, watched)

    def quiet(self, queue: str) -> bool:
        """Nothing has come to `queue` since the last take found it empty (known without a round trip)."""
        return self.source.quiet(queue)

    def _take(self, queue: str, budget: int, watched: bool = False) -> list[ChunkRef]:
        return self.source.take(queue, budget, watched) if budget > 0 else []

    def note(self, carrier_task_id: str, queue: str, carried: list[ChunkRef]) -> CarriedNote:
        """What a task carries, noted in the round trip that claims its chunks (ChunkRunner)."""
        return CarriedNote(self.cache, carrier_task_id, queue, carried, self.note_ttl_s)


@dataclass
class CarriedNote:
    """The note of the chunks a task carries, under its task id: written with their claims, dropped
    with their counts (or by `forget`, where the run ended another way)."""

    cache: redis.Redis
    carrier_task_id: str
    queue: str
    carried: list[ChunkRef]
    ttl_s: float
    forgotten: bool = False

    def queue_write(self, pipe: Pipeline) -> None:
        record = {"queue": self.queue, "chunks": [[ref.job_id, ref.chunk, ref.texts] for ref in self.carried]}
        pipe.set(keys.carried_key(self.carrier_task_id), json.dumps(record), px=int(self.ttl_s * 1000))

    def queue_forget(self, pipe: Pipeline) -> None:
        pipe.delete(keys.carried_key(self.carrier_task_id))

    def forget(self) -> None:
        """Best effort: a note Redis could not drop expires after its TTL."""
        if self.forgotten:
            return
        with contextlib.suppress(redis.RedisError):
            self.cache.delete(keys.carried_key(self.carrier_task_id))
            self.forgotten = True


def carried_by(cache: redis.Redis, carrier_task_id: str) -> tuple[str, list[ChunkRef]]:
    """What a task that died had carried (its queue and chunks), forgetting the note."""
    pipe = cache.pipeline(transaction=True)
    pipe.get(keys.carried_key(carrier_task_id))
    pipe.delete(keys.carried_key(carrier_task_id))
    raw, _ = pipe.execute()
    if not raw:
        return "", []
    record = json.loads(raw)
    # the size comes back too, so a chunk sent again can still be gathered (notes of older workers lack it)
    chunks = [ChunkRef(str(c[0]), int(c[1]), int(c[2]) if len(c) > 2 else 0) for c in record["chunks"]]
    return str(record["queue"]), chunks
