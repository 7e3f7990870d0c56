"""Length-sorted batches under a padded-token budget: little padding, bounded memory per run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenBudgetBatcher:
    """Groups sequence indices so that batch_size x longest_length <= token_budget.

    Sorting by length first keeps padding small; the budget keeps the activation
    memory of one `session.run` bounded whatever the input lengths are.
    """

    token_budget: int
    max_batch_size: int

    def batches(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batch: list[int] = []
        for index in order:
            longest = max(lengths[index], 1)  # sorted ascending: the newcomer is the longest
            if batch and (
                len(batch) >= self.max_batch_size or (len(batch) + 1) * longest > self.token_budget
            ):
                yield batch
                batch = []
            batch.append(index)
        if batch:
            yield batch
