"""Fault drills on real processes: private redis-servers, real prefork workers, the real artifact.

Each drill builds its own servers and fleet (it breaks them), runs a job through a fault, and
records a row: rows lost, duplicate counts, whether the counts are exact, and how long recovery
took. `make drills` prints the table at the end of the run (and writes it to bench/out/drills.md).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from contract import keys
from contract.jobs import JobRecord
from localfleet.fleet import LocalFleet, fleet_env
from localfleet.redis_server import RedisServer, start_redis
from producer import EmbeddingClient, Job
from tests.conftest import ROOT, SENTENCES

REPORT = ROOT / "bench" / "out" / "drills.md"
JOB_TIMEOUT_S = 300.0

# Liveness on a drill's time scale; a drill that shows the shipped defaults overrides these.
DRILL_ENV = {
    "EMBED_WORKER_CONCURRENCY": "2",
    "EMBED_INTRA_OP_THREADS": "1",
    "EMBED_CHUNK_SIZE": "64",
    "EMBED_RETRY_DELAY_S": "0.2",
    "EMBED_HEARTBEAT_INTERVAL_S": "0.5",
    "EMBED_HEARTBEAT_TTL_S": "2",
    "EMBED_RECONCILE_INTERVAL_S": "1",
    "EMBED_RECONCILE_GRACE_S": "3",
    "EMBED_STALL_TIMEOUT_S": "10",
    "EMBED_REDIS_SOCKET_TIMEOUT_S": "5",
}


@dataclass
class DrillRow:
    drill: str
    rows_lost: int | str
    duplicates: int | str
    counts_exact: bool | str
    recovery_s: float | None
    note: str = ""

    def markdown(self) -> str:
        exact = {True: "yes", False: "**no**"}.get(self.counts_exact, self.counts_exact)  # type: ignore[call-overload]
        recovery = "—" if self.recovery_s is None else f"{self.recovery_s:.1f} s"
        return f"| {self.drill} | {self.rows_lost} | {self.duplicates} | {exact} | {recovery} | {self.note} |"


@dataclass
class DrillReport:
    rows: list[DrillRow] = field(default_factory=list)

    def add(self, row: DrillRow) -> None:
        self.rows.append(row)

    def markdown(self) -> str:
        head = "| drill | rows lost | duplicate counts | counts exact | time to recover | note |\n"
        head += "|---|---:|---:|---|---:|---|\n"
        return head + "\n".join(row.markdown() for row in self.rows) + "\n"


_REPORT = DrillReport()


@pytest.fixture(scope="session")
def drill_report() -> DrillReport:
    return _REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _REPORT.rows:
        return
    table = _REPORT.markdown()
    terminalreporter.write_sep("=", "fault drills")
    terminalreporter.write(table)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(table)


def drill_texts(count: int, words: int = 0) -> list[str]:
    """Texts no other drill (or earlier run) has cached."""
    tag = uuid.uuid4().hex[:8]
    filler = " ".join(f"w{i}" for i in range(words))
    return [f"{SENTENCES[i % len(SENTENCES)]} {filler} ({i} of {tag})" for i in range(count)]


@dataclass
class Drill:
    """Servers and fleet of one drill, torn down after it."""

    tmp: Path
    artifact: Path
    servers: list[RedisServer] = field(default_factory=list)
    fleets: list[LocalFleet] = field(default_factory=list)

    def redis(self, persistent: bool = True, extra_args: list[str] | None = None) -> RedisServer:
        server = start_redis(self.tmp / f"redis{len(self.servers)}", persistent, extra_args)
        self.servers.append(server)
        return server

    def fleet(
        self,
        broker_url: str,
        cache_url: str | None = None,
        env: dict[str, str] | None = None,
        worker_args: list[str] | None = None,
        start: bool = True,
    ) -> LocalFleet:
        settings, fleet_vars = fleet_env(
            {
                **DRILL_ENV,
                "EMBED_BROKER_URL": broker_url,
                "EMBED_CACHE_URL": cache_url or broker_url,
                "EMBED_MODEL_DIR": str(self.artifact),
                **(env or {}),
            }
        )
        fleet = LocalFleet(
            settings, fleet_vars, self.tmp / f"worker{len(self.fleets)}.log", worker_args or []
        )
        self.fleets.append(fleet)
        if start:
            fleet.start()
        return fleet

    def close(self) -> None:
        for fleet in self.fleets:
            fleet.stop()
        for server in self.servers:
            server.stop()


@pytest.fixture
def drill(tmp_path: Path, static_artifact: Path) -> Iterator[Drill]:
    setup = Drill(tmp_path, static_artifact)
    try:
        yield setup
    finally:
        setup.close()


@dataclass
class Verdict:
    record: JobRecord
    rows_lost: int
    duplicates: int
    counts_exact: bool


def verify(client: EmbeddingClient, job: Job, reference: np.ndarray | None = None) -> Verdict:
    """Rows lost (no vector), positions counted twice, and whether every count is exact."""
    record = job.status()
    vectors = job.result(missing="mask")
    lost = int(np.ma.getmaskarray(vectors)[:, 0].sum()) if np.ma.isMaskedArray(vectors) else 0
    counted_set = int(client.redis.scard(keys.job_chunks_done_key(job.id)) or 0)
    duplicates = max(0, record.done + record.failed - record.total)
    exact = (
        record.done == record.total
        and record.failed == 0
        and record.counted == record.chunks
        and counted_set in (record.chunks, 0)  # the set goes with the job's other keys when it expires
    )
    if reference is not None:
        cosine = np.sum(np.asarray(vectors) * reference, axis=1)
        exact = exact and float(np.min(cosine)) >= 0.9999
    return Verdict(record, lost, duplicates, exact)


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> float:
    """Seconds until `condition` held; AssertionError after `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(poll_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def progress(job: Job) -> int:
    record = job.status()
    return record.done + record.failed
