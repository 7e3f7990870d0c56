"""The reconciler: finds chunks of running jobs that nothing will ever run, and sends them again.

A chunk can vanish from the broker without a trace: a Redis restart without persistence, a
purge, a host that died holding it (its messages then wait in kombu's unacked set for the whole
visibility timeout). Its payload stays in the cache Redis until the chunk is counted, so a sweep
can compare, for each running job, the chunks not yet counted with those queued in the build's
lane queues and those leased to a live worker. A chunk in neither for EMBED_RECONCILE_GRACE_S is
published again under its own task id; a duplicate costs one claim, and counting stays exact.
A job whose build has no live worker and that made no progress for EMBED_STALL_TIMEOUT_S ends
failed, saying so. One node per model sweeps at a time (a lock in Redis); `python -m worker
reconcile` runs one sweep by hand. Chunks are sent again only for jobs of the sweeping node's own
model: fleets of other models may share the cache but not the broker, and their own nodes know
where their chunks wait.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import redis
from celery import Celery

from contract import keys
from contract.celery_config import send_chunk
from contract.fleet_registry import FleetRegistry
from contract.jobs import ChunkRef, JobRecord, JobState, stall_error, task_id_of
from contract.lanes import Lane, queue_name
from contract.ledger import JobLedger, failed_outcome
from contract.redis_connection import as_text, broker_client
from contract.settings import FleetSettings

QUEUE_PAGE = 1_000
LOCK_SHARE_OF_INTERVAL = 0.9
SHOWN_IDS = 5  # ids a sweep's log line names; the counts say how many in all


@dataclass
class SweepReport:
    jobs: int = 0
    resent: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)
    forgotten: int = 0

    @property
    def acted(self) -> bool:
        return bool(self.resent or self.lost or self.stalled or self.forgotten)

    def __str__(self) -> str:
        return (
            f"{self.jobs} running jobs swept: "
            f"{len(self.resent)} chunks sent again {self.resent[:SHOWN_IDS]}, "
            f"{len(self.lost)} chunks lost, {len(self.stalled)} jobs stalled {self.stalled[:SHOWN_IDS]}, "
            f"{self.forgotten} records gone"
        )


class Reconciler:
    def __init__(self, app: Celery, cache: redis.Redis, settings: FleetSettings) -> None:
        self.app = app
        self.settings = settings
        self.ledger = JobLedger(cache)
        self.registry = FleetRegistry(cache, settings.heartbeat_ttl_s)
        self.broker = broker_client(settings, cache)

    def take_turn(self, node: str) -> bool:
        """True when this node holds the sweep lock for this interval."""
        lock_ms = int(self.settings.reconcile_interval_s * 1000 * LOCK_SHARE_OF_INTERVAL)
        lock = keys.reconciler_lock_key(self.settings.model_name)
        return bool(self.ledger.redis.set(lock, node, nx=True, px=lock_ms))

    def sweep(self, job_ids: Iterable[str] | None = None) -> SweepReport:
        if job_ids is None:
            job_ids = [as_text(job) for job in self.ledger.redis.zrange(keys.running_jobs_key(), 0, -1)]
        report = SweepReport()
        queued: dict[str, set[str] | None] = {}
        for job_id in job_ids:
            report.jobs += 1
            self._reconcile(job_id, report, queued)
        return report

    def _reconcile(self, job_id: str, report: SweepReport, queued: dict[str, set[str] | None]) -> None:
        record = self.ledger.record(job_id)
        if record is None or record.state.finished:
            self.ledger.redis.zrem(keys.running_jobs_key(), job_id)
            report.forgotten += record is None
            return
        now = self.ledger.server_time()
        live = set(self.registry.live_nodes(record.model, record.fingerprint))
        if not live:
            self._end_if_stalled(record, now, report)
            return
        if record.model != self.settings.model_name:
            return
        unheld = self._unheld_chunks(record, live, now)
        queue = queue_name(record.model, record.fingerprint, record.lane)
        if queue not in queued:
            queued[queue] = self._queued_task_ids(queue)
        in_queue = queued[queue]
        orphans = (
            [] if in_queue is None else [c for c in unheld if ChunkRef(job_id, c).task_id not in in_queue]
        )
        for chunk in self._past_grace(job_id, orphans, now):
            self._send_again(record, chunk, report)

    def _end_if_stalled(self, record: JobRecord, now: float, report: SweepReport) -> None:
        last = max(record.updated, record.created)
        if now - last < self.settings.stall_timeout_s:
            return
        error = stall_error(record, self.settings.stall_timeout_s)
        if self.ledger.end_job(record.id, JobState.FAILED, error, now - self.settings.stall_timeout_s) == 1:
            report.stalled.append(record.id)

    def _unheld_chunks(self, record: JobRecord, live: set[str], now: float) -> list[int]:
        """Chunks neither counted nor leased to a live node whose lease still runs."""
        pipe = self.ledger.redis.pipeline(transaction=False)
        pipe.smembers(keys.job_chunks_done_key(record.id))
        pipe.hgetall(keys.job_leases_key(record.id))
        counted_raw, leases_raw = pipe.execute()
        counted = {int(chunk) for chunk in counted_raw}
        held = set()
        for chunk, lease in leases_raw.items():
            node, _, expires = as_text(lease).rpartition(" ")
            if node in live and float(expires) > now:
                held.add(int(chunk))
        return [chunk for chunk in range(record.chunks) if chunk not in counted and chunk not in held]

    def _past_grace(self, job_id: str, orphans: list[int], now: float) -> list[int]:
        """Orphans first seen at least the grace period ago; newly seen ones are marked, others unmarked."""
        key = keys.job_orphans_key(job_id)
        marks = {int(chunk): float(seen) for chunk, seen in self.ledger.redis.hgetall(key).items()}
        pipe = self.ledger.redis.pipeline(transaction=False)
        cleared = [chunk for chunk in marks if chunk not in orphans]
        if cleared:
            pipe.hdel(key, *cleared)
        due = [chunk for chunk in orphans if now - marks.get(chunk, now) >= self.settings.reconcile_grace_s]
        fresh = {str(chunk): now for chunk in orphans if chunk not in marks or chunk in due}
        if fresh:
            pipe.hset(key, mapping=fresh)  # type: ignore[arg-type]
            pipe.expire(key, self.settings.job_ttl_s)
        pipe.execute()
        return due

    def _send_again(self, record: JobRecord, chunk: int, report: SweepReport) -> None:
        ref = ChunkRef(record.id, chunk)
        if self.ledger.payload(ref) is None:
            error = "its texts are gone from Redis (evicted, or lost in a restart): resubmit the job"
            self.ledger.complete(ref, failed_outcome(None, f"chunk {chunk}: {error}"))
            report.lost.append(ref.task_id)
            return
        queue = queue_name(record.model, record.fingerprint, Lane(record.lane))
        send_chunk(self.app, ref, queue)
        report.resent.append(ref.task_id)

    def _queued_task_ids(self, queue: str) -> set[str] | None:
        """Task ids waiting in a Redis queue; None where the broker is not Redis (it redelivers itself)."""
        if self.broker is None:
            return None
        found: set[str] = set()
        length = self.broker.llen(queue)
        for start in range(0, length, QUEUE_PAGE):
            for raw in self.broker.lrange(queue, start, start + QUEUE_PAGE - 1):
                task_id = task_id_of(raw)
                if task_id:
                    found.add(task_id)
        return found
