"""The job protocol's atomic steps in Redis, one Lua file each (contract/lua/), for both sides.

Workers claim and complete chunks and record failures; producers and the reconciler end jobs
(cancel, stall). Each step is idempotent or counts by set membership, so a step retried after a
lost reply, or a chunk delivered twice, never counts twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import redis
from pydantic import ValidationError
from redis.client import Pipeline
from redis.typing import EncodableT

from contract import keys
from contract.digest import DIGEST_BYTES
from contract.jobs import ChunkPayload, ChunkRef, JobRecord, JobState, describe_positions, pack_positions
from contract.lua_scripts import load_lua
from contract.redis_connection import as_bytes, as_text, server_time

NO_SUCH_KEY = -2  # what TTL answers for a key that does not exist


class ClaimStatus(str, Enum):
    GONE = "gone"
    FINISHED = "finished"
    COUNTED = "counted"
    LOST = "lost"
    RUN = "run"


@dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    payload: bytes
    failures: int
    last_error: str
    total: int
    fingerprint: str
    poison: frozenset[int] = frozenset()


@dataclass(frozen=True)
class ChunkOutcome:
    """What counting a chunk adds to its job: positions done and failed, and why some failed."""

    done: int
    failed: int = 0
    truncated: int = 0
    error: str = ""
    failed_positions: bytes = b""


def _claim(reply: Sequence[object]) -> Claim:
    status, payload, failures, last_error, total, fingerprint, poison = reply
    return Claim(
        ClaimStatus(as_text(status)),
        as_bytes(payload),
        int(as_text(failures)),
        as_text(last_error),
        int(as_text(total)),
        as_text(fingerprint),
        frozenset(int(index) for index in as_text(poison).split(",") if index),
    )


def end_job_call(
    job_id: str, state: JobState, error: str, unless_progress_since: float | None
) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of end_job.lua (the sync and the asyncio client run the same script)."""
    bound = "" if unless_progress_since is None else f"{unless_progress_since:.6f}"
    script_keys = [
        keys.job_key(job_id),
        keys.running_jobs_key(),
        keys.job_payloads_key(job_id),
        keys.job_leases_key(job_id),
        keys.job_orphans_key(job_id),
        keys.stats_key(),
    ]
    return script_keys, [state.value, error, keys.job_channel(job_id), job_id, bound]


def failed_outcome(payload: ChunkPayload | None, error: str) -> ChunkOutcome:
    """A failed chunk's count, naming the input positions it leaves without vectors."""
    if payload is None:
        return ChunkOutcome(done=0, error=error)
    positions = payload.flat_positions()
    return ChunkOutcome(
        done=0,
        failed=len(positions),
        error=f"inputs {describe_positions(positions)} failed: {error}",
        failed_positions=pack_positions(positions),
    )


class JobLedger:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        # Pipelines EVAL the claim and complete steps: with a registered Script, redis-py first sends
        # SCRIPT EXISTS for it, one more round trip per batch (Redis caches EVAL's scripts by SHA too).
        self._end = client.register_script(load_lua("end_job"))

    def record(self, job_id: str) -> JobRecord | None:
        raw = self.redis.hgetall(keys.job_key(job_id))
        return JobRecord.from_redis(raw) if raw else None

    def payload(self, ref: ChunkRef) -> ChunkPayload | None:
        """The chunk's payload, or None when it is gone or unreadable."""
        raw = self.redis.hget(keys.job_payloads_key(ref.job_id), str(ref.chunk))
        if raw is None:
            return None
        try:
            return ChunkPayload.model_validate_json(raw)
        except ValidationError:
            return None

    def server_time(self) -> float:
        """Redis' clock: every host compares progress times against the same one."""
        return server_time(self.redis)

    def claim_many(
        self, refs: Sequence[ChunkRef], node: str, lease_s: float, pipe: Pipeline | None = None
    ) -> list[Claim]:
        """Claim several chunks in one round trip (a worker batching small chunks together); `pipe`
        may hold commands to send first (their replies are dropped)."""
        pipe = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        for ref in refs:
            job = ref.job_id
            chunk_keys = [
                keys.job_key(job),
                keys.job_chunks_done_key(job),
                keys.job_payloads_key(job),
                keys.job_leases_key(job),
                keys.job_attempts_key(job),
            ]
            pipe.eval(load_lua("claim_chunk"), len(chunk_keys), *chunk_keys, ref.chunk, node, int(lease_s))
        replies = pipe.execute()
        return [_claim(reply) for reply in replies[len(replies) - len(refs) :]]

    def mark_running(self, ref: ChunkRef, index: int | None) -> None:
        """During an isolated retry: which text runs now (None: none), so a death names its text."""
        key, field = keys.job_attempts_key(ref.job_id), f"running:{ref.chunk}"
        if index is None:
            self.redis.hdel(key, field)
        else:
            self.redis.hset(key, field, index)

    def record_failure(self, ref: ChunkRef, error: str) -> int:
        """One more failure of this chunk (an error, or its process died); returns the count."""
        key = keys.job_attempts_key(ref.job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(key, f"failures:{ref.chunk}", 1)
        pipe.hset(key, f"error:{ref.chunk}", error)
        pipe.ttl(keys.job_key(ref.job_id))
        failures, _, ttl = pipe.execute()
        if int(ttl) > 0:
            self.redis.expire(key, int(ttl))
        elif int(ttl) == NO_SUCH_KEY:  # the job is gone: leave nothing behind that never expires
            self.redis.delete(key)
        return int(failures)

    def complete(self, ref: ChunkRef, outcome: ChunkOutcome) -> int:
        """Count the chunk once (done or failed) and announce progress; see complete_chunk.lua."""
        return self.complete_many([(ref, outcome)])[0]

    def complete_many(self, outcomes: Sequence[tuple[ChunkRef, ChunkOutcome]]) -> list[int]:
        """Count several chunks in one round trip; each is counted once, as with `complete`."""
        pipe = self.redis.pipeline(transaction=False)
        for ref, outcome in outcomes:
            self.queue_complete(pipe, ref, outcome)
        return [int(counted) for counted in pipe.execute()]

    def queue_complete(
        self, pipe: Pipeline, ref: ChunkRef, outcome: ChunkOutcome, carried: bytes = b""
    ) -> None:
        """Add counting one chunk to `pipe` (its reply: 1 counted, 0 already counted, -1 job gone).

        `carried`: where the chunk is its whole job, the vectors it computed (contract.jobs.pack_carried)
        for the announcement of the job's end to its waiter."""
        job = ref.job_id
        chunk_keys = [
            keys.job_key(job),
            keys.job_chunks_done_key(job),
            keys.job_payloads_key(job),
            keys.job_leases_key(job),
            keys.job_orphans_key(job),
            keys.job_failed_positions_key(job),
            keys.running_jobs_key(),
            keys.stats_key(),
        ]
        args: list[EncodableT] = [
            ref.chunk,
            outcome.done,
            outcome.failed,
            outcome.truncated,
            outcome.error,
            outcome.failed_positions,
            keys.job_channel(job),
            job,
            carried,
        ]
        pipe.eval(load_lua("complete_chunk"), len(chunk_keys), *chunk_keys, *args)

    def end_job(
        self, job_id: str, state: JobState, error: str, unless_progress_since: float | None = None
    ) -> int:
        """End an unfinished job now; with `unless_progress_since`, only if it made no progress since."""
        script_keys, args = end_job_call(job_id, state, error, unless_progress_since)
        return int(self._end(keys=script_keys, args=args))


def queue_job_digests(pipe: Pipeline, job_id: str, positions: Sequence[int]) -> None:
    """Add to `pipe` the job's digest at each input position: one reply, a list (b"" past the end)."""
    pipe.eval(load_lua("read_digests"), 1, keys.job_digests_key(job_id), DIGEST_BYTES, *positions)
