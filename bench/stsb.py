"""Scores of the benchmarks computed over STS-B pairs (read by modelbuild.accuracy.read_stsb)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.stats import spearmanr

from modelbuild.accuracy import StsPairs

SPEARMAN_SCALE = 100.0

Matrix = npt.NDArray[np.float32]


def spearman_x100(pairs: StsPairs, vectors: dict[str, npt.NDArray[np.float32]]) -> float:
    """Spearman (x100) between the cosine of each pair's vectors and its gold score."""
    left = np.stack([vectors[text] for text in pairs.first])
    right = np.stack([vectors[text] for text in pairs.second])
    rho = spearmanr(cosine_rows(left, right), pairs.scores).statistic
    return float(rho) * SPEARMAN_SCALE


def cosine_rows(left: Matrix, right: Matrix) -> npt.NDArray[np.float64]:
    """Row-wise cosine; vectors need not be normalised."""
    left64 = left.astype(np.float64)
    right64 = right.astype(np.float64)
    dots = np.einsum("ij,ij->i", left64, right64)
    norms = np.linalg.norm(left64, axis=1) * np.linalg.norm(right64, axis=1)
    cosines: npt.NDArray[np.float64] = dots / np.maximum(norms, np.finfo(np.float64).tiny)
    return cosines
