"""What one more `session.run` costs on this host, in padded tokens: the batcher's price of a cut.

The fixed cost of a run depends on the CPU and the thread count far more than on the model: about
13 padded tokens at 1 thread on an AMX Xeon, none to speak of at 1 thread on Zen 4, about 90 at
2 threads there (docs/benchmarks.md). A fixed guess cuts too few batches on one host and too many
on another, so each worker process times a few synthetic batches after its warm-up and fits
seconds = fixed + per_token x padded tokens. The same fit caps a run's padded tokens
(EMBED_MAX_RUN_S): a small request waits behind bulk work for one run, and what a run of 64 texts
costs ranges 7x over the hosts measured (37 us per padded token on an AMX Xeon, 250 on a Zen 3).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

PROBE_LENGTHS = (12, 24)
PROBE_SIZES = (1, 2, 4, 8, 16, 32)
PROBE_TOKENS_PER_POINT = 800
PROBE_MIN_REPEATS = 3


@dataclass(frozen=True)
class RunCost:
    fixed_s: float
    per_token_s: float

    @property
    def overhead_tokens(self) -> int:
        """The fixed cost in padded tokens; 0 where the fit finds none (or noise made it negative)."""
        if self.per_token_s <= 0:
            return 0
        return max(0, round(self.fixed_s / self.per_token_s))

    def tokens_within(self, seconds: float) -> int | None:
        """Padded tokens one run can hold and take at most `seconds`; None where the fit has no slope."""
        if self.per_token_s <= 0:
            return None
        return max(0, int((seconds - max(self.fixed_s, 0.0)) / self.per_token_s))

    @classmethod
    def fit(cls, points: Sequence[tuple[int, float]]) -> RunCost:
        """Least squares over (padded tokens, seconds) points, in relative error: the small batches
        that show the fixed cost weigh as much as the big ones that show the slope."""
        tokens, seconds = np.array(points, dtype=np.float64).T
        per_token, fixed = np.polyfit(tokens, seconds, 1, w=1 / seconds)
        return cls(float(fixed), float(per_token))


def measure_run_cost(run: Callable[[int, int], Callable[[], object]]) -> RunCost:
    """`run(size, length)` prepares a batch of that shape and returns the call that runs it once.

    Each point keeps its fastest of a few timings: another process on the host only ever slows one.
    """
    points = []
    for length in PROBE_LENGTHS:
        for size in PROBE_SIZES:
            call = run(size, length)
            call()
            repeats = max(PROBE_MIN_REPEATS, PROBE_TOKENS_PER_POINT // (size * length))
            fastest = float("inf")
            for _ in range(repeats):
                began = time.perf_counter()
                call()
                fastest = min(fastest, time.perf_counter() - began)
            points.append((size * length, fastest))
    return RunCost.fit(points)
