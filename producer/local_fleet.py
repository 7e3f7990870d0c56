"""A fleet on this machine: Celery worker (and Flower) as child processes, for the demo and the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from contract.settings import FleetSettings
from producer.client import EmbeddingClient

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
PING_TIMEOUT_S = 0.5
POLL_S = 0.2
ENGINE_READY_LINE = "engine ready"


@dataclass
class LocalFleet:
    """One `celery -A worker worker` process tree (plus optional Flower), stopped on exit."""

    settings: FleetSettings
    env: dict[str, str]
    log: Path
    worker: subprocess.Popen[bytes] | None = None
    flower: subprocess.Popen[bytes] | None = None

    def start(self, flower_port: int | None = None) -> LocalFleet:
        command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel=INFO"]
        command += ["--pool=prefork", "--without-gossip", "--without-mingle"]
        command += ["-n", f"embed-{uuid.uuid4().hex[:6]}@%h"]
        self.worker = self._spawn(command, self.log)
        if flower_port:
            flower = [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={flower_port}"]
            self.flower = self._spawn(flower, self.log.with_suffix(".flower.log"))
        self.wait_ready()
        return self

    def client(self, **overrides: object) -> EmbeddingClient:
        return EmbeddingClient(self.settings.model_copy(update=overrides))

    def children(self) -> list[int]:
        """Pool children of the worker (what the OOM killer or a SIGKILL would hit)."""
        assert self.worker is not None
        pid = self.worker.pid
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def wait_ready(self) -> None:
        """Ready when the worker answers a ping and every pool child has opened its engine."""
        assert self.worker is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.worker.poll() is not None:
                    raise RuntimeError(f"worker exited; its log ends:\n{self.log.read_text()[-3000:]}")
                engines = self.log.read_text().count(ENGINE_READY_LINE)
                if engines >= self.settings.processes() and client.celery.control.ping(
                    timeout=PING_TIMEOUT_S
                ):
                    return
                time.sleep(POLL_S)
        raise RuntimeError(f"worker not ready after {READY_TIMEOUT_S}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        for process in (self.flower, self.worker):
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as sink:
            return subprocess.Popen(command, env={**os.environ, **self.env}, stdout=sink, stderr=sink)


def fleet_env(settings_env: dict[str, str]) -> tuple[FleetSettings, dict[str, str]]:
    """Settings for this process and the same values as EMBED_ variables for the children."""
    values = {key.removeprefix("EMBED_").lower(): value for key, value in settings_env.items()}
    return FleetSettings(**values), settings_env  # type: ignore[arg-type]
