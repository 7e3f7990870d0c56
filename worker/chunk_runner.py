"""Running chunks: claim them, check their payloads, embed what the cache lacks, store, count each once.

A task runs its own chunk and, on the interactive lane, the small chunks it carried off the queue
with it (worker.gathering): their texts go through the engine together, and each chunk is still
claimed, checked, counted, retried and failed on its own. Every way out is accounted for: a chunk
is counted done, counted failed (for good: the task's own chunk then raises ChunkFailedError), or
handed back for another attempt after its failure is counted (the task's own chunk through
RetryableChunkError, a carried one published again). A Redis error goes back untouched: nothing
could be counted. A chunk that failed before runs apart, text by text, so a text that kills its
process or raises fails alone. Celery's side of each outcome is in worker.tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


class _GaveUp(Exception):
    """A chunk was counted failed for good (the message says why)."""


@dataclass(frozen=True)
class ReadyChunk:
    """A claimed chunk whose payload passed every check."""

    ref: ChunkRef
    payload: ChunkPayload
    digests: list[str]
    failures: int
    poison: frozenset[int]


@dataclass
class BatchReport:
    chunks: int = 0
    embedded: int = 0
    cached: int = 0
    failed: int = 0
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        carried = f" ({self.chunks - 1} carried)" if self.chunks > 1 else ""
        skipped = f", skipped: {', '.join(self.skipped)}" if self.skipped else ""
        return (
            f"{self.chunks} chunk{'s' if self.chunks > 1 else ''}{carried}: {self.embedded} embedded, "
            f"{self.cached} cached, {self.failed} failed{skipped}"
        )


Republish = Callable[[ChunkRef], None]


@dataclass
class ChunkRunner:
    runtime: ProcessRuntime
    node: str
    republish: Republish | None = None

    def run(self, ref: ChunkRef, carried: Sequence[ChunkRef] = ()) -> str:
        """Run the task's chunk and the chunks it carried; raise only for the task's own chunk."""
        refs = [ref, *carried]
        claims = self.runtime.ledger.claim_many(refs, self.node, self.runtime.settings.lease_s())
        report = BatchReport(chunks=len(refs))
        ready: list[ReadyChunk] = []
        own_failure = ""
        for chunk_ref, claim in zip(refs, claims, strict=True):
            try:
                chunk = self._prepare(chunk_ref, claim)
            except _GaveUp as exc:
                report.failed += 1
                own_failure = str(exc) if chunk_ref == ref else own_failure
                continue
            if chunk is None:
                report.skipped.append(claim.status.value)
            else:
                ready.append(chunk)
        self._run_together([c for c in ready if not c.failures], ref, report)
        for chunk in (c for c in ready if c.failures):
            self._run_apart(chunk, report)
        if own_failure:
            raise ChunkFailedError(own_failure)
        return str(report)

    def _prepare(self, ref: ChunkRef, claim: Claim) -> ReadyChunk | None:
        """A chunk to run, None to skip, or _GaveUp once it is counted failed for good."""
        if claim.status is ClaimStatus.LOST:
            self._give_up(ref, None, "its texts are gone from Redis (evicted, or lost in a restart)")
        if claim.status is not ClaimStatus.RUN:
            return None
        try:
            payload, digests = self._checked_payload(ref, claim)
        except PayloadRejected as exc:
            self._give_up(ref, None, f"refused: {exc}")
        if claim.failures >= self.runtime.settings.max_chunk_attempts:
            self._give_up(ref, payload, f"failed {claim.failures} times; last error: {claim.last_error}")
        return ReadyChunk(ref, payload, digests, claim.failures, claim.poison)

    def _run_together(self, chunks: list[ReadyChunk], own: ChunkRef, report: BatchReport) -> None:
        if not chunks:
            return
        try:
            self._embed_together(chunks, report)
        except redis.RedisError:
            raise
        except Exception as exc:
            self._after_error(chunks, own, f"{type(exc).__name__}: {exc}", report)

    def _after_error(self, chunks: list[ReadyChunk], own: ChunkRef, error: str, report: BatchReport) -> None:
        """Every chunk of a batch that raised counts a failure; each retries apart (or fails for good)."""
        retry_own = False
        for chunk in chunks:
            failures = self.runtime.ledger.record_failure(chunk.ref, error)
            if failures >= self.runtime.settings.max_chunk_attempts:
                try:
                    self._give_up(chunk.ref, chunk.payload, f"failed {failures} times; last error: {error}")
                except _GaveUp as exc:
                    report.failed += 1
                    if chunk.ref == own:
                        raise ChunkFailedError(str(exc)) from exc
            elif chunk.ref == own:
                retry_own = True
            elif self.republish is not None:
                self.republish(chunk.ref)
        if retry_own:
            raise RetryableChunkError(f"chunk {own.chunk} of job {own.job_id}: {error}")

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

    def _embed_together(self, chunks: list[ReadyChunk], report: BatchReport) -> None:
        """One engine pass over the texts of every chunk that the cache lacks, each distinct text once."""
        engine, cache = self.runtime.engine, self.runtime.cache
        digests = list(dict.fromkeys(d for chunk in chunks for d in chunk.digests))
        texts = {d: t for chunk in chunks for d, t in zip(chunk.digests, chunk.payload.texts, strict=True)}
        cached = dict(zip(digests, cache.touch(engine.fingerprint, digests), strict=True))
        missing = [d for d in digests if not cached[d]]
        truncated: dict[str, bool] = {}
        if missing:
            result = engine.embed([texts[d] for d in missing])
            cache.write(engine.fingerprint, missing, result.vectors, result.truncated)
            truncated.update(zip(missing, result.truncated, strict=True))
        hits = [d for d in digests if cached[d]]
        truncated.update(zip(hits, cache.truncated(engine.fingerprint, hits), strict=True))
        outcomes = [
            (chunk.ref, chunk_outcome(chunk.payload, [truncated[d] for d in chunk.digests], {}))
            for chunk in chunks
        ]
        self.runtime.ledger.complete_many(outcomes)
        report.embedded += len(missing)
        report.cached += len(hits)

    def _run_apart(self, chunk: ReadyChunk, report: BatchReport) -> None:
        """Text by text, each announced first: the process that dies names the text that killed it."""
        engine, cache, ledger = self.runtime.engine, self.runtime.cache, self.runtime.ledger
        failed = {i: "killed the worker process that embedded it" for i in chunk.poison}
        hits = cache.touch(engine.fingerprint, chunk.digests)
        truncated = cache.truncated(engine.fingerprint, chunk.digests)
        for index, (text, digest) in enumerate(zip(chunk.payload.texts, chunk.digests, strict=True)):
            if index in failed or hits[index]:
                continue
            ledger.mark_running(chunk.ref, index)
            try:
                result = engine.embed([text])
            except Exception as exc:
                failed[index] = f"{type(exc).__name__}: {exc}"
                continue
            cache.write(engine.fingerprint, [digest], result.vectors, result.truncated)
            truncated[index] = result.truncated[0]
            report.embedded += 1
        ledger.mark_running(chunk.ref, None)
        ledger.complete(chunk.ref, chunk_outcome(chunk.payload, truncated, failed))
        report.failed += bool(failed)

    def _give_up(self, ref: ChunkRef, payload: ChunkPayload | None, reason: str) -> NoReturn:
        """Count the chunk failed, naming its input positions, so its job ends; then say so."""
        self.runtime.ledger.complete(ref, failed_outcome(payload, f"chunk {ref.chunk} {reason}"))
        raise _GaveUp(f"chunk {ref.chunk} of job {ref.job_id} {reason}")
