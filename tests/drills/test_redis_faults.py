"""Drills on Redis: crashes with and without persistence, a cache server down, a network blackhole,
and a cache that evicts under memory pressure."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
import redis

from contract.settings import FleetSettings
from localfleet.tcp_proxy import TcpProxy
from producer import EmbeddingClient, FleetUnavailableError, JobLostError, ResultIncompleteError
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

pytestmark = pytest.mark.drill

NEW_JOB_DEADLINE_S = 30.0
BLACKHOLE_S = 60.0
RATE_WINDOW_S = 5.0
IDLE_BLACKHOLE_S = 20.0
IDLE_REJOIN_LIMIT_S = 15.0


def first_new_job(client: EmbeddingClient, deadline_s: float = NEW_JOB_DEADLINE_S) -> float:
    """Seconds until a fresh job runs end to end (no worker restarted meanwhile)."""

    def runs() -> bool:
        try:
            return client.embed(drill_texts(4), timeout=5).shape == (4, 384)
        except (FleetUnavailableError, redis.RedisError, TimeoutError):
            return False

    return wait_until(runs, deadline_s, poll_s=0.5)


def test_redis_killed_with_aof_and_restarted(drill: Drill, drill_report: DrillReport) -> None:
    server = drill.redis(persistent=True)
    fleet = drill.fleet(server.url)
    with fleet.client() as client:
        job = client.submit(drill_texts(8_000))
        wait_until(lambda: progress(job) >= 2_000, JOB_TIMEOUT_S)
        server.kill()
        time.sleep(1)
        server.start()
        new_jobs = first_new_job(client)
        job.wait(timeout=JOB_TIMEOUT_S)
        verdict = verify(client, job)
    drill_report.add(
        DrillRow(
            "Redis SIGKILLed (AOF everysec) mid-job, restarted",
            verdict.rows_lost,
            verdict.duplicates,
            verdict.counts_exact,
            new_jobs,
            "new jobs ran this long after the restart; no worker restarted",
        )
    )
    assert (verdict.rows_lost, verdict.duplicates, verdict.counts_exact) == (0, 0, True)


def test_redis_restarted_without_persistence(drill: Drill, drill_report: DrillReport) -> None:
    server = drill.redis(persistent=False)
    fleet = drill.fleet(server.url)
    with fleet.client() as client:
        texts = drill_texts(8_000)
        job = client.submit(texts)
        wait_until(lambda: progress(job) >= 2_000, JOB_TIMEOUT_S)
        server.stop()
        server.start()
        started = time.monotonic()
        with pytest.raises(JobLostError, match="resume"):
            job.wait(timeout=JOB_TIMEOUT_S)
        lost_after = time.monotonic() - started
        new_jobs = first_new_job(client)
        again = job.resume()
        again.wait(timeout=JOB_TIMEOUT_S)
        verdict = verify(client, again)
    drill_report.add(
        DrillRow(
            "Redis restarted without persistence",
            verdict.rows_lost,
            verdict.duplicates,
            verdict.counts_exact,
            new_jobs,
            f"JobLostError {lost_after:.1f} s after the restart; job.resume() finished the job",
        )
    )
    assert (verdict.rows_lost, verdict.duplicates, verdict.counts_exact) == (0, 0, True)


@pytest.mark.parametrize("down_s", [3, 10])
def test_cache_redis_down(drill: Drill, drill_report: DrillReport, down_s: int) -> None:
    broker, cache = drill.redis(), drill.redis()
    fleet = drill.fleet(broker.url, cache.url)
    with fleet.client() as client:
        job = client.submit(drill_texts(10_000))
        wait_until(lambda: progress(job) >= 1_500, JOB_TIMEOUT_S)
        cache.stop()
        time.sleep(down_s)
        cache.start()
        back = time.monotonic()
        job.wait(timeout=JOB_TIMEOUT_S)
        finished = time.monotonic() - back
        verdict = verify(client, job)
    drill_report.add(
        DrillRow(
            f"cache Redis down {down_s} s mid-job (broker and cache on two servers)",
            verdict.rows_lost,
            verdict.duplicates,
            verdict.counts_exact,
            None,
            f"job finished {finished:.1f} s after the cache returned",
        )
    )
    assert (verdict.rows_lost, verdict.duplicates, verdict.counts_exact) == (0, 0, True)


def test_blackhole_between_workers_and_redis(drill: Drill, drill_report: DrillReport) -> None:
    server = drill.redis()
    with TcpProxy("127.0.0.1", server.port) as proxy:
        through = f"redis://127.0.0.1:{proxy.port}/0"
        fleet = drill.fleet(through)
        with fleet.client(broker_url=server.url, cache_url=server.url) as client:
            jobs = [client.submit(drill_texts(20_000)) for _ in range(6)]
            meter = _DoneMeter(client, [job.id for job in jobs])
            time.sleep(2)
            baseline = meter.rate_over_next(RATE_WINDOW_S * 2)
            proxy.blackhole()
            time.sleep(BLACKHOLE_S)
            proxy.restore()
            restored = time.monotonic()
            recovery = meter.seconds_to_recover(restored, 0.9 * baseline, RATE_WINDOW_S, limit_s=120)
            meter.close()
            alive = all(node.alive() for node in fleet.nodes) and len(fleet.worker.children()) == 2
            for job in jobs:
                client.job(job.id).cancel()
    drill_report.add(
        DrillRow(
            f"{BLACKHOLE_S:.0f} s blackhole between workers and Redis",
            "—",
            "—",
            "—",
            recovery,
            f"throughput {baseline:,.0f}/s before, >= 90 % again {recovery:.1f} s after; "
            f"workers alive: {'yes' if alive else 'no'}",
        )
    )
    assert alive and baseline > 0
    assert recovery <= 45


def test_idle_worker_rejoins_after_a_blackhole(drill: Drill, drill_report: DrillReport) -> None:
    """An idle consumer always has a BRPOP in flight; the partition eats its reply, and the event loop
    applies no socket timeout. kombu's watchdog drops it after about twice the health check interval."""
    server = drill.redis()
    with TcpProxy("127.0.0.1", server.port) as proxy:
        fleet = drill.fleet(f"redis://127.0.0.1:{proxy.port}/0")
        with fleet.client(broker_url=server.url, cache_url=server.url) as client:
            client.embed(drill_texts(64), timeout=JOB_TIMEOUT_S)
            proxy.blackhole()
            time.sleep(IDLE_BLACKHOLE_S)
            proxy.restore()
            new_jobs = first_new_job(client)
    interval = FleetSettings().redis_health_check_interval_s
    drill_report.add(
        DrillRow(
            f"{IDLE_BLACKHOLE_S:.0f} s blackhole while the fleet is idle",
            "—",
            "—",
            "—",
            new_jobs,
            f"a new job ran this long after the network healed (health check interval {interval} s)",
        )
    )
    assert new_jobs <= IDLE_REJOIN_LIMIT_S


def _tally(outcomes: dict[str, int]) -> str:
    return ", ".join(f"{name} x{count}" for name, count in outcomes.items())


def test_cache_at_maxmemory_never_returns_wrong_rows(drill: Drill, drill_report: DrillReport) -> None:
    broker = drill.redis()
    cache = drill.redis(
        persistent=False, extra_args=["--maxmemory", "8mb", "--maxmemory-policy", "allkeys-lru"]
    )
    fleet = drill.fleet(broker.url, cache.url)
    outcomes: dict[str, int] = {}
    with fleet.client() as client:
        texts = drill_texts(2_000)
        first = client.submit(texts)
        first.wait(timeout=JOB_TIMEOUT_S)
        reference = first.result()
        for _ in range(3):  # push the first job's vectors out of the cache
            client.submit(drill_texts(3_000, words=20)).wait(timeout=JOB_TIMEOUT_S)
        for attempt in (first, client.job(first.id) if _exists(client, first.id) else first):
            try:
                vectors = attempt.result()
                assert vectors.shape == (2_000, 384)
                np.testing.assert_allclose(vectors, reference, atol=1e-6)
                outcomes["full and correct"] = outcomes.get("full and correct", 0) + 1
            except (ResultIncompleteError, JobLostError) as exc:
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
        recomputed = first.result(missing="recompute")
        cosine = float(np.min(np.sum(recomputed * reference, axis=1)))
    drill_report.add(
        DrillRow(
            "cache Redis at maxmemory (allkeys-lru)",
            0,
            0,
            "—",
            None,
            f"result(): {_tally(outcomes)}; result(missing='recompute'): all 2,000 rows, "
            f"min cosine {cosine:.5f}",
        )
    )
    assert recomputed.shape == (2_000, 384) and cosine >= 0.9999


class _DoneMeter:
    """Texts counted per second across some jobs, from samples a thread takes four times a second."""

    def __init__(self, client: EmbeddingClient, job_ids: list[str]) -> None:
        self.client = client
        self.job_ids = job_ids
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(redis.RedisError):
                total = sum(progress(self.client.job(job_id)) for job_id in self.job_ids)
                self.samples.append((time.monotonic(), total))
            time.sleep(0.25)

    def rate_over_next(self, window_s: float) -> float:
        """Blocks for `window_s`, then the rate over those seconds."""
        start = time.monotonic()
        time.sleep(window_s)
        return self.rate_since(start)

    def rate_since(self, since: float) -> float:
        inside = [(t, n) for t, n in self.samples if t >= since]
        if len(inside) < 2:
            return 0.0
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def seconds_to_recover(self, restored: float, target: float, window_s: float, limit_s: float) -> float:
        """Seconds after `restored` until a trailing window, wholly after it, ran at `target`."""
        while time.monotonic() - restored < limit_s:
            now = time.monotonic()
            if now - restored >= window_s and self.rate_since(now - window_s) >= target:
                return now - restored
            time.sleep(0.25)
        raise AssertionError(f"throughput not back to {target:,.0f}/s within {limit_s} s")

    def close(self) -> None:
        self._stop.set()


def _exists(client: EmbeddingClient, job_id: str) -> bool:
    return bool(client.redis.exists(f"job:{job_id}"))
