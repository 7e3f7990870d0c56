"""What a job's state means to its caller, the same for the sync and the asyncio client.

Pure: the errors a caller meets (each saying what to do next), when a wait has stalled, and how
fetched vectors become the result matrix. The clients only fetch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from contract.codec import VECTOR_DTYPE, Matrix, decode_vectors
from contract.jobs import JobRecord, JobState, describe_positions
from contract.redis_connection import mask_url
from contract.settings import FleetSettings
from producer.errors import (
    EmbedFleetError,
    FleetUnavailableError,
    JobFailedError,
    JobLostError,
    JobNotFoundError,
    JobTimeoutError,
    ResultIncompleteError,
)

Missing = Literal["raise", "mask", "recompute"]
CANCELLED_ERROR = "cancelled by its caller"
CALL_RETRY_S = 1.0  # a client call rides out a blip this long; wait() rides out EMBED_REDIS_OUTAGE_S
OUTAGE_BACKOFF_S = 0.5
RECOMPUTE_ROUNDS = 3  # an LRU cache can evict fresh vectors before they are read; each round embeds fewer


def missing_record(job_id: str, seen: bool, settings: FleetSettings) -> EmbedFleetError:
    """No record: lost, when this caller saw it before; else not found."""
    url = mask_url(settings.cache_url)
    if seen:
        return JobLostError(
            f"job {job_id} vanished from {url} (Redis restarted without persistence, was flushed, or "
            "evicted it): call job.resume() to submit the same texts again"
        )
    return JobNotFoundError(
        f"no job {job_id} on {url}: check the id and EMBED_CACHE_URL (jobs expire after "
        f"EMBED_JOB_TTL_S={settings.job_ttl_s})"
    )


def check_finished(record: JobRecord, missing: Missing, failed_positions: list[int]) -> None:
    """A result needs an ended job; one that failed or was cancelled raises unless rows may be masked."""
    if record.state is JobState.QUEUED:
        raise EmbedFleetError(
            f"job {record.id} is still running ({record.done}/{record.total}): call wait() first"
        )
    if record.state is not JobState.DONE and missing != "mask":
        raise JobFailedError(f"job {record.id} {record.state.value}: {record.error}", failed_positions)


def still_to_read(digests: Sequence[str], carried: Mapping[str, bytes]) -> list[str]:
    """The distinct digests whose vectors the job's end did not carry: to read from the cache."""
    return [digest for digest in dict.fromkeys(digests) if digest not in carried]


def in_input_order(
    digests: Sequence[str], carried: Mapping[str, bytes], wanted: Sequence[str], read: Sequence[bytes | None]
) -> list[bytes | None]:
    """One vector (or None) per input position, from what was carried and what was read."""
    found: dict[str, bytes | None] = {**dict(zip(wanted, read, strict=True)), **carried}
    return [found.get(digest) for digest in digests]


def assemble(record: JobRecord, blobs: list[bytes | None], missing: Missing) -> Matrix:
    """Exactly `total` rows in input order; rows without a vector raise or are masked."""
    absent = [position for position, blob in enumerate(blobs) if blob is None]
    if absent and missing != "mask":
        what = (
            f"still gone after {RECOMPUTE_ROUNDS} rounds of recompute: the cache Redis evicts vectors "
            "before they can be read, so raise its maxmemory or use missing='mask'"
            if missing == "recompute"
            else "call result(missing='recompute') on the Job that submit() returned, or resubmit the texts"
        )
        raise ResultIncompleteError(
            f"{len(absent)} of {record.total} vectors of job {record.id} are gone from the cache "
            f"(evicted or past EMBED_CACHE_TTL_S), inputs {describe_positions(absent)}: {what}",
            absent,
        )
    empty = bytes(VECTOR_DTYPE.itemsize * record.dims)  # a masked row's placeholder
    vectors = decode_vectors([blob or empty for blob in blobs], record.dims)
    if vectors.shape[0] != record.total:
        raise EmbedFleetError(f"job {record.id}: {vectors.shape[0]} rows for {record.total} inputs")
    if missing != "mask":
        return vectors
    mask = np.zeros(vectors.shape, dtype=bool)
    mask[absent] = True
    return np.ma.MaskedArray(vectors, mask=mask)


def no_texts(job_id: str, absent: int = 0) -> EmbedFleetError:
    what = (
        f"{absent} vectors of job {job_id} were evicted and this Job"
        if absent
        else f"job {job_id} was re-attached by id, so this Job"
    )
    return ResultIncompleteError(f"{what} holds no texts: pass them (job.resume(texts)) or resubmit them")


def wait_timeout(job_id: str, record: JobRecord | None, timeout: float | None) -> JobTimeoutError:
    done = f" ({record.done}/{record.total} done)" if record is not None else ""
    return JobTimeoutError(
        f"job {job_id} not finished after {timeout}s{done}; it keeps "
        f"running: wait again or re-attach with client.job({job_id!r})"
    )


def outage(job_id: str, settings: FleetSettings, waited_s: float, exc: Exception) -> FleetUnavailableError:
    return FleetUnavailableError(
        f"Redis at {mask_url(settings.cache_url)} unreachable for {waited_s:.0f} s ({exc}); job {job_id} "
        f"may still finish: re-attach with client.job({job_id!r})"
    )


class StallClock:
    """When the job's progress last changed, on this host's monotonic clock."""

    def __init__(self) -> None:
        self.mark: tuple[int, float] | None = None
        self.since = time.monotonic()

    def stalled(self, record: JobRecord, stall_timeout_s: float) -> bool:
        """True once per stall period without progress; the clock restarts each time it says so."""
        mark = (record.counted, record.updated)
        now = time.monotonic()
        if mark != self.mark:
            self.mark, self.since = mark, now
            return False
        if now - self.since < stall_timeout_s:
            return False
        self.since = now
        return True


def pause_s(
    deadline: float | None, job_id: str, record: JobRecord | None, timeout: float | None, poll_s: float
) -> float:
    """How long to wait for the next announcement; raises once the caller's timeout has passed."""
    if deadline is None:
        return poll_s
    left = deadline - time.monotonic()
    if left <= 0:
        raise wait_timeout(job_id, record, timeout)
    return min(poll_s, left)
