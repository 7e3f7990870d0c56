"""The job record and chunk message, with their own encode/decode (Redis hash, JSON task kwargs)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import Enum

from redis.typing import EncodableT, FieldT

from contract.digest import DIGEST_BYTES


class JobState(str, Enum):
    QUEUED = "queued"
    DONE = "done"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self is not JobState.QUEUED


@dataclass
class JobRecord:
    """Counts are of input positions: a text given three times counts three when its vector lands."""

    id: str
    total: int
    fingerprint: str
    dims: int
    chunks: int = 0
    done: int = 0
    failed: int = 0
    truncated: int = 0
    state: JobState = JobState.QUEUED
    created: float = 0.0
    finished: float = 0.0
    error: str = ""

    def to_redis(self) -> dict[FieldT, EncodableT]:
        return {key: _text(value) for key, value in asdict(self).items()}

    @classmethod
    def from_redis(cls, raw: Mapping[bytes | str, bytes | str]) -> JobRecord:
        data = {_str(key): _str(value) for key, value in raw.items()}
        kwargs = {spec.name: _parse(spec.type, data[spec.name]) for spec in fields(cls) if spec.name in data}
        return cls(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ChunkMessage:
    """What one Celery task carries: JSON-safe, self-contained, idempotent to re-run."""

    job_id: str
    chunk: int
    fingerprint: str
    texts: list[str]
    digests: list[str]
    counts: list[int] = field(default_factory=list)

    def positions(self) -> int:
        return sum(self.counts) if self.counts else len(self.texts)

    def to_kwargs(self) -> dict[str, object]:
        return asdict(self)


def pack_digests(digests: list[str]) -> bytes:
    return b"".join(bytes.fromhex(digest) for digest in digests)


def unpack_digests(blob: bytes) -> list[str]:
    return [blob[i : i + DIGEST_BYTES].hex() for i in range(0, len(blob), DIGEST_BYTES)]


def _text(value: object) -> str:
    return value.value if isinstance(value, Enum) else str(value)


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


FIELD_TYPES: dict[object, type] = {"int": int, "float": float, "str": str, "JobState": JobState}


def _parse(annotation: object, value: str) -> object:
    """Field annotations are strings here (postponed evaluation); Redis gives every value as text."""
    return FIELD_TYPES.get(annotation, str)(value)
