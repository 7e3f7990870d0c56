"""Serving waiting interactive chunks between the engine runs of a bulk chunk, and after an
interactive task's own.

Every worker consumes interactive first, but a process takes its next message only when its task
ends: while every process runs a bulk chunk (512 texts, about 550 ms on one thread), a search query
waits for the first of them to finish. So before each engine run of a bulk chunk, the process takes
the small chunks waiting on its build's interactive queue (worker.gathering) and runs them
at once (up to EMBED_INTERJECT_MAX_TEXTS texts): the query waits for one engine run (at most
EMBED_MAX_BATCH_SIZE texts) instead of a whole chunk, and bulk chunks keep the size that runs them
at full speed. On Redis the process asks only when the queue may have changed since its last look
(the first look of each bulk chunk, then as Redis's client tracking reports a change:
worker.list_watch).

An interactive task, once its own batch is counted, goes on the same way (`drain`): it takes the
chunks that queued meanwhile and runs them, batch after batch (up to EMBED_GATHER_MAX_TEXTS texts
each), for up to EMBED_INTERACTIVE_DRAIN_S. Under load that spares each batch a round through
Celery (the result to the main process, the ack, the next message fetched and handed over): 2-5
ms of the process waiting and about 1 ms of the main process's CPU per batch.

The taken chunks are protected as carried ones are: noted under the task's id while they run,
so if the process dies the main process counts a failure for each and publishes it again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import redis

from contract.jobs import ChunkRef
from worker.chunk_runner import ChunkRunner
from worker.gathering import QueueGatherer

log = logging.getLogger(__name__)


@dataclass
class InteractiveInterjection:
    """Called before each engine run of a bulk chunk (or drained after an interactive task's own
    batch); never fails the task's own chunk for its own errors."""

    gatherer: QueueGatherer
    runner: ChunkRunner  # publishes a chunk to retry to `queue`
    queue: str
    task_id: str
    max_texts: int
    watched: bool = False  # between a bulk chunk's runs: ask the broker only when the queue changed
    served: int = 0
    batches: int = 0
    looked: bool = False

    def __call__(self) -> bool:
        """Serve the chunks waiting now (up to `max_texts` texts); False where none were served.

        Watching, the first call asks the broker, and later ones skip the round trip while the
        queue is known to be still empty (worker.list_watch)."""
        if self.watched and self.looked and self.gatherer.quiet(self.queue):
            return False
        self.looked = True
        taken = self.gatherer.take_waiting(self.queue, self.max_texts, self.watched)
        if not taken:
            return False
        note = self.gatherer.note(self.task_id, self.queue, taken)
        try:
            self.runner.serve(taken, note)
            self.served += len(taken)
            self.batches += 1
            return True
        except redis.RedisError:
            self._send_back(taken)
            raise
        except Exception:
            log.exception("waiting interactive chunks that were taken go back to their queue")
            self._send_back(taken)
            return False
        finally:
            note.forget()

    def drain(self, seconds: float) -> None:
        """Serve waiting chunks batch after batch until none wait or `seconds` have passed."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self():
            pass

    def _send_back(self, taken: list[ChunkRef]) -> None:
        """Counted chunks are skipped when claimed, so sending one again is always safe."""
        if self.runner.republish is None:
            return
        for chunk in taken:
            with contextlib.suppress(Exception):
                self.runner.republish(chunk)
