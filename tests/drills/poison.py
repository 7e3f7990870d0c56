"""Fault injection for the poison drill: a text that kills the pool process that embeds it.

Loaded into a real worker with `--include tests.drills.poison`; the process really dies
(SIGKILL), as it would on a text that crashes a kernel or exhausts memory.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

from celery.signals import worker_process_init

POISON = "\u2620 this text kills the process that embeds it \u2620"


@worker_process_init.connect(weak=False)
def arm(**_: Any) -> None:
    from worker.engine import EmbedResult
    from worker.runtime import open_runtime

    engine = open_runtime().engine
    embed = engine.embed

    def embed_or_die(texts: Sequence[str], before_each_run: Callable[[], None] | None = None) -> EmbedResult:
        if POISON in texts:
            os.kill(os.getpid(), signal.SIGKILL)
        return embed(texts, before_each_run)

    engine.embed = embed_or_die  # type: ignore[method-assign]
