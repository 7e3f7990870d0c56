"""A Celery Request that counts the failures a task cannot count itself.

When a pool child dies (SIGKILL, the OOM killer, a segfault in a kernel) or hits the hard time
limit, no code of the task runs again; the main process requeues the message
(`task_reject_on_worker_lost`, `task_acks_on_timeout=False`). Counting the failure here, before
the requeue, is what stops a text that always kills its process after EMBED_MAX_CHUNK_ATTEMPTS.
Counting failures, not deliveries, keeps a chunk that was merely delivered twice alive. Chunks the
task carried off the interactive queue (worker.gathering) count a failure too and are sent again.
"""

from __future__ import annotations

from typing import Any

from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery.worker import state
from celery.worker.request import Request

from contract.jobs import ChunkRef
from worker.node import current_node


class ChunkRequest(Request):
    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft:
            self._count_failure(f"its process was stopped at the hard time limit ({timeout} s)")
        super().on_timeout(soft, timeout)

    def on_failure(
        self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        if isinstance(exc, WorkerLostError):
            self._count_failure("its worker process died (killed, out of memory, or crashed)")
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _count_failure(self, error: str) -> None:
        node = current_node()
        if node is None or state.should_terminate:
            return  # a shutdown kills children on purpose: that is no fault of the chunk
        try:
            ref = ChunkRef.from_kwargs(self.kwargs)
        except ValueError:
            return
        node.record_failure(ref, error)
        node.release_carried(self.id, error)
