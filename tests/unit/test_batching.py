import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.batching import TokenBudgetBatcher
from worker.run_cost import RunCost


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=200))
def test_every_index_once_and_each_batch_under_budget(lengths: list[int]) -> None:
    batcher = TokenBudgetBatcher(token_budget=1024, max_batch_size=16)
    batches = list(batcher.batches(lengths))
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 16
        longest = max(max(lengths[i] for i in batch), 1)
        assert len(batch) == 1 or len(batch) * longest <= 1024


def test_batches_are_length_sorted_to_limit_padding() -> None:
    batches = list(
        TokenBudgetBatcher(token_budget=99, max_batch_size=2, run_overhead_tokens=8).batches([50, 3, 40, 2])
    )
    assert batches == [[3, 1], [2], [0]]


def test_a_sequence_longer_than_the_budget_still_gets_its_own_batch() -> None:
    assert list(TokenBudgetBatcher(token_budget=10, max_batch_size=8).batches([5, 50])) == [[0], [1]]


def test_a_jump_in_length_starts_a_new_batch_rather_than_padding() -> None:
    lengths = [8] * 20 + [30] * 20
    batches = list(
        TokenBudgetBatcher(token_budget=8192, max_batch_size=64, run_overhead_tokens=64).batches(lengths)
    )
    assert [sorted(batch) for batch in batches] == [list(range(20)), list(range(20, 40))]


def test_small_length_steps_stay_in_one_batch_when_a_run_costs_more_than_their_padding() -> None:
    lengths = [10, 11, 12, 13] * 4
    assert len(list(TokenBudgetBatcher(8192, 64, run_overhead_tokens=64).batches(lengths))) == 1
    assert len(list(TokenBudgetBatcher(8192, 64, run_overhead_tokens=0).batches(lengths))) == 4


def test_a_run_cost_fit_recovers_a_line_and_prices_a_run_in_tokens() -> None:
    points = [(tokens, 0.0004 + 0.00004 * tokens) for tokens in (12, 24, 48, 96, 192, 384)]
    cost = RunCost.fit(points)
    assert cost.fixed_s == pytest.approx(0.0004) and cost.per_token_s == pytest.approx(0.00004)
    assert cost.overhead_tokens == 10


def test_a_run_cost_with_no_fixed_part_or_no_slope_prices_a_cut_at_nothing() -> None:
    assert RunCost(fixed_s=-0.001, per_token_s=0.00004).overhead_tokens == 0
    assert RunCost(fixed_s=0.001, per_token_s=0.0).overhead_tokens == 0


def test_a_run_cost_says_how_many_padded_tokens_fit_in_a_time() -> None:
    cost = RunCost(fixed_s=0.002, per_token_s=0.00025)
    assert cost.tokens_within(0.1) == 392
    assert cost.tokens_within(0.001) == 0
    noisy = RunCost(fixed_s=-0.001, per_token_s=0.0001)  # a fit below 0 means no fixed part
    assert noisy.tokens_within(0.01) == 100
    assert RunCost(fixed_s=0.001, per_token_s=0.0).tokens_within(0.1) is None
