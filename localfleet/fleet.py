"""A fleet on this machine: Celery worker nodes (and Flower) as child processes, for the demo,
the tests, the drills and the benchmarks. Each node is a whole `celery -A worker worker` process
tree, as on a host of its own; drills kill and stop them as a host would die or be drained.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from contract.settings import FleetSettings
from producer.client import EmbeddingClient

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
POLL_S = 0.2
LOG_TAIL_CHARS = 3_000
ENGINE_READY_LINE = "engine ready"
READY_SUFFIX = " ready."


@dataclass
class WorkerNode:
    """One `celery -A worker worker` process tree with its own log."""

    name: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def children(self) -> list[int]:
        """Pool children (what the OOM killer or a SIGKILL would hit)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(child) for child in path.read_text().split()] if path.exists() else []

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """A lost host: the main process and its children die at once, nothing is handed back."""
        children = self.children()  # read first: once the main process is gone, so is this list
        for pid in [self.pid, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Warm shutdown (SIGTERM): running chunks finish or go back to the queue."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.process.returncode)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self) -> str:
        return self.log_text()[-LOG_TAIL_CHARS:]

    def wait_ready(self, processes: int, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Ready when every pool child has opened its engine and the consumer runs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker {self.name} exited; its log ends:\n{self.log_tail()}")
            text = self.log_text()
            if text.count(ENGINE_READY_LINE) >= processes and f"{self.name}{READY_SUFFIX}" in text:
                return
            time.sleep(POLL_S)
        raise RuntimeError(f"worker {self.name} not ready after {timeout_s}s:\n{self.log_tail()}")


@dataclass
class LocalFleet:
    """Worker nodes (plus optional Flower) sharing one set of settings, all stopped on exit."""

    settings: FleetSettings
    env: dict[str, str]
    log: Path
    worker_args: list[str] = field(default_factory=list)
    nodes: list[WorkerNode] = field(default_factory=list)
    flower: subprocess.Popen[bytes] | None = None

    @property
    def worker(self) -> WorkerNode:
        """The first node (most tests need one)."""
        return self.nodes[0]

    def start(self, flower_port: int | None = None, flower_env: dict[str, str] | None = None) -> LocalFleet:
        self.add_node()
        if flower_port:
            flower = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "flower",
                "--address=127.0.0.1",
                f"--port={flower_port}",
            ]
            self.flower = self._spawn(flower, self.log.with_suffix(".flower.log"), flower_env or {})
        return self

    def add_node(
        self, wait: bool = True, env: dict[str, str] | None = None, concurrency: int | None = None
    ) -> WorkerNode:
        """Start one more node (as another host would); returns once it consumes, unless `wait=False`."""
        index = len(self.nodes)
        name = f"embed{index}-{uuid.uuid4().hex[:6]}@{os.uname().nodename}"
        command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel=INFO"]
        command += ["--pool=prefork", "--without-gossip", "--without-mingle", "-n", name, *self.worker_args]
        if concurrency:
            command += ["-c", str(concurrency)]
        log = self.log.with_name(f"{self.log.stem}.{index}{self.log.suffix}")
        node = WorkerNode(name, log, self._spawn(command, log, env or {}))
        self.nodes.append(node)
        if wait:
            node.wait_ready(concurrency or self.settings.processes())
        return node

    def client(self, **overrides: object) -> EmbeddingClient:
        return EmbeddingClient(self.settings.model_copy(update=overrides))

    def children(self) -> list[int]:
        return self.worker.children()

    def stop(self) -> None:
        if self.flower is not None and self.flower.poll() is None:
            self.flower.send_signal(signal.SIGTERM)
            try:
                self.flower.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.flower.kill()
                self.flower.wait()
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _spawn(self, command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("ab") as sink:
            return subprocess.Popen(command, env={**os.environ, **self.env, **env}, stdout=sink, stderr=sink)


def fleet_env(settings_env: dict[str, str]) -> tuple[FleetSettings, dict[str, str]]:
    """Settings for this process and the same values as EMBED_ variables for the children."""
    values = {key.removeprefix("EMBED_").lower(): value for key, value in settings_env.items()}
    return FleetSettings(**values), settings_env  # type: ignore[arg-type]
