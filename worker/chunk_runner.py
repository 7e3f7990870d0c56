"""Running one chunk: claim it, check its payload, embed what the cache lacks, store, count it once.

Every way out is accounted for: the chunk is counted done, counted failed (for good: raises
ChunkFailedError), or handed back for another attempt (RetryableChunkError, after its failure is
counted in Redis; a Redis error goes back untouched: nothing could be counted). Celery's side of
each outcome is in worker.tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import redis

from contract import keys
from contract.digest import DIGEST_BYTES, digest_for
from contract.jobs import ChunkPayload, ChunkRef, describe_positions, pack_positions
from contract.ledger import ChunkOutcome, Claim, ClaimStatus, failed_outcome
from worker.payload_check import PayloadRejected, check_positions, mismatched_positions, parse_payload
from worker.runtime import ProcessRuntime


def chunk_outcome(payload: ChunkPayload, truncated: list[bool], failed: dict[int, str]) -> ChunkOutcome:
    """Positions done and failed; a failed text names its input positions and why."""
    done = sum(len(places) for index, places in enumerate(payload.positions) if index not in failed)
    cut = sum(len(places) for places, flag in zip(payload.positions, truncated, strict=True) if flag)
    if not failed:
        return ChunkOutcome(done=done, truncated=cut)
    positions = sorted(position for index in failed for position in payload.positions[index])
    reasons = "; ".join(sorted(set(failed.values())))
    return ChunkOutcome(
        done=done,
        failed=len(positions),
        truncated=cut,
        error=f"inputs {describe_positions(positions)} failed: {reasons}",
        failed_positions=pack_positions(positions),
    )


class ChunkFailedError(Exception):
    """The chunk failed for good and is counted failed; raised so Flower shows it as FAILURE."""


class RetryableChunkError(Exception):
    """The chunk failed this time; its failure is counted and attempts remain."""


@dataclass
class ChunkRunner:
    runtime: ProcessRuntime
    node: str

    def run(self, ref: ChunkRef) -> str:
        settings = self.runtime.settings
        claim = self.runtime.ledger.claim(ref, self.node, settings.lease_s())
        if claim.status is ClaimStatus.LOST:
            self._give_up(ref, None, "its texts are gone from Redis (evicted, or lost in a restart)")
        if claim.status is not ClaimStatus.RUN:
            return f"skipped: {claim.status.value}"
        try:
            payload, digests = self._checked_payload(ref, claim)
        except PayloadRejected as exc:
            self._give_up(ref, None, f"refused: {exc}")
        if claim.failures >= settings.max_chunk_attempts:
            self._give_up(ref, payload, f"failed {claim.failures} times; last error: {claim.last_error}")
        try:
            # After a failure, run text by text: a text that kills its process or raises fails alone.
            return self._embed(ref, payload, digests, isolate=claim.failures > 0, poison=claim.poison)
        except redis.RedisError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            failures = self.runtime.ledger.record_failure(ref, error)
            if failures >= settings.max_chunk_attempts:
                self._give_up(ref, payload, f"failed {failures} times; last error: {error}")
            raise RetryableChunkError(f"chunk {ref.chunk} of job {ref.job_id}: {error}") from exc

    def _checked_payload(self, ref: ChunkRef, claim: Claim) -> tuple[ChunkPayload, list[str]]:
        """Parse and bound the payload and recompute every digest: the worker trusts no producer."""
        fingerprint = self.runtime.engine.fingerprint
        if claim.fingerprint != fingerprint:
            raise PayloadRejected(
                f"the job was submitted for build {claim.fingerprint}, this worker serves {fingerprint}"
            )
        payload = parse_payload(claim.payload, self.runtime.settings.max_payload_bytes)
        check_positions(payload, claim.total)
        digests = [digest_for(fingerprint, text) for text in payload.texts]
        stored = self._stored_digests(ref.job_id, [p for places in payload.positions for p in places])
        wrong = mismatched_positions(payload, digests, stored)
        if wrong:
            raise PayloadRejected(
                f"texts do not match the job's inputs at positions {describe_positions(wrong)}"
            )
        return payload, digests

    def _stored_digests(self, job_id: str, positions: list[int]) -> dict[int, bytes]:
        pipe = self.runtime.redis.pipeline(transaction=False)
        key = keys.job_digests_key(job_id)
        for position in positions:
            pipe.getrange(key, position * DIGEST_BYTES, (position + 1) * DIGEST_BYTES - 1)
        return dict(zip(positions, pipe.execute(), strict=True))

    def _embed(
        self, ref: ChunkRef, payload: ChunkPayload, digests: list[str], isolate: bool, poison: frozenset[int]
    ) -> str:
        engine, cache = self.runtime.engine, self.runtime.cache
        fingerprint = engine.fingerprint
        cached = cache.touch(fingerprint, digests)
        missing = [i for i, hit in enumerate(cached) if not hit]
        hits = [i for i, hit in enumerate(cached) if hit]
        truncated = [False] * len(digests)
        failed: dict[int, str] = {}
        if missing and isolate:
            missing, failed = self._embed_isolated(ref, payload, missing, poison)
        elif missing:
            result = engine.embed([payload.texts[i] for i in missing])
            cache.write(fingerprint, [digests[i] for i in missing], result.vectors, result.truncated)
            for index, flag in zip(missing, result.truncated, strict=True):
                truncated[index] = flag
        for index, flag in zip(hits, cache.truncated(fingerprint, [digests[i] for i in hits]), strict=True):
            truncated[index] = flag
        counted = self.runtime.ledger.complete(ref, chunk_outcome(payload, truncated, failed))
        note = "" if counted == 1 else " (already counted)"
        return f"{len(missing)} embedded, {len(hits)} cached, {len(failed)} failed{note}"

    def _embed_isolated(
        self, ref: ChunkRef, payload: ChunkPayload, indices: list[int], poison: frozenset[int]
    ) -> tuple[list[int], dict[int, str]]:
        """Text by text, each announced first: the process that dies names the text that killed it."""
        engine, cache, ledger = self.runtime.engine, self.runtime.cache, self.runtime.ledger
        embedded: list[int] = []
        failed = {index: "killed the worker process that embedded it" for index in indices if index in poison}
        for index in indices:
            if index in failed:
                continue
            ledger.mark_running(ref, index)
            try:
                result = engine.embed([payload.texts[index]])
            except Exception as exc:
                failed[index] = f"{type(exc).__name__}: {exc}"
                continue
            digest = digest_for(engine.fingerprint, payload.texts[index])
            cache.write(engine.fingerprint, [digest], result.vectors, result.truncated)
            embedded.append(index)
        ledger.mark_running(ref, None)
        return embedded, failed

    def _give_up(self, ref: ChunkRef, payload: ChunkPayload | None, reason: str) -> NoReturn:
        """Count the chunk failed, naming its input positions, so its job ends; then say so."""
        self.runtime.ledger.complete(ref, failed_outcome(payload, f"chunk {ref.chunk} {reason}"))
        raise ChunkFailedError(f"chunk {ref.chunk} of job {ref.job_id} {reason}")
