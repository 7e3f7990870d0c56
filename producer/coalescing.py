"""Concurrent `embed()` calls on one client share jobs.

A web app's request threads (or coroutines) each call `client.embed()` with a text or two. Alone,
every call is a job: a submit, a message, a wait and a fetch; on a small host that bookkeeping
costs more CPU than the embedding itself. Here a client keeps up to EMBED_COALESCE_INFLIGHT jobs
in flight for its embed() calls; calls that arrive while all slots are busy go together, up to
EMBED_COALESCE_MAX_TEXTS texts, into the next job (there is no timer: a call that finds a free
slot leaves at once, so an idle fleet answers as fast as without coalescing). Each caller still
gets exactly its own rows, and its own error: a failed text fails only the call it came from.
`EmbedCoalescer` serves the thread-safe client with one sender thread (a call that finds a free
slot and nobody waiting runs its job on its own thread: a single-threaded caller pays no hand-off),
`AsyncEmbedCoalescer` the asyncio client on its event loop. docs/benchmarks.md measures both ways.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
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
    from producer.async_client import AsyncEmbeddingClient
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
        if self._carry is None and self._calls.empty() and self._slots.acquire(blocking=False):
            self._run([call], timeout)  # nobody to share with: no hand-off to the sender and back
        else:
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

    def _run(self, batch: list[_Call], timeout: float | None = None) -> None:
        try:
            job = self.client.submit_to_wait(
                [text for call in batch for text in call.texts], priority=Lane.INTERACTIVE
            )
            job.wait(timeout)
            outcomes = split_rows([len(call.texts) for call in batch], job.result(missing="mask"), job.id)
            for call, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, JobFailedError):
                    call.error = outcome
                else:
                    call.vectors = outcome
        except BaseException as exc:
            for call in batch:
                call.error = exc
        finally:
            for call in batch:
                call.done.set()
            self._slots.release()


_Waiting = tuple[list[str], "asyncio.Future[Matrix]"]


class AsyncEmbedCoalescer:
    """As EmbedCoalescer, on the event loop: no thread, the jobs in flight are tasks."""

    def __init__(self, client: AsyncEmbeddingClient, max_texts: int, inflight: int) -> None:
        self.client = client
        self.max_texts = max_texts
        self.inflight = inflight
        self._waiting: deque[_Waiting] = deque()
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    async def embed(self, texts: Sequence[str], timeout: float | None) -> Matrix:
        if self._closed:
            raise RuntimeError("embed() on a closed client: open a new AsyncEmbeddingClient")
        future: asyncio.Future[Matrix] = asyncio.get_running_loop().create_future()
        self._waiting.append((list(texts), future))
        self._dispatch()
        try:  # a caller that stops waiting cancels only its own future, not the job it shares
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise JobTimeoutError(f"embed() of {len(texts)} texts not done after {timeout}s") from None

    async def aclose(self) -> None:
        """Calls not yet sent and jobs in flight end with CancelledError for their callers."""
        self._closed = True
        while self._waiting:
            self._waiting.popleft()[1].cancel()
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    def _dispatch(self) -> None:
        while self._waiting and len(self._running) < self.inflight and not self._closed:
            task = asyncio.create_task(self._run(self._next_batch()))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._dispatch()

    def _next_batch(self) -> list[_Waiting]:
        """The oldest waiting calls, up to max_texts texts (one call, whatever its size, at least)."""
        batch = [self._waiting.popleft()]
        size = len(batch[0][0])
        while self._waiting and size + len(self._waiting[0][0]) <= self.max_texts:
            size += len(self._waiting[0][0])
            batch.append(self._waiting.popleft())
        return batch

    async def _run(self, batch: list[_Waiting]) -> None:
        outcomes: list[Matrix | BaseException]
        try:
            job = await self.client.submit_to_wait(
                [text for texts, _ in batch for text in texts], Lane.INTERACTIVE
            )
            await job.wait()
            sizes = [len(texts) for texts, _ in batch]
            outcomes = [*split_rows(sizes, await job.result(missing="mask"), job.id)]
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            outcomes = [exc] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller stopped waiting
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


def split_rows(sizes: list[int], vectors: Matrix, job_id: str) -> list[Matrix | JobFailedError]:
    """Each call's own rows; a call with a row that has no vector gets its own error instead."""
    missing = np.ma.getmaskarray(vectors)[:, 0] if np.ma.isMaskedArray(vectors) else None
    rows = np.ma.getdata(vectors)  # slicing the plain array: a masked one costs more than the rest
    outcomes: list[Matrix | JobFailedError] = []
    start = 0
    for size in sizes:
        end = start + size
        lost = [] if missing is None else [int(i) for i in np.flatnonzero(missing[start:end])]
        if lost:
            outcomes.append(
                JobFailedError(
                    f"inputs {describe_positions(lost)} of this call failed in job {job_id}: see its error",
                    lost,
                )
            )
        else:
            outcomes.append(np.asarray(rows[start:end], dtype=np.float32))
        start = end
    return outcomes
