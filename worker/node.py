"""The worker node's main process: who it is, and what it does beside consuming.

Two duties on one background thread, so the consumer's event loop never waits on Redis: renew
the node's heartbeat (the build advert producers read, and the tokenizer the gateway counts
with) and take its turn at the reconciler. At warm shutdown the node leaves the fleet. Crash and
revoke bookkeeping runs in the event loop itself (worker.requests, worker.app), on a client that
fails fast instead of riding out an outage.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field

import redis
from celery import Celery

from contract.celery_config import send_chunk
from contract.fleet_registry import FleetRegistry, NodeAdvert
from contract.jobs import ChunkRef
from contract.ledger import JobLedger, failed_outcome
from contract.manifest import TOKENIZER_FILE, Manifest
from contract.redis_connection import connect
from contract.settings import FleetSettings
from worker.gathering import carried_by
from worker.reconciler import Reconciler

log = logging.getLogger(__name__)

FAST_FAIL_OUTAGE_S = 0.0
JOIN_BEATS = 2  # at stop, wait this many heartbeat intervals for a beat or sweep in progress


@dataclass
class WorkerNode:
    settings: FleetSettings
    manifest: Manifest
    fingerprint: str
    name: str
    app: Celery
    advert: NodeAdvert = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)
    _metrics_served: bool = False
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.advert = NodeAdvert(
            node=self.name,
            model=self.settings.model_name,
            fingerprint=self.fingerprint,
            artifact=self.manifest.fingerprint,
            dims=self.manifest.dims,
            name=self.manifest.name,
            max_tokens=self.manifest.max_seq_length,
            processes=self.settings.processes(),
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        self.tokenizer = (self.settings.model_dir / TOKENIZER_FILE).read_bytes()
        cache = connect(self.settings.cache_url, self.settings)
        self.registry = FleetRegistry(cache, self.settings.heartbeat_ttl_s)
        self.reconciler = Reconciler(self.app, cache, self.settings)
        # Bookkeeping from the event loop: a dead Redis must not stall the consumer.
        self.fast_ledger = JobLedger(connect(self.settings.cache_url, self.settings, FAST_FAIL_OUTAGE_S))

    def start(self) -> None:
        """Start beating (again, after a broker reconnect: the advert is renewed at once)."""
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="embedfleet-node", daemon=True)
        self._thread.start()

    def serve_metrics(self) -> None:
        """Once per process, where EMBED_METRICS_PORT asks for it (a consumer restart starts us again)."""
        if self.settings.metrics_port and not self._metrics_served:
            from worker.metrics import serve  # only now: prometheus_client must see PROMETHEUS_MULTIPROC_DIR

            serve(self.settings)
            self._metrics_served = True
            log.info("metrics on port %d", self.settings.metrics_port)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(self.settings.heartbeat_interval_s * JOIN_BEATS)

    def leave(self) -> None:
        """Warm shutdown: stop beating and withdraw, so producers stop choosing this node at once."""
        self.stop()
        try:
            self.registry.withdraw(self.advert)
        except redis.RedisError as exc:
            log.warning("could not withdraw %s from the fleet (it expires on its own): %s", self.name, exc)

    def record_failure(self, ref: ChunkRef, error: str) -> None:
        try:
            failures = self.fast_ledger.record_failure(ref, error)
            log.warning("chunk %s of job %s: %s (failure %d)", ref.chunk, ref.job_id, error, failures)
        except redis.RedisError as exc:
            log.warning("could not count a failure of chunk %s of job %s: %s", ref.chunk, ref.job_id, exc)

    def release_carried(self, carrier_task_id: str, error: str) -> None:
        """The chunks a dead task carried: a failure each, then back on their queue at once."""
        try:
            queue, carried = carried_by(self.fast_ledger.redis, carrier_task_id)
            for ref in carried:
                self.fast_ledger.record_failure(ref, error)
                send_chunk(self.app, ref, queue)
        except Exception as exc:  # the reconciler sends them again once their lease runs out
            log.warning("could not send back the chunks task %s carried: %s", carrier_task_id, exc)

    def cancel_chunk(self, ref: ChunkRef, reason: str) -> None:
        """A revoked chunk never runs: count it failed (cancelled), so its job still ends."""
        try:
            payload = self.fast_ledger.payload(ref)
            self.fast_ledger.complete(ref, failed_outcome(payload, reason))
        except redis.RedisError as exc:
            log.warning("could not count revoked chunk %s of job %s: %s", ref.chunk, ref.job_id, exc)

    def _run(self) -> None:
        sweeps_every = max(1, round(self.settings.reconcile_interval_s / self.settings.heartbeat_interval_s))
        beat = 0
        while not self._stop.is_set():
            self._beat()
            if beat % sweeps_every == 0:
                self._reconcile_turn()
            beat += 1
            self._stop.wait(self.settings.heartbeat_interval_s)

    def _beat(self) -> None:
        try:
            self.registry.beat(self.advert)
            self.registry.keep_tokenizer(self.advert.artifact, self.tokenizer, self.settings.job_ttl_s)
        except redis.RedisError as exc:
            log.warning("heartbeat of %s failed (retrying): %s", self.name, exc)
        except Exception:  # the thread must outlive any one beat, or the node looks gone while it consumes
            log.exception("heartbeat of %s failed (retrying)", self.name)

    def _reconcile_turn(self) -> None:
        try:
            if self.reconciler.take_turn(self.name):
                report = self.reconciler.sweep()
                if report.acted:
                    log.warning("reconciler: %s", report)
        except Exception:
            log.exception("reconciler sweep failed; the next turn retries it")


_node: WorkerNode | None = None


def open_node(node: WorkerNode) -> WorkerNode:
    global _node
    _node = node
    return node


def current_node() -> WorkerNode | None:
    return _node
