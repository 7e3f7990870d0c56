"""Carrying waiting interactive chunks along: one engine run for many small requests.

Celery hands a pool process one message at a time, and a 1-text chunk alone wastes most of an
engine run. So a small task on the interactive lane also takes the small chunks waiting behind it
on the same queue, straight off the broker's list (one RPOP, oldest first), up to
EMBED_GATHER_MAX_TEXTS texts in all, and the runner embeds them together (docs/benchmarks.md
compares this with the alternatives). Each message's size header says how many texts it holds;
the first that would not fit goes back with those after it, in order, so a big interactive job
still spreads over every process.

Carried messages leave the broker at once, so no ack is owed for them; the job protocol protects
them instead. The runner claims each one (a lease), checks and counts each one, and while they
run their references are noted under the carrier's task id: if the process dies, the main
process (worker.requests) counts a failure for each and publishes it again, so the chunks retry
apart and a poison text fails only its own job. If the whole host dies, the reconciler sends them
again, as it does for any chunk a dead node held.
"""

from __future__ import annotations

import json
from typing import cast

import redis

from contract import keys
from contract.jobs import ChunkRef, ref_of


class QueueGatherer:
    def __init__(
        self, broker: redis.Redis | None, cache: redis.Redis, max_texts: int, note_ttl_s: float
    ) -> None:
        self.broker = broker
        self.cache = cache
        self.max_texts = max_texts
        self.note_ttl_s = note_ttl_s

    def take(self, queue: str, own_texts: int) -> list[ChunkRef]:
        """Waiting small chunks of `queue` that fit beside a chunk of `own_texts` texts, removed from it.

        None ([]) where the broker is not Redis, or where the task's own chunk is not small (its size
        unknown, or already the whole budget).
        """
        if own_texts <= 0:
            return []
        return self._take(queue, self.max_texts - own_texts)

    def take_waiting(self, queue: str, max_texts: int) -> list[ChunkRef]:
        """Waiting small chunks of `queue`, up to `max_texts` texts, removed from it (for a bulk task
        that serves them between its engine runs)."""
        return self._take(queue, max_texts)

    def _take(self, queue: str, budget: int) -> list[ChunkRef]:
        if self.broker is None or budget <= 0:
            return []
        raws = cast(list[bytes], self.broker.rpop(queue, budget) or [])
        taken: list[ChunkRef] = []
        for index, raw in enumerate(raws):
            ref = ref_of(raw)
            if ref is None or not 0 < ref.texts <= budget:
                self._put_back(queue, raws[index:])
                break
            taken.append(ref)
            budget -= ref.texts
        return taken

    def _put_back(self, queue: str, raws: list[bytes]) -> None:
        """Back where they were: the oldest ends up where the consumers pop first."""
        self.broker.rpush(queue, *reversed(raws))  # type: ignore[union-attr]

    def note(self, carrier_task_id: str, queue: str, carried: list[ChunkRef]) -> None:
        record = {"queue": queue, "chunks": [[ref.job_id, ref.chunk, ref.texts] for ref in carried]}
        self.cache.set(keys.carried_key(carrier_task_id), json.dumps(record), px=int(self.note_ttl_s * 1000))

    def forget(self, carrier_task_id: str) -> None:
        self.cache.delete(keys.carried_key(carrier_task_id))


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
