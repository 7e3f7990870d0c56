"""A loopback TCP proxy that partitions, cuts or refuses connections on command.

Fault drills run real Celery workers and real redis-py clients against a real redis-server. To show them a
lost network, a dropped connection or a dead server without mocks, something has to sit between them and
misbehave on request; this is it. It is stdlib only and runs one selector thread, so it can carry a broker's
traffic without becoming the bottleneck it is meant to simulate.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import queue
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

LISTEN_HOST = "127.0.0.1"
LISTEN_BACKLOG = 128
RECV_CHUNK_BYTES = 256 * 1024
# Past this many bytes queued toward one side we stop reading from the other, so a slow reader slows its
# writer down (as TCP would) instead of growing our memory without bound.
HIGH_WATER_BYTES = 1024 * 1024
# Callers wait for the loop to apply a fault, so a test's next line already sees it; the loop answers in
# well under a millisecond, so this only fires if the loop is wedged.
CONTROL_TIMEOUT_S = 2.0
JOIN_TIMEOUT_S = 5.0
# SO_LINGER on, zero seconds: close() sends RST and drops unsent data, as a crashed host or middlebox would.
LINGER_RESET = struct.pack("ii", 1, 0)
WAKE_BYTE = b"\0"
WAKE_DRAIN_BYTES = 4096

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class _Mode(enum.Enum):
    FORWARD = "forward"
    BLACKHOLE = "blackhole"
    REFUSE = "refuse"


class _Marker(enum.Enum):
    """Selector data for the proxy's own sockets, told apart from connection sides."""

    LISTENER = "listener"
    WAKE = "wake"


class _Side:
    """One socket of a proxied connection and the bytes still owed to it."""

    __slots__ = ("eof", "link", "mask", "out", "shut", "sock")

    def __init__(self, sock: socket.socket, link: _Link) -> None:
        self.sock: socket.socket | None = sock  # None once closed while the other side is kept hanging
        self.link = link
        self.out = bytearray()
        self.eof = False  # the peer behind this socket sent FIN
        self.shut = False  # we sent FIN to it
        self.mask = 0  # events registered with the selector; 0 means not registered


class _Link:
    """A client connection paired with its own upstream connection."""

    __slots__ = ("client", "closed", "connecting", "upstream")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = _Side(client, self)
        self.upstream = _Side(upstream, self)
        self.connecting = True
        self.closed = False

    def peer(self, side: _Side) -> _Side:
        return self.upstream if side is self.client else self.client

    def sides(self) -> tuple[_Side, _Side]:
        return self.client, self.upstream


def _tune(sock: socket.socket) -> None:
    """Non-blocking for the selector; no Nagle, since small Redis replies must not wait for an ACK."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _close_socket(sock: socket.socket, abortive: bool) -> None:
    if abortive:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    sock.close()


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """Resolve once, preferring IPv4: `localhost` may list ::1 first while redis binds only 127.0.0.1."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, address = infos[0]
    return family, (str(address[0]), int(address[1]))


class TcpProxy:
    """Forwards 127.0.0.1:port to a target until told to fail, from any thread, at any time.

    Every fault control returns once the proxy thread has applied it, so the caller's next action already
    meets the fault.
    """

    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self._family, self._target = _resolve(target_host, target_port)
        self._listener = socket.create_server((LISTEN_HOST, listen_port), backlog=LISTEN_BACKLOG)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, READ, _Marker.LISTENER)
        self._selector.register(self._wake_r, READ, _Marker.WAKE)
        self._mode = _Mode.FORWARD
        self._links: set[_Link] = set()
        self._commands: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._running = False
        self._stopping = False
        self._closed = False
        self._accepted = 0
        self._forwarded = 0
        self._port = int(self._listener.getsockname()[1])

    # -- public API -------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def connections_accepted(self) -> int:
        """Every accept counts, refused ones included, so a test can tell a client tried to connect."""
        return self._accepted

    @property
    def open_connections(self) -> int:
        return len(self._links)

    @property
    def bytes_forwarded(self) -> int:
        """Bytes delivered to either side; dropped bytes do not count, so a blackhole shows as no growth."""
        return self._forwarded

    def start(self) -> TcpProxy:
        with self._lock:
            if self._closed:
                raise RuntimeError("TcpProxy is closed")
            if self._thread is not None:
                raise RuntimeError("TcpProxy already started")
            self._thread = threading.Thread(target=self._run, name=f"tcp-proxy-{self._port}", daemon=True)
            self._running = True
            self._thread.start()
        return self

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread, running = self._thread, self._running
            self._stopping = True
        if thread is not None and running:
            self._wake()
            thread.join(JOIN_TIMEOUT_S)
        elif thread is None:
            self._teardown()

    def blackhole(self) -> None:
        """Partition: bytes in either direction are read and dropped, and nobody is told."""
        self._control(self._apply_blackhole)

    def restore(self) -> None:
        """End a blackhole or a refusal; connections that outlived a blackhole carry bytes again."""
        self._control(self._apply_restore)

    def cut(self) -> None:
        """Reset every current connection on both sides; the listener keeps forwarding new ones."""
        self._control(self._apply_cut)

    def refuse(self) -> None:
        """Behave like a dead server: reset existing connections and every new one right after accept."""
        self._control(self._apply_refuse)

    def __enter__(self) -> TcpProxy:
        return self if self._thread is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- control plumbing: callers hand work to the loop thread, which alone touches sockets ------------

    def _control(self, action: Callable[[], None]) -> None:
        done = threading.Event()
        with self._lock:
            if not self._running or threading.current_thread() is self._thread:
                action()  # no loop to race with (not started, or already stopped)
                return
            self._commands.put((action, done))
        self._wake()
        if not done.wait(CONTROL_TIMEOUT_S):
            raise TimeoutError("TcpProxy loop did not apply the fault in time")

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(WAKE_BYTE)

    def _run_commands(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._wake_r.recv(WAKE_DRAIN_BYTES):
                pass
        while True:
            try:
                action, done = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                action()
            finally:
                done.set()

    def _apply_blackhole(self) -> None:
        self._mode = _Mode.BLACKHOLE
        for link in list(self._links):
            for side in link.sides():
                side.out.clear()  # in flight at the partition: lost, not delivered late
            self._update_masks(link)

    def _apply_restore(self) -> None:
        self._mode = _Mode.FORWARD
        for link in list(self._links):
            if link.client.sock is None or link.upstream.sock is None:
                # The far side went away during the partition; the survivor learns it now, as from a RST.
                self._close_link(link, abortive=True)
            else:
                self._settle(link)

    def _apply_cut(self) -> None:
        for link in list(self._links):
            self._close_link(link, abortive=True)

    def _apply_refuse(self) -> None:
        self._mode = _Mode.REFUSE
        self._apply_cut()

    # -- the loop -------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, events in self._selector.select():
                    self._dispatch(key.data, events)
        finally:
            self._teardown()

    def _teardown(self) -> None:
        with self._lock:  # held throughout, so a control arriving now runs inline only after we are done
            self._running = False
            self._run_commands()  # release callers that queued while we were stopping
            self._apply_cut()
            self._selector.close()
            for sock in (self._listener, self._wake_r, self._wake_w):
                sock.close()

    def _dispatch(self, data: object, events: int) -> None:
        if data is _Marker.LISTENER:
            self._accept()
        elif data is _Marker.WAKE:
            self._run_commands()
        elif isinstance(data, _Side) and not data.link.closed:
            self._service(data, events)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:  # nothing pending after all, or out of fds: the next event retries
            return
        self._accepted += 1
        if self._mode is _Mode.REFUSE:
            _close_socket(client, abortive=True)
            return
        _tune(client)
        upstream = socket.socket(self._family, socket.SOCK_STREAM)
        _tune(upstream)
        link = _Link(client, upstream)
        self._links.add(link)
        error = upstream.connect_ex(self._target)
        if error == 0:
            link.connecting = False
        elif error != errno.EINPROGRESS:
            self._lose(link.upstream, abortive=True)
        if not link.closed:
            self._settle(link)

    def _service(self, side: _Side, events: int) -> None:
        link = side.link
        if events & WRITE:
            self._on_writable(side)
        if events & READ and not link.closed and side.sock is not None:
            self._on_readable(side)
        if not link.closed:
            self._settle(link)

    def _on_writable(self, side: _Side) -> None:
        link = side.link
        if link.connecting and side is link.upstream:
            self._finish_connect(link)
        else:
            self._flush(side)

    def _finish_connect(self, link: _Link) -> None:
        sock = link.upstream.sock
        if sock is None:
            return
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._lose(link.upstream, abortive=True)
            return
        link.connecting = False
        self._flush(link.upstream)  # what the client sent while we were still connecting

    def _on_readable(self, side: _Side) -> None:
        assert side.sock is not None
        try:
            data = side.sock.recv(RECV_CHUNK_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lose(side, abortive=True)
            return
        if not data:
            side.eof = True
            if self._mode is _Mode.BLACKHOLE:
                self._lose(side, abortive=False)
            return
        if self._mode is not _Mode.FORWARD:
            return  # a partition loses packets; it does not queue them
        peer = side.link.peer(side)
        peer.out += data
        self._flush(peer)  # right away, not on the next select: this is what keeps latency low

    def _flush(self, side: _Side) -> None:
        link = side.link
        if not side.out or side.sock is None or self._mode is not _Mode.FORWARD:
            return
        if link.connecting and side is link.upstream:
            return
        try:
            sent = side.sock.send(side.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lose(side, abortive=True)
            return
        del side.out[:sent]
        self._forwarded += sent

    def _lose(self, side: _Side, abortive: bool) -> None:
        """A side's socket is gone; decide whether its peer hears about it."""
        link = side.link
        if self._mode is _Mode.BLACKHOLE and side is link.upstream and not link.client.eof:
            self._release(side, abortive)  # the client keeps hanging, as it would behind a partition
        else:
            self._close_link(link, abortive)

    def _settle(self, link: _Link) -> None:
        """After any event: pass on half-closes, retire finished links, and re-arm the selector."""
        if self._mode is _Mode.FORWARD and not link.connecting:
            for side in link.sides():
                self._pass_on_eof(side)
            if link.client.shut and link.upstream.shut:
                self._close_link(link, abortive=False)
                return
        if not link.closed:
            self._update_masks(link)

    def _pass_on_eof(self, side: _Side) -> None:
        peer = side.link.peer(side)
        if not side.eof or peer.shut or peer.out or peer.sock is None or side.link.closed:
            return
        try:
            peer.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._lose(peer, abortive=True)
            return
        peer.shut = True

    def _update_masks(self, link: _Link) -> None:
        for side in link.sides():
            self._set_mask(side, self._wanted_mask(side))

    def _wanted_mask(self, side: _Side) -> int:
        link = side.link
        blackholed = self._mode is _Mode.BLACKHOLE
        mask = 0
        if not side.eof and (blackholed or len(link.peer(side).out) < HIGH_WATER_BYTES):
            mask |= READ
        if (link.connecting and side is link.upstream) or (side.out and not blackholed):
            mask |= WRITE
        return mask

    def _set_mask(self, side: _Side, mask: int) -> None:
        sock = side.sock
        if sock is None or mask == side.mask:
            return
        if side.mask == 0:
            self._selector.register(sock, mask, side)
        elif mask == 0:
            self._selector.unregister(sock)
        else:
            self._selector.modify(sock, mask, side)
        side.mask = mask

    def _release(self, side: _Side, abortive: bool) -> None:
        sock = side.sock
        if sock is None:
            return
        if side.mask:
            self._selector.unregister(sock)
            side.mask = 0
        _close_socket(sock, abortive)
        side.sock = None
        side.out.clear()

    def _close_link(self, link: _Link, abortive: bool) -> None:
        link.closed = True
        for side in link.sides():
            self._release(side, abortive)
        self._links.discard(link)
