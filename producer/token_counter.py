"""Counting tokens with the fleet's own tokenizer, which workers publish in Redis with their advert.

The gateway needs it for `usage.prompt_tokens`, for flagging (or refusing) inputs over the
model's limit, and to turn token-id inputs back into text; it never needs the model artifact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from contract.fleet_registry import BuildAdvert
from producer.errors import InvalidTextError


@dataclass(frozen=True)
class TokenCount:
    tokens: list[int]
    truncated: list[bool]

    @property
    def total(self) -> int:
        return sum(self.tokens)


class TokenCounter:
    def __init__(self, tokenizer_json: str, max_tokens: int, max_chars: int) -> None:
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_tokens = max_tokens
        self.max_chars = max_chars

    @classmethod
    def for_build(cls, build: BuildAdvert, tokenizer_json: str, max_chars: int) -> TokenCounter:
        return cls(tokenizer_json, build.max_tokens, max_chars)

    def count(self, texts: Sequence[str]) -> TokenCount:
        """Tokens the model reads of each text (special tokens included, at most its limit)."""
        encodings = self.tokenizer.encode_batch([text[: self.max_chars] for text in texts])
        lengths = [len(encoding.ids) for encoding in encodings]
        cut = [
            length > self.max_tokens or len(text) >= self.max_chars
            for length, text in zip(lengths, texts, strict=True)
        ]
        return TokenCount([min(length, self.max_tokens) for length in lengths], cut)

    def decode(self, ids: Sequence[int], position: int = 0) -> str:
        """The text of token ids of this model's vocabulary; other ids are refused, naming the input."""
        vocab = self.tokenizer.get_vocab_size()
        if any(not 0 <= token < vocab for token in ids):
            raise InvalidTextError(
                f"input {position} has token ids outside this model's vocabulary (0-{vocab - 1})"
            )
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)
