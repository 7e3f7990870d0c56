"""Drills on worker processes: pool children and whole nodes killed or stopped mid-job."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from contract import keys
from contract.jobs import JobRecord
from contract.settings import FleetSettings
from localfleet.fleet import LocalFleet
from producer import EmbeddingClient, FleetUnavailableError, Job, JobFailedError
from tests.drills.conftest import (
    JOB_TIMEOUT_S,
    Drill,
    DrillReport,
    DrillRow,
    drill_texts,
    progress,
    verify,
    wait_until,
)
from tests.drills.poison import POISON
from tests.fleet.test_bad_input import run_cli_with

pytestmark = pytest.mark.drill

KILLS = 10
POOL_CHILDREN = 2
LONG_BULK_CHUNK = 1_024  # seconds of engine runs on one thread
DEFAULTS = FleetSettings()


def _poison_fleet(drill: Drill, broker_url: str) -> LocalFleet:
    """A fleet whose processes die (SIGKILL) when they embed the poison text (tests/drills/poison.py)."""
    return drill.fleet(broker_url, worker_args=["--include", "tests.drills.poison"])


def _deaths(fleet: LocalFleet) -> int:
    """Pool processes killed so far, as the fleet's worker logs report them."""
    return sum(node.log_text().count("exited with 'signal 9") for node in fleet.nodes)


def _not_done(records: list[JobRecord]) -> list[int]:
    return [i for i, record in enumerate(records) if record.state.value != "done"]


def test_pool_child_killed_ten_times(drill: Drill, drill_report: DrillReport) -> None:
    server = drill.redis()
    fleet = drill.fleet(server.url)
    with fleet.client() as client:
        job = client.submit(drill_texts(20_000))
        for kill in range(KILLS):
            wait_until(lambda k=kill: progress(job) >= (k + 1) * 1_500, JOB_TIMEOUT_S)
            # The pool forks a replacement a moment after a child dies; kill only once both are back.
            wait_until(lambda: len(fleet.worker.children()) == POOL_CHILDREN, JOB_TIMEOUT_S)
            os.kill(fleet.worker.children()[kill % POOL_CHILDREN], signal.SIGKILL)
        job.wait(timeout=JOB_TIMEOUT_S)
        verdict = verify(client, job)
    drill_report.add(
        DrillRow(
            "kill -9 a pool child 10x during a 20,000-text job",
            verdict.rows_lost,
            verdict.duplicates,
            verdict.counts_exact,
            None,
            f"{KILLS} children killed, each replaced by the pool",
        )
    )
    assert (verdict.rows_lost, verdict.duplicates, verdict.counts_exact) == (0, 0, True)


def test_lost_host_runs_again_on_a_new_node(drill: Drill, drill_report: DrillReport) -> None:
    """The shipped liveness defaults: a dead node's chunks run again well within 2 minutes."""
    server = drill.redis()
    shipped = {
        "EMBED_HEARTBEAT_INTERVAL_S": str(DEFAULTS.heartbeat_interval_s),
        "EMBED_HEARTBEAT_TTL_S": str(DEFAULTS.heartbeat_ttl_s),
        "EMBED_RECONCILE_INTERVAL_S": str(DEFAULTS.reconcile_interval_s),
        "EMBED_RECONCILE_GRACE_S": str(DEFAULTS.reconcile_grace_s),
    }
    fleet = drill.fleet(server.url, env=shipped)
    with fleet.client() as client:
        job = client.submit(drill_texts(6_000))
        wait_until(lambda: progress(job) >= 1_000, JOB_TIMEOUT_S)
        fleet.worker.kill()
        held = client.redis.hlen(keys.job_leases_key(job.id))
        fleet.add_node()
        ready = time.monotonic()
        job.wait(timeout=JOB_TIMEOUT_S)
        recovery = time.monotonic() - ready
        verdict = verify(client, job)
    drill_report.add(
        DrillRow(
            "kill -9 the worker main process and its children mid-job; a new node starts",
            verdict.rows_lost,
            verdict.duplicates,
            verdict.counts_exact,
            recovery,
            f"{held} chunks were held by the dead node; shipped defaults (TTL "
            f"{DEFAULTS.heartbeat_ttl_s:.0f} s, grace {DEFAULTS.reconcile_grace_s:.0f} s)",
        )
    )
    assert (verdict.rows_lost, verdict.duplicates, verdict.counts_exact) == (0, 0, True)
    assert recovery < 120


def test_sigterm_requeues_running_chunks(drill: Drill, drill_report: DrillReport) -> None:
    server = drill.redis()
    fleet = drill.fleet(server.url)
    with fleet.client() as client:
        job = client.submit(drill_texts(8_000))
        wait_until(lambda: progress(job) >= 1_000, JOB_TIMEOUT_S)
        code = fleet.worker.stop()
        stopped = progress(job)
        fleet.add_node()
        ready = time.monotonic()
        job.wait(timeout=JOB_TIMEOUT_S)
        recovery = time.monotonic() - ready
        verdict = verify(client, job)
    drill_report.add(
        DrillRow(
            "SIGTERM the worker mid-job, then a new node",
            verdict.rows_lost,
            verdict.duplicates,
            verdict.counts_exact,
            recovery,
            f"warm shutdown exited {code} at {stopped:,}/8,000",
        )
    )
    assert code == 0
    assert (verdict.rows_lost, verdict.duplicates, verdict.counts_exact) == (0, 0, True)


def test_poison_text_fails_only_its_input(drill: Drill, drill_report: DrillReport) -> None:
    server = drill.redis()
    fleet = _poison_fleet(drill, server.url)
    with fleet.client() as client:
        texts = drill_texts(10)
        texts[7] = POISON
        job = client.submit(texts)
        started = time.monotonic()
        record = job.wait(timeout=JOB_TIMEOUT_S)
        ended = time.monotonic() - started
        failures = int(client.redis.hget(keys.job_attempts_key(job.id), "failures:0") or 0)
        with pytest.raises(JobFailedError) as failed:
            job.result()
        after = client.embed(drill_texts(50), timeout=JOB_TIMEOUT_S)
    deaths = _deaths(fleet)
    drill_report.add(
        DrillRow(
            "poison text (kills its process)",
            "1 (the poison)",
            0,
            record.done == 9,
            ended,
            f"{deaths} processes died, {failures} failures counted; the job failed naming "
            f"input {failed.value.positions}; the next job succeeded",
        )
    )
    assert record.state.value == "failed" and "inputs 7 failed" in record.error
    assert failed.value.positions == [7] and record.done == 9 and record.failed == 1
    assert deaths <= 3 and failures < 3
    assert after.shape == (50, 384)


def test_last_worker_stops(drill: Drill, drill_report: DrillReport) -> None:
    server = drill.redis()
    fleet = drill.fleet(server.url)
    with fleet.client() as client:
        job = client.submit(drill_texts(30_000))
        wait_until(lambda: progress(job) >= 500, JOB_TIMEOUT_S)
        stopped = time.monotonic()
        fleet.worker.stop()

        def refused() -> bool:
            try:
                client.submit(drill_texts(1))
            except FleetUnavailableError:
                return True
            return False

        refusal = wait_until(refused, 30)
        cli = run_cli_with(fleet.settings, "submit", str(_one_line_file(drill)))
        record = job.wait(timeout=JOB_TIMEOUT_S)
        ended = time.monotonic() - stopped
    drill_report.add(
        DrillRow(
            "last worker stops",
            "— (job failed)",
            0,
            "—",
            ended,
            f"submits refused after {refusal:.1f} s (CLI exit {cli.returncode}); the running job "
            f"ended failed {ended:.1f} s after the stop (stall timeout 10 s)",
        )
    )
    assert refusal < 30 and cli.returncode == 5 and "no live worker" in cli.stderr
    assert record.state.value == "failed" and "no live worker served build" in record.error
    assert ended < 10 + 15


def _one_line_file(drill: Drill) -> Path:
    path = drill.tmp / "one.txt"
    path.write_text("one line\n")
    return path


def _small_jobs_beside_long_bulk(
    client: EmbeddingClient, bulk_chunks: int, small: int, poison_at: int
) -> tuple[Job, list[Job], list[JobRecord]]:
    """A bulk job of long chunks; once both processes are inside one, `small` 1-text jobs (one of them
    the poison) queue up behind them and run together. Returns when every job has ended."""
    bulk = client.submit(drill_texts(bulk_chunks * LONG_BULK_CHUNK), priority="bulk")
    leases = keys.job_leases_key(bulk.id)
    wait_until(lambda: client.redis.hlen(leases) == POOL_CHILDREN, JOB_TIMEOUT_S)
    texts = drill_texts(small)
    texts[poison_at] = POISON
    jobs = [client.submit([text], priority="interactive") for text in texts]
    records = [job.wait(timeout=JOB_TIMEOUT_S) for job in jobs]
    bulk.wait(timeout=JOB_TIMEOUT_S)
    return bulk, jobs, records


def test_poison_text_in_a_shared_batch_fails_only_its_own_job(
    drill: Drill, drill_report: DrillReport
) -> None:
    server = drill.redis()
    fleet = _poison_fleet(drill, server.url)
    with fleet.client(chunk_size=LONG_BULK_CHUNK) as client:
        _, jobs, records = _small_jobs_beside_long_bulk(client, 3, 30, poison_at=13)
        # a job whose chunk was counted a failure yet ended done shared a batch with the poison
        shared = sum(
            int(client.redis.hget(keys.job_attempts_key(job.id), "failures:0") or 0) > 0
            for i, job in enumerate(jobs)
            if i != 13
        )
    deaths = _deaths(fleet)
    failed = _not_done(records)
    drill_report.add(
        DrillRow(
            "poison text among 30 one-text jobs run together",
            "1 (the poison)",
            0,
            failed == [13],
            None,
            f"{shared} other jobs shared a batch with the poison (a failure counted, then done); "
            f"{deaths} processes died; only the poison's job failed",
        )
    )
    assert failed == [13] and "inputs 0 failed" in records[13].error
    assert all(record.done == 1 for i, record in enumerate(records) if i != 13)
    assert shared > 0, "no batch held the poison beside other jobs"
    assert deaths <= 3


def test_poison_text_served_between_bulk_runs_fails_only_its_own_job(
    drill: Drill, drill_report: DrillReport
) -> None:
    """A bulk chunk that serves a poison text dies with it: the bulk chunk runs again (text by text,
    without serving others) and counts exactly; only the poison's job fails."""
    server = drill.redis()
    fleet = _poison_fleet(drill, server.url)
    with fleet.client(chunk_size=LONG_BULK_CHUNK) as client:
        bulk, _, records = _small_jobs_beside_long_bulk(client, 2, 6, poison_at=2)
        verdict = verify(client, bulk)
    deaths = _deaths(fleet)
    failed = _not_done(records)
    drill_report.add(
        DrillRow(
            "poison text among 1-text jobs served between a bulk chunk's runs",
            "1 (the poison)",
            verdict.duplicates,
            verdict.counts_exact,
            None,
            f"{deaths} processes died; only the poison's job failed; the bulk job ended exact",
        )
    )
    assert failed == [2] and "inputs 0 failed" in records[2].error
    assert (verdict.rows_lost, verdict.duplicates, verdict.counts_exact) == (0, 0, True)
