"""docker-compose.yml against the contract: services, commands, EMBED_ names, safe defaults.

(No Docker engine runs on the development machines: the file is checked, not run.)"""

from __future__ import annotations

import re
from typing import Any

import yaml

from contract.celery_config import SOFT_SHUTDOWN_S
from contract.settings import FleetSettings
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"


def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def test_the_fleet_services_and_their_commands() -> None:
    found = services()
    assert set(found) == {"redis", "worker", "gateway", "flower"}
    assert found["worker"]["command"][:4] == ["celery", "-A", "worker", "worker"]
    assert found["flower"]["command"][:4] == ["celery", "-A", "worker", "flower"]
    assert found["gateway"]["command"][:4] == ["python", "-m", "producer", "serve"]
    for name in ("worker", "gateway", "flower"):
        assert found[name]["build"]["target"] == name
        assert found[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_every_embed_variable_is_a_setting() -> None:
    known = {f"EMBED_{name.upper()}" for name in FleetSettings.model_fields}
    used = set(re.findall(r"\bEMBED_[A-Z_]+\b", COMPOSE.read_text()))
    assert used and used <= known, used - known


def test_redis_keeps_its_data_needs_a_password_and_is_not_published() -> None:
    redis = services()["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert "--requirepass" in command
    assert "ports" not in redis and redis["volumes"] == ["redis-data:/data"]


def test_workers_stop_gracefully_within_their_cpus() -> None:
    worker = services()["worker"]
    assert int(worker["stop_grace_period"].removesuffix("s")) > SOFT_SHUTDOWN_S
    assert worker["cpus"] >= 1


def test_flower_and_the_gateway_are_guarded_and_local() -> None:
    found = services()
    assert "FLOWER_BASIC_AUTH" in found["flower"]["environment"]
    assert "FLOWER_UNAUTHENTICATED_API" not in found["flower"]["environment"]
    assert "EMBED_API_KEYS" in found["gateway"]["environment"]
    for name in ("flower", "gateway"):
        assert all(port.startswith("127.0.0.1:") for port in found[name]["ports"])


def test_the_image_runs_as_a_user_and_leaves_local_files_out() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("USER 10001") == 3 and dockerfile.count("HEALTHCHECK") == 3
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "artifacts", ".git"} <= set(ignored)
