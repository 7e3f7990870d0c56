"""STS benchmark pairs (sentence1, sentence2, gold score 0-5) and the scores computed from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.stats import spearmanr

from modelbuild.accuracy import read_stsb

SPEARMAN_SCALE = 100.0

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class StsPairs:
    first: list[str]
    second: list[str]
    gold: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.gold)

    def head(self, count: int) -> StsPairs:
        """The first `count` pairs (all of them when count is 0)."""
        if count <= 0:
            return self
        return StsPairs(self.first[:count], self.second[:count], self.gold[:count])

    def unique_sentences(self) -> list[str]:
        """The sentence1 column, then sentence2, each sentence once (first occurrence kept)."""
        return list(dict.fromkeys([*self.first, *self.second]))


def load_pairs(path: Path) -> StsPairs:
    """The pairs as modelbuild reads them (one CSV parser for the build check and the benchmarks)."""
    pairs = read_stsb(path)
    return StsPairs(pairs.first, pairs.second, np.array(pairs.scores, dtype=np.float64))


def spearman_x100(pairs: StsPairs, vectors: dict[str, npt.NDArray[np.float32]]) -> float:
    """Spearman (x100) between the cosine of each pair's vectors and its gold score."""
    left = np.stack([vectors[text] for text in pairs.first])
    right = np.stack([vectors[text] for text in pairs.second])
    rho = spearmanr(cosine_rows(left, right), pairs.gold).statistic
    return float(rho) * SPEARMAN_SCALE


def cosine_rows(left: Matrix, right: Matrix) -> npt.NDArray[np.float64]:
    """Row-wise cosine; vectors need not be normalised."""
    left64 = left.astype(np.float64)
    right64 = right.astype(np.float64)
    dots = np.einsum("ij,ij->i", left64, right64)
    norms = np.linalg.norm(left64, axis=1) * np.linalg.norm(right64, axis=1)
    cosines: npt.NDArray[np.float64] = dots / np.maximum(norms, np.finfo(np.float64).tiny)
    return cosines
