"""Redis over TLS: the fleet runs end to end on rediss:// with a client certificate, and a wrong
certificate fails closed with a message that names the setting to fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localfleet.fleet import LocalFleet, fleet_env
from localfleet.redis_server import RedisServer, start_redis
from localfleet.tls import LocalPki, make_pki
from producer import RedisUnavailableError
from tests.fleet.conftest import TEST_ENV
from tests.fleet.test_bad_input import run_cli_with
from tests.fleet.test_jobs import JOB_TIMEOUT_S, unique_texts

pytestmark = pytest.mark.fleet


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki: LocalPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("tls-redis"), pki=pki)
    yield server
    server.stop()


def tls_env(server: RedisServer, pki: LocalPki, **overrides: str) -> dict[str, str]:
    return {
        **TEST_ENV,
        "EMBED_BROKER_URL": server.url,
        "EMBED_REDIS_TLS_CA_FILE": str(pki.ca),
        "EMBED_REDIS_TLS_CERT_FILE": str(pki.client_cert),
        "EMBED_REDIS_TLS_KEY_FILE": str(pki.client_key),
        **overrides,
    }


def test_the_fleet_runs_over_tls(
    tls_server: RedisServer, pki: LocalPki, static_artifact: Path, tmp_path: Path
) -> None:
    assert tls_server.url.startswith("rediss://")
    settings, env = fleet_env({**tls_env(tls_server, pki), "EMBED_MODEL_DIR": str(static_artifact)})
    with LocalFleet(settings, env, tmp_path / "worker.log") as fleet:
        fleet.start()
        with fleet.client() as client:
            assert client.embed(unique_texts(20), timeout=JOB_TIMEOUT_S).shape == (20, 384)
            job = client.submit(unique_texts(300))
            assert job.wait(timeout=JOB_TIMEOUT_S).state.value == "done"
        source = tmp_path / "texts.txt"
        source.write_text("over tls\n")
        assert run_cli_with(settings, "submit", str(source), "--wait", env=env).returncode == 0


def test_a_certificate_from_another_ca_fails_closed(
    tls_server: RedisServer, pki: LocalPki, tmp_path: Path
) -> None:
    stranger = make_pki(tmp_path / "other", name="stranger")
    settings, _ = fleet_env(
        tls_env(tls_server, pki, EMBED_REDIS_TLS_CA_FILE=str(stranger.ca), EMBED_REDIS_OUTAGE_S="0")
    )
    from producer import EmbeddingClient

    with (
        EmbeddingClient(settings) as client,
        pytest.raises(RedisUnavailableError, match="EMBED_REDIS_TLS_CA_FILE"),
    ):
        client.embed(["never sent"])


def test_a_client_without_a_certificate_is_refused(tls_server: RedisServer, pki: LocalPki) -> None:
    settings, _ = fleet_env(
        tls_env(
            tls_server,
            pki,
            EMBED_REDIS_TLS_CERT_FILE="",
            EMBED_REDIS_TLS_KEY_FILE="",
            EMBED_REDIS_OUTAGE_S="0",
        )
    )
    from producer import EmbeddingClient

    with EmbeddingClient(settings) as client, pytest.raises(RedisUnavailableError, match="unreachable"):
        client.embed(["never sent"])
