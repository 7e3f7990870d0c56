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
from functools import partial
from typing import TYPE_CHECKING, NoReturn, TypeVar

import redis

from contract.codec import encode_vector
from contract.digest import digest_for
from contract.jobs import ChunkPayload, ChunkRef, describe_positions, pack_carried, pack_positions
from contract.ledger import ChunkOutcome, Claim, ClaimStatus, failed_outcome, queue_job_digests
from worker import metrics
from worker.payload_check import PayloadRejected, check_positions, mismatched_positions, parse_payload

if TYPE_CHECKING:  # Flower imports the task module without the model runtime
    from worker.gathering import CarriedNote
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


@dataclass
class ReadyChunk:
    """A claimed chunk whose payload parsed; `_inspect` adds what Redis holds for its texts."""

    ref: ChunkRef
    payload: ChunkPayload
    digests: list[str]
    failures: int
    poison: frozenset[int]
    whole_job: bool  # the chunk holds every input of its job (a small job): its end carries vectors
    stored: dict[int, bytes] = field(default_factory=dict)
    cached: list[bool] = field(default_factory=list)
    cut: list[bool] = field(default_factory=list)

    def positions(self) -> list[int]:
        return [position for places in self.payload.positions for position in places]


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
T = TypeVar("T")


@dataclass
class ChunkRunner:
    """A whole batch takes three round trips to Redis: claim, inspect (digests, cache), store and count."""

    runtime: ProcessRuntime
    node: str
    republish: Republish | None = None
    before_each_run: Callable[[], object] | None = None

    def run(self, ref: ChunkRef, carried: Sequence[ChunkRef] = (), note: CarriedNote | None = None) -> str:
        """Run the task's chunk and the chunks it carried; raise only for the task's own chunk.

        `note` (of the carried chunks) is written with their claims and dropped with their counts
        where every chunk runs in the shared batch; else it stays for the caller to forget."""
        report, tally = self._measured_run(ref, carried, note)
        if tally.own_failure:
            raise ChunkFailedError(tally.own_failure)
        if tally.own_retry:
            raise RetryableChunkError(tally.own_retry)
        return str(report)

    def serve(self, refs: Sequence[ChunkRef], note: CarriedNote | None = None) -> BatchReport:
        """Run chunks that have no task of their own in this process; one to retry is published again."""
        report, tally = self._measured_run(refs[0], refs[1:], note)
        if tally.own_retry and self.republish is not None:
            self.republish(refs[0])
        return report

    def _measured_run(
        self, ref: ChunkRef, carried: Sequence[ChunkRef], note: CarriedNote | None
    ) -> tuple[BatchReport, _Tally]:
        with metrics.CHUNK_SECONDS.time():
            report, tally = self._run(ref, carried, note)
        metrics.CHUNKS.labels("skipped").inc(len(report.skipped))
        metrics.CHUNKS.labels("failed").inc(report.failed)
        metrics.CHUNKS.labels("done").inc(report.chunks - report.failed - len(report.skipped))
        metrics.TEXTS.labels("embedded").inc(report.embedded)
        metrics.TEXTS.labels("cached").inc(report.cached)
        return report, tally

    def _run(
        self, ref: ChunkRef, carried: Sequence[ChunkRef], note: CarriedNote | None
    ) -> tuple[BatchReport, _Tally]:
        """Every chunk is seen through before the task's own outcome is raised (by `run`)."""
        refs = [ref, *carried]
        pipe = self.runtime.redis.pipeline(transaction=False)
        if note is not None:
            note.queue_write(pipe)
        claims = self.runtime.ledger.claim_many(refs, self.node, self.runtime.settings.lease_s(), pipe)
        report = BatchReport(chunks=len(refs))
        outcome = _Tally(ref, report)
        prepared = [
            outcome.guard(partial(self._prepare, r, c, report), r) for r, c in zip(refs, claims, strict=True)
        ]
        ready = self._inspect([chunk for chunk in prepared if chunk is not None])
        ready = [chunk for chunk in ready if outcome.guard(partial(self._check_digests, chunk), chunk.ref)]
        apart = [c for c in ready if c.failures]
        # A chunk that runs apart may kill its process: the note must outlive the shared batch then.
        self._run_together([c for c in ready if not c.failures], outcome, None if apart else note)
        for chunk in apart:
            self._run_apart(chunk, report)
        return report, outcome

    def _prepare(self, ref: ChunkRef, claim: Claim, report: BatchReport) -> ReadyChunk | None:
        """A chunk to run, None to skip, or _GaveUp once it is counted failed for good."""
        if claim.status is ClaimStatus.LOST:
            self._give_up(ref, None, "its texts are gone from Redis (evicted, or lost in a restart)")
        if claim.status is not ClaimStatus.RUN:
            report.skipped.append(claim.status.value)
            return None
        fingerprint = self.runtime.engine.fingerprint
        try:
            if claim.fingerprint != fingerprint:
                raise PayloadRejected(
                    f"the job was submitted for build {claim.fingerprint}, this worker serves {fingerprint}"
                )
            payload = parse_payload(claim.payload, self.runtime.settings.max_payload_bytes)
            check_positions(payload, claim.total)
        except PayloadRejected as exc:
            self._give_up(ref, None, f"refused: {exc}")
        if claim.failures >= self.runtime.settings.max_chunk_attempts:
            self._give_up(ref, payload, f"failed {claim.failures} times; last error: {claim.last_error}")
        digests = [digest_for(fingerprint, text) for text in payload.texts]
        whole_job = sum(len(places) for places in payload.positions) == claim.total
        return ReadyChunk(ref, payload, digests, claim.failures, claim.poison, whole_job)

    def _inspect(self, chunks: list[ReadyChunk]) -> list[ReadyChunk]:
        """One round trip: the job's digest at every position, and what the cache holds of each text
        (one look for the texts of every chunk together)."""
        if not chunks:
            return chunks
        cache, fingerprint = self.runtime.cache, self.runtime.engine.fingerprint
        digests = [digest for chunk in chunks for digest in chunk.digests]
        pipe = self.runtime.redis.pipeline(transaction=False)
        for chunk in chunks:
            queue_job_digests(pipe, chunk.ref.job_id, chunk.positions())
        cache.queue_look(pipe, fingerprint, digests)
        replies = pipe.execute()
        cached, cut = cache.read_look(replies[len(chunks) :], len(digests))
        start = 0
        for chunk, stored in zip(chunks, replies, strict=False):
            end = start + len(chunk.digests)
            chunk.stored = dict(zip(chunk.positions(), stored, strict=True))
            chunk.cached, chunk.cut = cached[start:end], cut[start:end]
            start = end
        return chunks

    def _check_digests(self, chunk: ReadyChunk) -> ReadyChunk:
        """The worker trusts no producer: each text must hash to the job's digest at its positions."""
        wrong = mismatched_positions(chunk.payload, chunk.digests, chunk.stored)
        if wrong:
            reason = f"refused: texts do not match the job's inputs at positions {describe_positions(wrong)}"
            self._give_up(chunk.ref, None, reason)
        return chunk

    def _run_together(self, chunks: list[ReadyChunk], outcome: _Tally, note: CarriedNote | None) -> None:
        if not chunks:
            return
        try:
            self._embed_together(chunks, outcome.report, note)
        except redis.RedisError:
            raise
        except Exception as exc:
            self._after_error(chunks, f"{type(exc).__name__}: {exc}", outcome)

    def _embed_together(
        self, chunks: list[ReadyChunk], report: BatchReport, note: CarriedNote | None
    ) -> None:
        """One engine pass over every text the cache lacks (each distinct text once), then one round
        trip that stores the vectors, counts every chunk and drops the note of those carried."""
        engine, cache = self.runtime.engine, self.runtime.cache
        texts: dict[str, str] = {}
        truncated: dict[str, bool] = {}
        for chunk in chunks:
            for digest, text, hit, cut in zip(
                chunk.digests, chunk.payload.texts, chunk.cached, chunk.cut, strict=True
            ):
                if hit:
                    truncated[digest] = cut
                else:
                    texts[digest] = text
        missing = [digest for digest in texts if digest not in truncated]
        pipe = self.runtime.redis.pipeline(transaction=False)
        computed: dict[str, bytes] = {}
        if missing:
            metrics.BATCH_TEXTS.observe(len(missing))
            result = engine.embed([texts[digest] for digest in missing], self.before_each_run)
            encoded = [encode_vector(vector) for vector in result.vectors]
            cache.queue_write(pipe, engine.fingerprint, missing, encoded, result.truncated)
            truncated.update(zip(missing, result.truncated, strict=True))
            computed = dict(zip(missing, encoded, strict=True))
        for chunk in chunks:
            outcome = chunk_outcome(chunk.payload, [truncated[d] for d in chunk.digests], {})
            self.runtime.ledger.queue_complete(pipe, chunk.ref, outcome, _carried(chunk, computed))
        if note is not None:
            note.queue_forget(pipe)
        pipe.execute()
        if note is not None:
            note.forgotten = True
        report.embedded += len(missing)
        report.cached += sum(sum(chunk.cached) for chunk in chunks)

    def _after_error(self, chunks: list[ReadyChunk], error: str, outcome: _Tally) -> None:
        """Every chunk of a batch that raised counts a failure; each retries apart (or fails for good)."""
        own = outcome.own
        for chunk in chunks:
            failures = self.runtime.ledger.record_failure(chunk.ref, error)
            if failures >= self.runtime.settings.max_chunk_attempts:
                reason = f"failed {failures} times; last error: {error}"
                outcome.guard(partial(self._give_up, chunk.ref, chunk.payload, reason), chunk.ref)
            elif chunk.ref == own:
                outcome.own_retry = f"chunk {own.chunk} of job {own.job_id}: {error}"
            elif self.republish is not None:
                self.republish(chunk.ref)

    def _run_apart(self, chunk: ReadyChunk, report: BatchReport) -> None:
        """Text by text, each announced first: the process that dies names the text that killed it."""
        engine, cache, ledger = self.runtime.engine, self.runtime.cache, self.runtime.ledger
        failed = {i: "killed the worker process that embedded it" for i in chunk.poison}
        truncated = list(chunk.cut)
        for index, (text, digest) in enumerate(zip(chunk.payload.texts, chunk.digests, strict=True)):
            if index in failed or chunk.cached[index]:
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


def _carried(chunk: ReadyChunk, computed: dict[str, bytes]) -> bytes:
    """The vectors the end of a chunk's job announces to its waiter: of a whole small job, those
    this run computed (the waiter reads the cached ones, and those of bigger jobs, from the cache)."""
    if not chunk.whole_job:
        return b""
    digests = [digest for digest in dict.fromkeys(chunk.digests) if digest in computed]
    return pack_carried(digests, [computed[digest] for digest in digests])


@dataclass
class _Tally:
    """Counts the chunks a step gave up on; remembers the task's own chunk's fate (failed for good,
    or to retry) for `run` to raise once every other chunk is seen through."""

    own: ChunkRef
    report: BatchReport
    own_failure: str = ""
    own_retry: str = ""

    def guard(self, step: Callable[[], T | None], ref: ChunkRef) -> T | None:
        try:
            return step()
        except _GaveUp as exc:
            self.report.failed += 1
            if ref == self.own:
                self.own_failure = str(exc)
            return None
