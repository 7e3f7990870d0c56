"""The command line against the real fleet: submit, status, fetch, and exit codes scripts rely on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from localfleet.fleet import LocalFleet
from tests.fleet.test_bad_input import run_cli
from tests.fleet.test_jobs import unique_texts

pytestmark = pytest.mark.fleet


def test_submit_wait_out_then_status_and_fetch(fleet: LocalFleet, tmp_path: Path) -> None:
    texts = unique_texts(30)
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(texts)))
    out = tmp_path / "vectors.npy"
    submitted = run_cli(fleet, "submit", str(source), "--wait", "--out", str(out))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.splitlines()[0]
    assert np.load(out).shape == (30, 384)

    status = run_cli(fleet, "status", job_id)
    assert status.returncode == 0
    assert json.loads(status.stdout)["done"] == 30

    again = tmp_path / "again.npy"
    fetched = run_cli(fleet, "fetch", job_id, "--out", str(again))
    assert fetched.returncode == 0
    np.testing.assert_array_equal(np.load(again), np.load(out))


def test_unknown_job_exits_3(fleet: LocalFleet) -> None:
    result = run_cli(fleet, "status", "no-such-job")
    assert result.returncode == 3 and "no job no-such-job" in result.stderr
