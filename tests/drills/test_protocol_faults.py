"""Drills on the job protocol: a publish that fails halfway, duplicate deliveries, two builds at once."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from celery.signals import before_task_publish

from contract import keys
from contract.celery_config import EMBED_TASK
from contract.jobs import ChunkRef
from contract.lanes import queue_name
from contract.settings import FleetSettings
from localfleet.fleet import WorkerNode
from producer import FleetUnavailableError
from tests.drills.conftest import JOB_TIMEOUT_S, Drill, DrillReport, DrillRow, drill_texts, verify, wait_until
from worker.engine import EmbeddingEngine

pytestmark = pytest.mark.drill

PUBLISHED_BEFORE_THE_CRASH = 3
COPIES = 4
OLD_BUILD_JOB_TEXTS = 25_000


def test_publish_fails_mid_submit(drill: Drill, drill_report: DrillReport) -> None:
    broker, cache = drill.redis(), drill.redis()
    fleet = drill.fleet(broker.url, cache.url)
    published: list[str] = []

    def crash_broker_after_three(**_: Any) -> None:
        published.append("chunk")
        if len(published) == PUBLISHED_BEFORE_THE_CRASH:
            broker.kill()

    with fleet.client() as client:
        before_task_publish.connect(crash_broker_after_three, weak=False)
        try:
            started = time.monotonic()
            with pytest.raises(FleetUnavailableError, match="job was withdrawn") as refused:
                client.submit(drill_texts(2_000), priority="bulk")
            took = time.monotonic() - started
        finally:
            before_task_publish.disconnect(crash_broker_after_three)
        records = list(client.redis.scan_iter("job:*"))
        running = client.redis.zcard(keys.running_jobs_key())
    drill_report.add(
        DrillRow(
            "a publish that fails mid-submit (broker killed after 3 of 32 chunks)",
            "—",
            0,
            "—",
            took,
            f"caller got FleetUnavailableError; {len(records)} job keys and {running} running jobs left",
        )
    )
    assert "failed after" in str(refused.value) and records == [] and running == 0


def test_duplicate_deliveries_count_once(
    drill: Drill, drill_report: DrillReport, static_artifact: Path
) -> None:
    server = drill.redis()
    fleet = drill.fleet(server.url)
    fleet.add_node()  # 2 nodes x 2 processes: 4 processes to receive the copies
    engine = EmbeddingEngine(static_artifact, FleetSettings(intra_op_threads=1))
    with fleet.client() as client:
        texts = drill_texts(3_000)
        job = client.submit(texts, priority="bulk")
        record = job.status()
        queue = queue_name(record.model, record.fingerprint, record.lane)
        for chunk in range(record.chunks):  # every message published twice
            ref = ChunkRef(job.id, chunk)
            client.celery.send_task(EMBED_TASK, kwargs=ref.to_kwargs(), queue=queue, task_id=ref.task_id)
        single_texts = drill_texts(64)
        single = client.submit(single_texts, priority="bulk")
        ref = ChunkRef(single.id, 0)
        for _ in range(COPIES - 1):  # one chunk four times, to four processes
            client.celery.send_task(EMBED_TASK, kwargs=ref.to_kwargs(), queue=queue, task_id=ref.task_id)
        job.wait(timeout=JOB_TIMEOUT_S)
        single.wait(timeout=JOB_TIMEOUT_S)
        wait_until(lambda: len(_results(fleet.nodes, ref.task_id)) == COPIES, 60)
        bulk = verify(client, job, engine.embed(texts).vectors)
        one = verify(client, single, engine.embed(single_texts).vectors)
        failures = client.redis.hget(keys.job_attempts_key(single.id), "failures:0")
    results = _results(fleet.nodes, ref.task_id)
    embedded = sum("64 embedded" in result for result in results)
    exact = bulk.counts_exact and one.counts_exact and failures is None
    drill_report.add(
        DrillRow(
            "every message published twice; one chunk delivered 4 times",
            bulk.rows_lost + one.rows_lost,
            bulk.duplicates + one.duplicates,
            exact,
            None,
            f"of 4 copies of one chunk {embedded} embedded it and the rest skipped it; counted once; "
            "vectors equal the engine's",
        )
    )
    assert exact and bulk.rows_lost == one.rows_lost == 0 and bulk.duplicates == one.duplicates == 0


def test_two_builds_consume_at_once(
    drill: Drill, drill_report: DrillReport, static_artifact: Path, fp32_artifact: Path
) -> None:
    """A rolling upgrade: build B comes up while build A has jobs in flight; each job ends on its build."""
    server = drill.redis()
    fleet = drill.fleet(server.url)
    with fleet.client() as client:
        # Long enough that both are still running once build B has warmed up, even on a fast host.
        old_jobs = [client.submit(drill_texts(OLD_BUILD_JOB_TEXTS)) for _ in range(2)]
        upgraded = fleet.add_node(env={"EMBED_MODEL_DIR": str(fp32_artifact)})
        in_flight = sum(not job.status().state.finished for job in old_jobs)
        new_texts = [drill_texts(500) for _ in range(2)]
        new_jobs = [client.submit(texts) for texts in new_texts]
        records = [job.wait(timeout=JOB_TIMEOUT_S) for job in [*old_jobs, *new_jobs]]
        fp32 = EmbeddingEngine(fp32_artifact, FleetSettings(intra_op_threads=1))
        new_vectors = [job.result() for job in new_jobs]
        cosine = min(
            float(np.min(np.sum(vectors * fp32.embed(texts).vectors, axis=1)))
            for vectors, texts in zip(new_vectors, new_texts, strict=True)
        )
    old_build, new_build = records[0].fingerprint, records[-1].fingerprint
    on_own_build = all(record.fingerprint == old_build for record in records[:2]) and all(
        record.fingerprint == new_build for record in records[2:]
    )
    crossed = [job.id for job in new_jobs if job.id in fleet.worker.log_text()]
    crossed += [job.id for job in old_jobs if job.id in upgraded.log_text()]
    done = all(record.state.value == "done" and record.done == record.total for record in records)
    drill_report.add(
        DrillRow(
            "two builds consuming at once (rolling upgrade)",
            0,
            0,
            done,
            None,
            f"{in_flight} jobs in flight when build B came up finished on A ({old_build}), "
            f"2 new ones on B ({new_build}) "
            f"(min cosine to the fp32 engine {cosine:.5f}); {len(crossed)} chunks crossed builds",
        )
    )
    assert (
        in_flight == 2
        and old_build != new_build
        and on_own_build
        and done
        and not crossed
        and cosine >= 0.9999
    )


def _results(nodes: list[WorkerNode], task_id: str) -> list[str]:
    """What each delivery of a task returned, from the nodes' logs."""
    pattern = re.compile(re.escape(f"[{task_id}] succeeded in") + r" [0-9.]+s: '([^']*)'")
    return [match for node in nodes for match in pattern.findall(node.log_text())]
