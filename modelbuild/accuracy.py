"""Accuracy of an artifact: cosine of its vectors to fp32 ones, and STS-B Spearman."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from contract.codec import Matrix as Vectors
from worker.engine import SentenceEncoder

PERCENT = 100.0

# A calibration-independent build-time check set: varied register and length, none from STS-B.
CHECK_SENTENCES: tuple[str, ...] = (
    "The quarterly report shows revenue grew by 12 percent while costs stayed flat.",
    "How do I reset my password if I no longer have access to my email?",
    "A dog is running through the snow with a stick in its mouth.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Please deliver the package to the back door; the front gate is locked.",
    "The orchestra played Beethoven's ninth symphony to a sold-out hall.",
    "Interest rates were left unchanged by the central bank on Wednesday.",
    "She learned to play the violin when she was seven years old.",
    "Error: connection refused while connecting to the database on port 5432.",
    "Two children are building a sandcastle on the beach at sunset.",
    "The new vaccine reduced hospital admissions by half in the trial group.",
    "Mix the flour and butter, then add cold water until a dough forms.",
    "Is it safe to drink tap water in this city?",
    "The court ruled that the contract was void because it lacked a signature.",
    "A man in a red jacket is climbing a steep rock face.",
    "Our team shipped the feature two weeks ahead of schedule.",
    "The museum's collection includes paintings from the Dutch Golden Age.",
    "Heavy rain caused flooding in several low-lying neighbourhoods overnight.",
    "He forgot his umbrella at the station and got soaked on the way home.",
    "Quantum computers use qubits that can exist in superpositions of states.",
    "The cat knocked a glass of water off the kitchen table.",
    "Shares of the carmaker fell sharply after it recalled two million vehicles.",
    "What is the best way to learn a new language as an adult?",
    "The referee stopped the match after a player was injured in the second half.",
    "ok",
    "Thanks!",
    "I'm not sure this is the right approach, but let's try it and measure the results "
    "carefully before we decide anything, because the last time we changed the pipeline "
    "without benchmarks we lost a week chasing a regression that turned out to be in the "
    "tokenizer rather than in the model itself.",
    "Mount Everest is the highest mountain above sea level, on the border of Nepal and China.",
    "The software update fixes a bug that drained the battery when Bluetooth was on.",
    "A woman is slicing onions on a wooden cutting board.",
    "Voters will decide on the proposed tax increase in the November election.",
    "Can you recommend a good book about the history of mathematics?",
)


@dataclass(frozen=True)
class CosineReport:
    mean: float
    min: float

    def as_dict(self) -> dict[str, float]:
        return {
            "mean_cosine_to_fp32": round(self.mean, 5),
            "min_cosine_to_fp32": round(self.min, 5),
        }


def cosine_report(reference: Vectors, candidate: Vectors) -> CosineReport:
    """Row-wise cosine between two sets of vectors (normalised here, whatever the inputs)."""
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cand = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
    cosines = (ref * cand).sum(axis=1)
    return CosineReport(mean=float(cosines.mean()), min=float(cosines.min()))


def compare(reference: SentenceEncoder, candidate: SentenceEncoder, texts: Sequence[str]) -> CosineReport:
    return cosine_report(reference.embed(texts).vectors, candidate.embed(texts).vectors)


@dataclass(frozen=True)
class StsPairs:
    first: list[str]
    second: list[str]
    scores: list[float]

    def head(self, count: int) -> StsPairs:
        """The first `count` pairs (all of them when count is 0)."""
        if count <= 0:
            return self
        return StsPairs(self.first[:count], self.second[:count], self.scores[:count])

    def unique_sentences(self) -> list[str]:
        """The sentence1 column, then sentence2, each sentence once (first occurrence kept)."""
        return list(dict.fromkeys([*self.first, *self.second]))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_stsb(path: Path) -> StsPairs:
    """sentence1, sentence2, score rows; a header row is detected and skipped."""
    pairs = StsPairs([], [], [])
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle):
            if len(row) < 3 or not _is_number(row[2]):
                continue
            pairs.first.append(row[0])
            pairs.second.append(row[1])
            pairs.scores.append(float(row[2]))
    return pairs


def stsb_spearman(encoder: SentenceEncoder, pairs: StsPairs) -> float:
    """Spearman x100 between gold scores and cosine similarity of the two sentences' vectors."""
    texts = sorted(set(pairs.first) | set(pairs.second))
    index = {text: i for i, text in enumerate(texts)}
    vectors = encoder.embed(texts).vectors
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    a = vectors[[index[t] for t in pairs.first]]
    b = vectors[[index[t] for t in pairs.second]]
    result = spearmanr((a * b).sum(axis=1), pairs.scores)
    return float(result.statistic) * PERCENT
