"""Fuzzed inputs through the client and the CLI against a real fleet: refusals name the input,
everything accepted finishes, and no worker process dies."""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localfleet.fleet import LocalFleet
from producer import EmbeddingClient, InvalidTextError, Job, JobTooLargeError
from producer.cli import main as cli_main
from tests.drills.conftest import JOB_TIMEOUT_S, Drill, DrillReport, DrillRow

pytestmark = pytest.mark.drill

CLIENT_EXAMPLES = 1_500
CLI_EXAMPLES = 200
MAX_INPUTS = 12

texts = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(categories=["Cs", "Cc", "Co", "Zs"]), max_size=20),
    st.integers(min_value=1, max_value=12).map(lambda words: "long " * (2_000 * words)),
)
anything = st.one_of(
    texts, st.none(), st.integers(), st.floats(), st.binary(max_size=20), st.lists(st.text(), max_size=2)
)
line = st.one_of(st.binary(max_size=80), st.text(max_size=80).map(str.encode))


def first_bad(inputs: list[object]) -> int | None:
    for position, value in enumerate(inputs):
        if not isinstance(value, str):
            return position
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return position
    return None


def test_fuzzed_inputs_through_client_and_cli(drill: Drill, drill_report: DrillReport) -> None:
    server = drill.redis()
    fleet = drill.fleet(server.url)
    with fleet.client() as client:
        jobs, inputs = _fuzz_client(client)
        cli_jobs, cli_lines = _fuzz_cli(fleet, drill.tmp)
        jobs += [client.job(job_id) for job_id in cli_jobs]
        records = [job.wait(timeout=JOB_TIMEOUT_S) for job in jobs]
    crashes = sum(node.log_text().count("exited with") for node in fleet.nodes)
    finished = sum(record.state.value == "done" for record in records)
    drill_report.add(
        DrillRow(
            f"{inputs + cli_lines:,} fuzzed inputs through client and CLI (hypothesis)",
            0,
            0,
            finished == len(records),
            None,
            f"{inputs:,} through the client, {cli_lines:,} CLI lines; {len(records):,} jobs accepted, "
            f"{finished:,} done; {crashes} worker processes died; every refusal named its input",
        )
    )
    assert crashes == 0 and finished == len(records)
    assert all(node.alive() for node in fleet.nodes) and len(fleet.worker.children()) == 2
    assert inputs + cli_lines >= 10_000


def _fuzz_client(client: EmbeddingClient) -> tuple[list[Job], int]:
    jobs: list[Job] = []
    counted = [0]

    @settings(
        max_examples=CLIENT_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(
        st.one_of(*(st.lists(kind, max_size=MAX_INPUTS) for kind in (st.text(max_size=300), texts, anything)))
    )
    def submit(inputs: list[object]) -> None:
        counted[0] += len(inputs)
        bad = first_bad(inputs)
        try:
            jobs.append(client.submit(inputs))  # type: ignore[arg-type]
        except InvalidTextError as exc:
            assert bad is not None and f"position {bad} " in str(exc), (inputs, exc)
            return
        except JobTooLargeError:
            return
        assert bad is None

    submit()
    return jobs, counted[0]


def _fuzz_cli(fleet: LocalFleet, tmp: Path) -> tuple[list[str], int]:
    accepted: list[str] = []
    counted = [0]

    @settings(
        max_examples=CLI_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.lists(line, min_size=1, max_size=MAX_INPUTS * 4), st.booleans())
    def submit(lines: list[bytes], jsonl: bool) -> None:
        counted[0] += len(lines)
        path = tmp / f"{uuid.uuid4().hex}.{'jsonl' if jsonl else 'txt'}"
        path.write_bytes(b"\n".join(item.replace(b"\n", b" ").replace(b"\r", b" ") for item in lines))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(["submit", str(path)])
        assert code in (0, 2), (code, err.getvalue())
        if code == 0:
            accepted.append(out.getvalue().split()[0])
        else:
            assert "line " in err.getvalue() and "Traceback" not in err.getvalue(), err.getvalue()

    with _fleet_env(fleet):
        submit()
    return accepted, counted[0]


@contextlib.contextmanager
def _fleet_env(fleet: LocalFleet):  # type: ignore[no-untyped-def]
    mp = pytest.MonkeyPatch()
    mp.setenv("EMBED_BROKER_URL", fleet.settings.broker_url)
    mp.setenv("EMBED_CACHE_URL", fleet.settings.cache_url)
    try:
        yield
    finally:
        mp.undo()


FORGED_EXAMPLES = 1_000
FORGED_PER_EXAMPLE = 10
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
payloads = st.one_of(
    st.fixed_dictionaries({"texts": st.lists(st.text(max_size=40), max_size=4), "positions": json_values}),
    st.fixed_dictionaries(
        {"texts": json_values, "positions": st.lists(st.lists(st.integers(-3, 40), max_size=3))}
    ),
    st.dictionaries(st.text(max_size=10), json_values, max_size=3),
    json_values,
)
kwargs = st.one_of(
    st.fixed_dictionaries({"job_id": json_values, "chunk": json_values}),
    st.dictionaries(st.text(max_size=10), json_values, max_size=3),
)


def test_forged_and_malformed_messages_crash_no_worker(drill: Drill, drill_report: DrillReport) -> None:
    import json as json_module

    from contract import keys
    from contract.celery_config import EMBED_TASK
    from contract.jobs import ChunkRef, JobRecord
    from contract.lanes import Lane, queue_name

    server = drill.redis()
    fleet = drill.fleet(server.url)
    forged_jobs: list[str] = []
    sent = [0]
    with fleet.client() as client:
        build = client.build()
        queue = queue_name(build.model, build.fingerprint, Lane.BULK)
        broker = server.client()

        @settings(
            max_examples=FORGED_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            st.lists(
                st.tuples(payloads, kwargs, st.integers(0, 3)),
                min_size=FORGED_PER_EXAMPLE,
                max_size=FORGED_PER_EXAMPLE,
            )
        )
        def forge(messages: list[tuple[object, object, int]]) -> None:
            for payload, junk_kwargs, kind in messages:
                sent[0] += 1
                if kind == 0:  # junk arguments for the task
                    client.celery.send_task(EMBED_TASK, kwargs=junk_kwargs, queue=queue)  # type: ignore[arg-type]
                elif kind == 1:  # not a Celery message at all
                    broker.lpush(queue, json_module.dumps(payload))
                else:  # a job record with a forged payload
                    job_id = uuid.uuid4().hex
                    record = JobRecord(job_id, 3, build.fingerprint, build.dims, model=build.model, chunks=1)
                    client.redis.hset(keys.job_key(job_id), mapping=record.to_redis())
                    client.redis.hset(keys.job_payloads_key(job_id), "0", json_module.dumps(payload))
                    ref = ChunkRef(job_id, 0)
                    client.celery.send_task(
                        EMBED_TASK, kwargs=ref.to_kwargs(), queue=queue, **ref.send_options()
                    )
                    forged_jobs.append(job_id)

        forge()
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while client.redis.zcard(keys.running_jobs_key()) and time.monotonic() < deadline:
            time.sleep(0.5)
        records = [client.job(job_id).status() for job_id in forged_jobs]
        after = client.embed(["a real text after the forgeries"], timeout=JOB_TIMEOUT_S)
    crashes = sum(node.log_text().count("exited with") for node in fleet.nodes)
    dropped = sum(node.log_text().count("dropped a queue entry") for node in fleet.nodes)
    restarts = sum(node.log_text().count("Connection to broker lost") for node in fleet.nodes)
    failed = sum(record.state.value == "failed" for record in records)
    ended = sum(record.state.finished for record in records)
    drill_report.add(
        DrillRow(
            f"{sent[0]:,} forged or malformed messages (hypothesis)",
            "—",
            0,
            failed == len(records),
            None,
            f"{len(records):,} forged jobs all ended ({failed:,} failed with a reason); {dropped:,} entries "
            f"that were no kombu message dropped; {restarts} consumer restarts; {crashes} worker processes "
            "died; the next real job succeeded",
        )
    )
    assert (
        sent[0] >= 10_000 and crashes == restarts == 0 and after.shape == (1, 384) and ended == len(records)
    )
    assert all(node.alive() for node in fleet.nodes) and len(fleet.worker.children()) == 2
