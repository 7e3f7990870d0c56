"""Length-sorted batches under a padded-token budget, cut where padding would cost more than a run.

Inference time is nearly proportional to padded tokens (batch x longest). A chunk of texts that
the producer sorted by characters still spans many token lengths: one batch of 64 of them
padded ~40 % more tokens than it held. Cutting the sorted run into batches is an optimal
partition problem (each batch costs its padded tokens plus a fixed per-run overhead), solved
exactly in O(n x max_batch_size).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenBudgetBatcher:
    """Groups sequence indices so that batch_size x longest_length <= token_budget.

    Among all ways to cut the length-sorted indices into such batches, it picks the one with the
    fewest padded tokens plus `run_overhead_tokens` per batch (the fixed cost of one
    `session.run`, in token equivalents); the budget keeps one run's activation memory bounded.
    """

    token_budget: int
    max_batch_size: int
    run_overhead_tokens: int = 0

    def batches(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        longest = [max(lengths[i], 1) for i in order]  # sorted: a batch's last member is its longest
        for start, end in self._cuts(longest):
            yield order[start:end]

    def _cuts(self, longest: list[int]) -> list[tuple[int, int]]:
        """Optimal contiguous batches of the sorted lengths, as (start, end) pairs."""
        count = len(longest)
        cost = np.zeros(count + 1)
        best_start = np.zeros(count + 1, dtype=np.int64)
        for end in range(1, count + 1):
            size_limit = min(self.max_batch_size, max(1, self.token_budget // longest[end - 1]))
            starts = np.arange(max(0, end - size_limit), end)
            totals = cost[starts] + (end - starts) * longest[end - 1] + self.run_overhead_tokens
            pick = int(np.argmin(totals))
            cost[end], best_start[end] = totals[pick], starts[pick]
        cuts: list[tuple[int, int]] = []
        end = count
        while end > 0:
            cuts.append((int(best_start[end]), end))
            end = cuts[-1][0]
        return cuts[::-1]
