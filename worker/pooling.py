"""Sentence vectors from token states: mean over real tokens, then unit length (as sentence-transformers)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

NORM_FLOOR = 1e-12


def mean_pool(
    token_states: npt.NDArray[np.floating], attention_mask: npt.NDArray[np.integer]
) -> npt.NDArray[np.float32]:
    """Average the states of unmasked tokens; padding never contributes."""
    mask = attention_mask[..., None].astype(np.float32)
    summed = (token_states.astype(np.float32) * mask).sum(axis=1)
    counts = np.maximum(mask.sum(axis=1), NORM_FLOOR)
    return (summed / counts).astype(np.float32)


def l2_normalize(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, NORM_FLOOR)).astype(np.float32)
