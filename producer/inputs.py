"""Reading texts from files: one per line, or JSONL with a `text` field; bad bytes named by line."""

from __future__ import annotations

import json
from pathlib import Path

from producer.errors import InvalidTextError

JSONL_SUFFIXES = {".jsonl", ".ndjson"}
TEXT_FIELD = "text"


def read_texts(path: Path) -> list[str]:
    """Every line is one text; in a text file empty lines too, so positions match line numbers (a
    JSONL file skips blank lines: they hold no record)."""
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    texts: list[str] = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        line = _decode(raw, number, path)
        if jsonl:
            if not line.strip():
                continue
            line = _text_field(line, number, path)
        texts.append(line)
    return texts


def _decode(raw: bytes, number: int, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidTextError(
            f"line {number} of {path} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
            f"column {exc.start + 1}): re-encode the file as UTF-8"
        ) from exc


def _text_field(line: str, number: int, path: Path) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidTextError(f"line {number} of {path} is not JSON: {exc.msg}") from exc
    text = record.get(TEXT_FIELD) if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise InvalidTextError(f"line {number} of {path} has no string field {TEXT_FIELD!r}")
    return text
