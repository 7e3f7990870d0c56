"""Concurrent `embed()` calls on one client share jobs.

A web app's request threads each call `client.embed()` with a text or two. Alone, every call is a
job: a submit, a message, a wait and a fetch; on a small host that bookkeeping costs more CPU than
the embedding itself. Here the calls go to one sender thread, which keeps up to
EMBED_COALESCE_INFLIGHT jobs in flight; calls that arrive while all slots are busy go together,
up to EMBED_COALESCE_MAX_TEXTS texts, into the next job (there is no timer: a call that finds a
free slot leaves at once, so an idle fleet answers as fast as without coalescing). Each caller
still gets exactly its own rows, and its own error: a failed text fails only the call it came
from. docs/benchmarks.md measures both ways.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from contract.codec import Matrix
from contract.jobs import describe_positions
from contract.lanes import Lane
from producer.errors import JobFailedError, JobTimeoutError

if TYPE_CHECKING:
    from producer.client import EmbeddingClient


@dataclass
class _Call:
    texts: list[str]
    done: threading.Event = field(default_factory=threading.Event)
    vectors: Matrix | None = None
    error: BaseException | None = None


class EmbedCoalescer:
    def __init__(self, client: EmbeddingClient, max_texts: int, inflight: int) -> None:
        self.client = client
        self.max_texts = max_texts
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(inflight)
        self._jobs = ThreadPoolExecutor(inflight, thread_name_prefix="embedfleet-job")
        self._carry: _Call | None = None
        self._sender = threading.Thread(target=self._send, name="embedfleet-sender", daemon=True)
        self._sender.start()

    def embed(self, texts: Sequence[str], timeout: float | None) -> Matrix:
        call = _Call(list(texts))
        self._calls.put(call)
        if not call.done.wait(timeout):
            raise JobTimeoutError(f"embed() of {len(call.texts)} texts not done after {timeout}s")
        if call.error is not None:
            raise call.error
        assert call.vectors is not None
        return call.vectors

    def close(self) -> None:
        self._calls.put(None)
        self._sender.join()
        self._jobs.shutdown(wait=True)

    def _send(self) -> None:
        while True:
            self._slots.acquire()
            batch = self._next_batch()
            if batch is None:
                return
            self._jobs.submit(self._run, batch)

    def _next_batch(self) -> list[_Call] | None:
        """The oldest waiting calls, up to max_texts texts (blocking until there is one)."""
        first = self._carry or self._calls.get()
        self._carry = None
        if first is None:
            return None
        batch, size = [first], len(first.texts)
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return batch
            if call is None or size + len(call.texts) > self.max_texts:
                self._carry = call
                return batch
            batch.append(call)
            size += len(call.texts)

    def _run(self, batch: list[_Call]) -> None:
        try:
            job = self.client.submit(
                [text for call in batch for text in call.texts], priority=Lane.INTERACTIVE
            )
            job.wait()
            _hand_out(batch, job.result(missing="mask"), job.id)
        except BaseException as exc:
            for call in batch:
                call.error = exc
        finally:
            for call in batch:
                call.done.set()
            self._slots.release()


def _hand_out(batch: list[_Call], vectors: Matrix, job_id: str) -> None:
    """Each call gets its own rows; a call with a row that has no vector gets its own error."""
    missing = np.ma.getmaskarray(vectors)[:, 0] if np.ma.isMaskedArray(vectors) else None
    start = 0
    for call in batch:
        end = start + len(call.texts)
        rows = np.asarray(vectors[start:end], dtype=np.float32)
        lost = [] if missing is None else [int(i) for i in np.flatnonzero(missing[start:end])]
        if lost:
            call.error = JobFailedError(
                f"inputs {describe_positions(lost)} of this call failed in job {job_id}: see its error", lost
            )
        else:
            call.vectors = rows
        start = end
