"""Fast tokenisation from the artifact's tokenizer.json, with truncation reported per text."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer


@dataclass(frozen=True)
class TokenBatch:
    """Padded model inputs for one batch (int64, as the ONNX graph expects)."""

    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]
    token_type_ids: npt.NDArray[np.int64]


PARALLELISM_ENV = "TOKENIZERS_PARALLELISM"
RAYON_THREADS_ENV = "RAYON_NUM_THREADS"


def limit_threads(threads: int) -> None:
    """Tokenise on as many threads as the process may run ONNX Runtime on, not on every core.

    `tokenizers` spreads encode_batch over a thread per core by default; with one worker process
    per core, that oversubscribes the host (measured: 10-15 % of a 2-process fleet's throughput).
    Must run before the process first tokenises (the thread pool is built then).
    """
    if threads <= 1:
        os.environ[PARALLELISM_ENV] = "false"
    else:
        os.environ.setdefault(RAYON_THREADS_ENV, str(threads))


class TextTokenizer:
    """Caps characters before tokenising and tokens after, and says which texts lost tokens."""

    def __init__(self, tokenizer_file: Path, max_seq_length: int, max_text_chars: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_seq_length)
        self.max_seq_length = max_seq_length
        self.max_text_chars = max_text_chars

    def encode(self, texts: Sequence[str]) -> tuple[list[Encoding], list[bool]]:
        """Encodings plus, per text, whether anything was cut (characters or tokens)."""
        clipped = [text[: self.max_text_chars] for text in texts]
        encodings = self._tokenizer.encode_batch(clipped)
        # At the limit counts as cut: producers clip to EMBED_MAX_TEXT_CHARS before queuing.
        truncated = [
            bool(encoding.overflowing) or len(text) >= self.max_text_chars
            for text, encoding in zip(texts, encodings, strict=True)
        ]
        return encodings, truncated

    @staticmethod
    def pad(encodings: Sequence[Encoding]) -> TokenBatch:
        width = max(len(encoding.ids) for encoding in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            length = len(encoding.ids)
            ids[row, :length] = encoding.ids
            mask[row, :length] = 1
            types[row, :length] = encoding.type_ids
        return TokenBatch(ids, mask, types)
