"""Serving waiting interactive chunks between the engine runs of a bulk chunk.

Every worker consumes interactive first, but a process takes its next message only when its task
ends: while every process runs a bulk chunk (512 texts, about 550 ms on one thread), a search query
waits for the first of them to finish. So before each engine run of a bulk chunk, the process takes
the small chunks waiting on its build's interactive queue (worker.gathering) and runs them
at once (up to EMBED_INTERJECT_MAX_TEXTS texts): the query waits for one engine run (at most
EMBED_MAX_BATCH_SIZE texts) instead of a whole chunk, and bulk chunks keep the size that runs them
at full speed.

The taken chunks are protected as carried ones are: noted under the bulk task's id while they run,
so if the process dies the main process counts a failure for each and publishes it again.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import redis

from contract.jobs import ChunkRef
from worker.chunk_runner import ChunkRunner
from worker.gathering import QueueGatherer

log = logging.getLogger(__name__)


@dataclass
class InteractiveInterjection:
    """Called before each engine run of a bulk chunk; never fails the bulk chunk for its own errors."""

    gatherer: QueueGatherer
    runner: ChunkRunner  # publishes a chunk to retry to `queue`
    queue: str
    task_id: str
    max_texts: int
    served: int = 0

    def __call__(self) -> None:
        taken = self.gatherer.take_waiting(self.queue, self.max_texts)
        if not taken:
            return
        note = self.gatherer.note(self.task_id, self.queue, taken)
        try:
            self.runner.serve(taken, note)
            self.served += len(taken)
        except redis.RedisError:
            self._send_back(taken)
            raise
        except Exception:
            log.exception("interactive chunks taken between bulk runs go back to their queue")
            self._send_back(taken)
        finally:
            with contextlib.suppress(redis.RedisError):
                note.forget()

    def _send_back(self, taken: list[ChunkRef]) -> None:
        """Counted chunks are skipped when claimed, so sending one again is always safe."""
        if self.runner.republish is None:
            return
        for chunk in taken:
            with contextlib.suppress(Exception):
                self.runner.republish(chunk)
