"""The drill proxy against a real redis-server and redis-py: its faults must look real to clients."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from localfleet.redis_server import RedisServer, start_redis
from localfleet.tcp_proxy import TcpProxy

pytestmark = pytest.mark.fleet

CLIENT_TIMEOUT_S = 0.5
SETTLE_TIMEOUT_S = 2.0
POLL_S = 0.01
ONE_MB = 1024 * 1024
RAW_READ_BYTES = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("proxy-redis"))
    yield server
    server.stop()


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", server.port) as proxy:
        yield proxy


def client(proxy: TcpProxy, *, single: bool = False) -> redis.Redis:
    """No retries: redis-py would otherwise hide the very faults these tests inject."""
    return redis.Redis(
        host="127.0.0.1",
        port=proxy.port,
        socket_timeout=CLIENT_TIMEOUT_S,
        socket_connect_timeout=CLIENT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        single_connection_client=single,
    )


def raw_connection(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=CLIENT_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(POLL_S)


def proxy_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("tcp-proxy-")]


def test_commands_pass_through(proxy: TcpProxy) -> None:
    r = client(proxy)
    assert r.set("proxy:k", b"v")
    assert r.get("proxy:k") == b"v"
    pipe = r.pipeline()
    for i in range(100):
        pipe.set(f"proxy:p{i}", i)
    pipe.get("proxy:p42")
    assert pipe.execute()[-1] == b"42"
    big = bytes(range(256)) * (ONE_MB // 256)
    r.set("proxy:big", big)
    assert r.get("proxy:big") == big
    assert proxy.connections_accepted >= 1
    # the proxy thread counts a send after it returns, which may be after the client has the reply
    eventually(lambda: proxy.bytes_forwarded > 2 * ONE_MB)
    r.close()


def test_half_close_is_passed_on(proxy: TcpProxy) -> None:
    with raw_connection(proxy) as sock:
        sock.sendall(b"PING\r\n")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(RAW_READ_BYTES):
            received += chunk
    assert received == b"+PONG\r\n"
    eventually(lambda: proxy.open_connections == 0)


def test_blackhole_times_out_clients_and_restore_recovers(proxy: TcpProxy) -> None:
    reconnecting = client(proxy)
    assert reconnecting.ping()
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        reconnecting.get("proxy:k")
    assert time.monotonic() - started < CLIENT_TIMEOUT_S * 3
    with pytest.raises(redis.TimeoutError):
        client(proxy).ping()  # accepted, but nothing comes back
    forwarded = proxy.bytes_forwarded
    proxy.restore()
    assert client(proxy).ping()
    assert reconnecting.ping()
    assert proxy.bytes_forwarded > forwarded
    reconnecting.close()


def test_blackhole_drops_bytes_instead_of_delaying_them(proxy: TcpProxy) -> None:
    with raw_connection(proxy) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(RAW_READ_BYTES) == b"+PONG\r\n"
        proxy.blackhole()
        sock.sendall(b"SET proxy:dropped 1\r\n")
        with pytest.raises(TimeoutError):
            sock.recv(RAW_READ_BYTES)
        proxy.restore()
        sock.sendall(b"EXISTS proxy:dropped\r\n")
        assert sock.recv(RAW_READ_BYTES) == b":0\r\n"


def test_connections_closed_during_blackhole_are_released(proxy: TcpProxy) -> None:
    proxy.blackhole()
    sockets = [raw_connection(proxy) for _ in range(5)]
    eventually(lambda: proxy.open_connections == len(sockets))
    for sock in sockets:
        sock.sendall(b"PING\r\n")
        sock.close()
    eventually(lambda: proxy.open_connections == 0)
    assert proxy.connections_accepted == len(sockets)


def test_cut_fails_the_next_command_and_a_reconnect_succeeds(proxy: TcpProxy) -> None:
    r = client(proxy, single=True)
    assert r.ping()
    proxy.cut()
    assert proxy.open_connections == 0
    with pytest.raises(redis.ConnectionError):
        r.ping()
    assert r.ping()
    assert client(proxy).ping()
    r.close()


def test_cut_wakes_a_blocked_reader_at_once(proxy: TcpProxy) -> None:
    r = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    errors: list[BaseException] = []

    def block() -> None:
        try:
            r.blpop(["proxy:never"], timeout=4)
        except redis.RedisError as exc:
            errors.append(exc)

    reader = threading.Thread(target=block)
    reader.start()
    eventually(lambda: proxy.open_connections == 1)
    time.sleep(POLL_S * 5)  # let BLPOP reach the server
    started = time.monotonic()
    proxy.cut()
    reader.join(SETTLE_TIMEOUT_S)
    assert not reader.is_alive()
    assert time.monotonic() - started < 1.0
    assert len(errors) == 1 and isinstance(errors[0], redis.ConnectionError)
    r.close()


def test_refuse_rejects_new_connections_until_restored(proxy: TcpProxy) -> None:
    existing = client(proxy, single=True)
    assert existing.ping()
    proxy.refuse()
    assert proxy.open_connections == 0
    with pytest.raises(redis.ConnectionError):
        client(proxy).ping()
    with pytest.raises(redis.ConnectionError):
        existing.ping()
    assert proxy.open_connections == 0
    assert proxy.connections_accepted >= 2
    proxy.restore()
    assert client(proxy).ping()
    existing.close()


def test_close_stops_the_thread_and_every_connection(server: RedisServer) -> None:
    proxy = TcpProxy("127.0.0.1", server.port).start()
    r = client(proxy, single=True)
    assert r.ping()
    assert proxy.open_connections == 1
    assert proxy_threads()
    proxy.close()
    assert proxy.open_connections == 0
    assert not proxy_threads()
    with pytest.raises(redis.ConnectionError):
        r.ping()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=CLIENT_TIMEOUT_S)
    proxy.close()  # idempotent
    proxy.blackhole()  # harmless after close
    r.close()


def test_listen_port_is_honoured_and_controls_work_before_start(server: RedisServer) -> None:
    first = TcpProxy("127.0.0.1", server.port)
    port = first.port
    first.close()
    proxy = TcpProxy("localhost", server.port, listen_port=port)
    proxy.blackhole()
    proxy.restore()
    with proxy:
        assert proxy.port == port
        assert client(proxy).ping()
