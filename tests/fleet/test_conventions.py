"""Celery's and the command line's conventions: `-c N` sizes the engine, bad files and bad inputs get
exit 2 or InvalidTextError with a clear message, never a traceback."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from contract.settings import usable_cpus
from localfleet.fleet import LocalFleet
from producer import EmbeddingClient, InvalidTextError
from tests.fleet.test_bad_input import run_cli, run_cli_with

pytestmark = pytest.mark.fleet


def test_dash_c_sizes_the_engine_threads(fleet: LocalFleet, tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in fleet.env.items()
        if key not in ("EMBED_WORKER_CONCURRENCY", "EMBED_INTRA_OP_THREADS")
    }
    with LocalFleet(fleet.settings, env, tmp_path / "one.log") as single:
        node = single.add_node(concurrency=1)
        threads = re.findall(r"engine ready: .* (\d+) intra-op threads", node.log_text())
    assert threads == [str(usable_cpus())]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda tmp: ["submit", str(tmp / "missing.txt")], "no such file"),
        (lambda tmp: ["submit", str(tmp)], "is a directory"),
        (
            lambda tmp: ["submit", str(_file(tmp)), "--out", str(tmp / "nowhere" / "v.npy")],
            "cannot write --out",
        ),
        (lambda tmp: ["submit", str(_file(tmp)), "--out", str(tmp)], "is a directory"),
    ],
)
def test_bad_files_exit_2_without_a_traceback(
    fleet: LocalFleet, tmp_path: Path, make: object, words: str
) -> None:
    result = run_cli(fleet, *make(tmp_path))  # type: ignore[operator]
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_redis_exits_2(fleet: LocalFleet, tmp_path: Path) -> None:
    gone = fleet.settings.model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0", "cache_url": "redis://127.0.0.1:1/0"}
    )
    result = run_cli_with(gone, "submit", str(_file(tmp_path)), env={"EMBED_REDIS_OUTAGE_S": "0"})
    assert result.returncode == 2 and "unreachable" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("texts", "words"),
    [
        (None, "not NoneType"),
        (42, "not int"),
        ((t for t in ["a"]), "not generator: pass list"),
        ({"a": 1}, "not dict"),
    ],
)
def test_the_client_refuses_what_is_not_a_list_of_texts(
    client: EmbeddingClient, texts: object, words: str
) -> None:
    with pytest.raises(InvalidTextError, match=words):
        client.submit(texts)  # type: ignore[arg-type]


def _file(folder: Path) -> Path:
    path = folder / "texts.txt"
    path.write_text("a text\n")
    return path


def test_usable_cpus_is_what_the_process_may_use() -> None:
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)
