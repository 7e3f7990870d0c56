"""Carrying waiting interactive chunks along: one engine run for many small requests.

Celery hands a pool process one message at a time, and a 1-text chunk alone wastes most of an
engine run. So a task on the interactive lane also takes up to EMBED_GATHER_MAX_CHUNKS messages
waiting on the same queue straight off the broker's list (one RPOP, oldest first), and the runner
embeds all their chunks together (docs/benchmarks.md compares this with the alternatives).

Carried messages leave the broker at once, so no ack is owed for them; the job protocol protects
them instead. The runner claims each one (a lease), checks and counts each one, and while they
run their references are noted under the carrier's task id: if the process dies, the main
process (worker.requests) counts a failure for each and publishes it again, so the chunks retry
apart and a poison text fails only its own job. If the whole host dies, the reconciler sends them
again, as it does for any chunk a dead node held.
"""

from __future__ import annotations

import json
import logging
from typing import cast

import redis

from contract import keys
from contract.jobs import ChunkRef, task_id_of

log = logging.getLogger(__name__)


class QueueGatherer:
    def __init__(self, broker: redis.Redis | None, cache: redis.Redis, limit: int, note_ttl_s: float) -> None:
        self.broker = broker
        self.cache = cache
        self.limit = limit
        self.note_ttl_s = note_ttl_s

    def take(self, queue: str) -> list[ChunkRef]:
        """Up to `limit` waiting chunks of `queue`, removed from it; none where the broker is not Redis."""
        if self.broker is None or self.limit <= 0:
            return []
        raws = cast(list[bytes], self.broker.rpop(queue, self.limit) or [])
        refs: list[ChunkRef] = []
        for raw in raws:
            ref = ChunkRef.from_task_id(task_id_of(raw))
            if ref is None:
                log.warning("put back a message on %s that names no chunk", queue)
                self.broker.rpush(queue, raw)
            else:
                refs.append(ref)
        return refs

    def note(self, carrier_task_id: str, queue: str, carried: list[ChunkRef]) -> None:
        record = {"queue": queue, "chunks": [[ref.job_id, ref.chunk] for ref in carried]}
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
    return str(record["queue"]), [ChunkRef(str(job), int(chunk)) for job, chunk in record["chunks"]]
