"""The job record, the chunk payload and the chunk reference, each with its own encode/decode."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import Field as Field_
from dataclasses import dataclass, field, fields
from enum import Enum
from functools import cache

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator
from redis.typing import EncodableT, FieldT

from contract.codec import VECTOR_DTYPE
from contract.digest import DIGEST_BYTES
from contract.lanes import Lane

POSITION_DTYPE = np.dtype("<u4")
STORED = "stored"  # dataclass field metadata: False for what the record carries but Redis does not keep


class JobState(str, Enum):
    QUEUED = "queued"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self is not JobState.QUEUED


@dataclass
class JobRecord:
    """Counts are of input positions: a text given three times counts three when its vector lands.

    A job ends when every chunk is counted (`counted == chunks`), done or failed, whatever the
    position counts say; `updated` is when it last made progress (the stall check reads it).
    """

    id: str
    total: int
    fingerprint: str
    dims: int
    model: str = ""
    lane: Lane = Lane.BULK
    chunks: int = 0
    counted: int = 0
    done: int = 0
    failed: int = 0
    truncated: int = 0
    state: JobState = JobState.QUEUED
    created: float = 0.0
    updated: float = 0.0
    finished: float = 0.0
    error: str = ""
    notify: str = ""  # a waiting client's own channel, where the job's end is announced too ("": none)
    # Not stored: the vectors (digest -> encoded vector) the end's announcement on `notify` carried.
    carried: dict[str, bytes] = field(
        default_factory=dict, compare=False, repr=False, metadata={STORED: False}
    )

    def to_redis(self) -> dict[FieldT, EncodableT]:
        return {spec.name: _text(getattr(self, spec.name)) for spec in _stored_fields()}

    @classmethod
    def from_redis(cls, raw: Mapping[bytes | str, bytes | str]) -> JobRecord:
        parsers = _record_parsers()
        kwargs = {}
        for key, value in raw.items():
            name = _str(key)
            if name in parsers:
                kwargs[name] = parsers[name](_str(value))
        return cls(**kwargs)


class ChunkPayload(BaseModel):
    """A chunk's distinct texts and, for each, the input positions it fills (stored in Redis as JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    texts: list[StrictStr] = Field(min_length=1)
    positions: list[list[StrictInt]] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_position_list_per_text(self) -> ChunkPayload:
        if len(self.positions) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.positions)} position lists")
        if any(not places for places in self.positions):
            raise ValueError("a text with no input position")
        return self

    def flat_positions(self) -> list[int]:
        return sorted(position for places in self.positions for position in places)


TEXTS_HEADER = "embedfleet_texts"
NO_ARGS = "()"  # a chunk's task takes keyword arguments only


@dataclass(frozen=True)
class ChunkRef:
    """What a Celery message carries: which chunk of which job, nothing a reader could misuse.

    `texts` (how many texts the chunk holds; 0 where unknown) also travels as a message header, so
    a worker can tell small waiting chunks from big ones without fetching their payloads.
    """

    job_id: str
    chunk: int
    texts: int = field(default=0, compare=False)

    @property
    def task_id(self) -> str:
        """Stable per chunk, so a revoke from Flower names the chunk and a re-send keeps its id."""
        return f"{self.job_id}.{self.chunk}"

    def to_kwargs(self) -> dict[str, object]:
        return {"job_id": self.job_id, "chunk": self.chunk, "texts": self.texts}

    @property
    def summary(self) -> str:
        """What monitoring shows for the task's arguments (its kwargsrepr)."""
        return f"job {self.job_id} chunk {self.chunk}"

    def headers(self) -> dict[str, int]:
        return {TEXTS_HEADER: self.texts}

    def send_options(self) -> dict[str, object]:
        """Celery `send_task` options: the stable task id, the summary monitoring shows, the size header."""
        return {
            "task_id": self.task_id,
            "argsrepr": NO_ARGS,
            "kwargsrepr": self.summary,
            "headers": self.headers(),
        }

    @classmethod
    def from_task_id(cls, task_id: str) -> ChunkRef | None:
        """The chunk a task id names, or None for a task id of another kind."""
        job_id, _, chunk = task_id.rpartition(".")
        return cls(job_id, int(chunk)) if job_id and chunk.isdigit() else None

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, object]) -> ChunkRef:
        job_id, chunk, texts = kwargs.get("job_id"), kwargs.get("chunk"), kwargs.get("texts", 0)
        if not isinstance(job_id, str) or not _count(chunk) or not _count(texts):
            raise ValueError(f"not a chunk reference: job_id={job_id!r:.40}, chunk={chunk!r:.20}")
        return cls(job_id, int(chunk), int(texts))  # type: ignore[call-overload]


def headers_of(raw_message: bytes | str) -> dict[str, object]:
    """The headers of a raw Celery message as kombu keeps it in a Redis list ({} if unreadable)."""
    try:
        message = json.loads(raw_message)
    except ValueError:
        return {}
    headers = message.get("headers") if isinstance(message, dict) else None
    return headers if isinstance(headers, dict) else {}


def task_id_of(raw_message: bytes | str) -> str:
    return str(headers_of(raw_message).get("id", ""))


def ref_of(raw_message: bytes | str) -> ChunkRef | None:
    """The chunk a raw message names, with its size header (0 where missing), or None."""
    return ref_in(headers_of(raw_message))


def ref_in(headers: Mapping[str, object]) -> ChunkRef | None:
    """The chunk a message's headers name (its task id and size header), or None."""
    ref = ChunkRef.from_task_id(str(headers.get("id", "")))
    texts = headers.get(TEXTS_HEADER, 0)
    return ChunkRef(ref.job_id, ref.chunk, texts if _count(texts) else 0) if ref else None  # type: ignore[arg-type]


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def pack_digests(digests: list[str]) -> bytes:
    return b"".join(bytes.fromhex(digest) for digest in digests)


def unpack_digests(blob: bytes) -> list[str]:
    return [blob[i : i + DIGEST_BYTES].hex() for i in range(0, len(blob), DIGEST_BYTES)]


def pack_positions(positions: list[int]) -> bytes:
    return np.asarray(positions, dtype=POSITION_DTYPE).tobytes()


def unpack_positions(blob: bytes) -> list[int]:
    return sorted(set(np.frombuffer(blob, dtype=POSITION_DTYPE).tolist()))


def describe_positions(positions: list[int], shown: int = 10) -> str:
    """`3, 17, 201 and 12 more`: names the inputs a caller must act on without flooding a log."""
    head = ", ".join(str(position) for position in positions[:shown])
    rest = len(positions) - shown
    return f"{head} and {rest} more" if rest > 0 else head


def ended_record(announcement: bytes | str) -> JobRecord | None:
    """The final record an announcement carries when its job ended; None for a progress count.

    Ending a job publishes the whole record (a JSON array of field/value pairs, as Lua's cjson
    writes HGETALL), so a waiter that hears it needs no status read. On the waiter's own channel a
    job of one chunk also carries the vectors that chunk computed, after a newline (cjson escapes
    every newline inside the JSON): 32 digest bytes then the encoded vector, for each text; its
    waiter then reads from the cache only the vectors it did not carry.
    """
    head, vectors = (
        announcement.partition(b"\n")[::2] if isinstance(announcement, bytes) else (announcement, b"")
    )
    try:
        pairs = json.loads(head)
    except ValueError:
        return None
    if not isinstance(pairs, list) or len(pairs) % 2 or not all(isinstance(item, str) for item in pairs):
        return None
    try:
        record = JobRecord.from_redis(dict(zip(pairs[::2], pairs[1::2], strict=True)))
    except (TypeError, ValueError):  # not a whole record
        return None
    if not record.state.finished:
        return None
    record.carried = unpack_carried(vectors, record.dims)
    return record


def pack_carried(digests: Sequence[str], vectors: Sequence[bytes]) -> bytes:
    """Vectors for an ended job's announcement (see `ended_record`)."""
    return b"".join(bytes.fromhex(digest) + vector for digest, vector in zip(digests, vectors, strict=True))


def unpack_carried(blob: bytes, dims: int) -> dict[str, bytes]:
    """{digest: encoded vector}; nothing where the blob is not whole (the waiter reads the cache)."""
    size = DIGEST_BYTES + dims * VECTOR_DTYPE.itemsize
    if not blob or len(blob) % size:
        return {}
    starts = range(0, len(blob), size)
    return {blob[at : at + DIGEST_BYTES].hex(): blob[at + DIGEST_BYTES : at + size] for at in starts}


def _text(value: object) -> str:
    return value.value if isinstance(value, Enum) else str(value)


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


FIELD_TYPES: dict[object, type] = {"int": int, "float": float, "str": str, "JobState": JobState, "Lane": Lane}


@cache
def _record_parsers() -> dict[str, type]:
    """Field annotations are strings here (postponed evaluation); Redis gives every value as text."""
    return {spec.name: FIELD_TYPES.get(spec.type, str) for spec in _stored_fields()}


@cache
def _stored_fields() -> tuple[Field_, ...]:
    return tuple(spec for spec in fields(JobRecord) if spec.metadata.get(STORED, True))


def stall_error(record: JobRecord, stall_timeout_s: float) -> str:
    """Why a job that no live worker served was ended: the reconciler and a waiting client say the same."""
    return (
        f"no live worker served build {record.fingerprint} of {record.model} for {stall_timeout_s:.0f} s: "
        "start workers of that build (`celery -A worker worker` with its artifact), then call "
        "job.resume() or resubmit the texts"
    )
