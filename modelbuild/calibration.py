"""Calibration on real text: a default English corpus in package data and ORT feed readers.

Calibration feeds one sentence per run, so no padding tokens enter the activation ranges.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt
from onnxruntime.quantization import CalibrationDataReader
from tokenizers import Tokenizer

DEFAULT_CORPUS = "calibration.txt"
MIN_SENTENCES = 16

Feeds = dict[str, npt.NDArray[np.int64]]


def default_corpus_path() -> Path:
    return Path(str(resources.files("modelbuild") / "data" / DEFAULT_CORPUS))


def read_corpus(path: Path | None = None, limit: int | None = None) -> list[str]:
    """One sentence per line; blank lines and `#` comments are skipped."""
    path = path or default_corpus_path()
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [line for line in lines if line and not line.startswith("#")]
    if len(texts) < MIN_SENTENCES:
        raise ValueError(f"{path}: {len(texts)} calibration sentences, need at least {MIN_SENTENCES}")
    return texts[:limit] if limit else texts


def iter_feeds(tokenizer: Tokenizer, texts: Sequence[str]) -> Iterator[Feeds]:
    """Unpadded single-sentence feeds with the encoder's three int64 inputs."""
    for text in texts:
        encoding = tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        yield {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }


class TextCalibrationReader(CalibrationDataReader):
    """The CalibrationDataReader quantize_static pulls from, over real sentences."""

    def __init__(self, tokenizer: Tokenizer, texts: Sequence[str]) -> None:
        self._feeds = iter_feeds(tokenizer, texts)

    def get_next(self) -> Feeds | None:
        return next(self._feeds, None)


def load_tokenizer(path: Path, max_seq_length: int) -> Tokenizer:
    """The source's tokenizer, truncating as the served model will (calibration feeds one text at a time)."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_seq_length)
    return tokenizer
