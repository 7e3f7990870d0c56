"""Fuzzed inputs through the client and the CLI against a real fleet: refusals name the input,
everything accepted finishes, and no worker process dies."""

from __future__ import annotations

import contextlib
import io
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
