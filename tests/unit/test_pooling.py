import numpy as np

from worker.pooling import l2_normalize, mean_pool


def test_mean_pool_ignores_padding() -> None:
    states = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(mean_pool(states, mask), [[2.0, 3.0]])


def test_mean_pool_of_a_fully_masked_row_is_finite() -> None:
    pooled = mean_pool(np.ones((1, 2, 3), dtype=np.float32), np.zeros((1, 2), dtype=np.int64))
    assert np.all(np.isfinite(pooled))


def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows_zero() -> None:
    vectors = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(vectors, [[0.6, 0.8], [0.0, 0.0]])
