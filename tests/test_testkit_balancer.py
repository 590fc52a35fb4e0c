"""The round-robin balancer of the testkit, in front of tiny echo servers: each echoes what it
gets with its own prefix (b"A:" + data), so a reply tells which target the connection went to."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from testkit.balancer import RoundRobinProxy
from testkit.polling import wait_until
from testkit.tcp import Listener, prepare, receive, shutdown

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 5.0


class EchoServer:
    """Echo on a free loopback port, each chunk prefixed with ``name:``; one thread a connection."""

    def __init__(self, name: str) -> None:
        self.prefix = name.encode() + b":"
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.open = 0  # connections not closed yet
        self.listener = Listener(self._accept, name=f"echo-{name}-accept")
        self.address = self.listener.address

    def _accept(self, conn: socket.socket) -> None:
        prepare(conn)
        thread = threading.Thread(target=self._echo, args=(conn,), name="echo-conn", daemon=True)
        with self.lock:
            self.conns.append(conn)
            self.threads.append(thread)
            self.open += 1
        thread.start()

    def _echo(self, conn: socket.socket) -> None:
        try:
            with contextlib.suppress(OSError), conn:
                for data in receive(conn, self.stop):
                    conn.sendall(self.prefix + data)
        finally:
            with self.lock:
                self.open -= 1

    def drop(self, reset: bool = False) -> None:
        """End every connection from this side: a FIN, or an RST as from a killed process."""
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            shutdown(conn, reset)  # the echo thread sees EOF and closes it

    def close(self) -> None:
        self.listener.close()
        self.stop.set()
        self.drop()
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(TIMEOUT)


@pytest.fixture
def servers() -> Iterator[list[EchoServer]]:
    started = [EchoServer(name) for name in "ABC"]
    yield started
    for server in started:
        server.close()


def dead_address() -> tuple[str, int]:
    """A loopback port with nothing listening on it (bound, noted, closed)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return ("127.0.0.1", sock.getsockname()[1])


def connect(balancer: RoundRobinProxy) -> socket.socket:
    return socket.create_connection(balancer.address, timeout=TIMEOUT)


def exchange(sock: socket.socket, data: bytes = b"hi") -> bytes:
    """Send ``data``, read the reply (a 2-byte prefix and ``data``), return the prefix."""
    sock.sendall(data)
    reply = b""
    while len(reply) < 2 + len(data):
        chunk = sock.recv(4096)
        assert chunk, f"EOF after {reply!r}"
        reply += chunk
    assert reply[2:] == data
    return reply[:2]


def balancer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("balancer-")]


def test_address_and_url(servers: list[EchoServer]) -> None:
    """The balancer listens on a loopback port of its own, which address and url name."""
    with RoundRobinProxy([servers[0].address]) as balancer:
        assert balancer.address == ("127.0.0.1", balancer.port)
        assert balancer.url() == f"http://127.0.0.1:{balancer.port}/"
        assert balancer.url("ws", "/socket.io/") == f"ws://127.0.0.1:{balancer.port}/socket.io/"


def test_connections_alternate(servers: list[EchoServer]) -> None:
    """Consecutive connections go to the targets in turn, and each target's count says so."""
    a, b = servers[:2]
    with RoundRobinProxy([a.address, b.address]) as balancer:
        prefixes = []
        for _ in range(4):
            with connect(balancer) as sock:
                prefixes.append(exchange(sock))
                assert exchange(sock, b"again") == prefixes[-1]  # one connection, one target
        assert prefixes == [b"A:", b"B:", b"A:", b"B:"]
        assert balancer.served == [2, 2]


def test_down_target_is_skipped(servers: list[EchoServer]) -> None:
    """A target with nothing listening is skipped: the following one gets the client."""
    a, _, c = servers
    with RoundRobinProxy([a.address, dead_address(), c.address]) as balancer:
        prefixes = []
        for _ in range(4):
            with connect(balancer) as sock:
                prefixes.append(exchange(sock))
        assert prefixes == [b"A:", b"C:", b"A:", b"C:"]
        assert balancer.served == [2, 0, 2]


def test_no_target_up_closes_the_client() -> None:
    """When no target accepts, the client connection is closed."""
    with RoundRobinProxy([dead_address(), dead_address()]) as balancer, connect(balancer) as sock:
        assert sock.recv(4096) == b""
        assert balancer.served == [0, 0]


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_target_closing_gives_client_eof(servers: list[EchoServer], reset: bool) -> None:
    """When the target ends the connection (closed, or reset as by a killed process), the client
    sees EOF."""
    with RoundRobinProxy([servers[0].address]) as balancer, connect(balancer) as sock:
        assert exchange(sock) == b"A:"
        servers[0].drop(reset=reset)
        assert sock.recv(4096) == b""


def test_client_closing_closes_target_side(servers: list[EchoServer]) -> None:
    """When the client closes, the balancer closes its connection to the target too."""
    with RoundRobinProxy([servers[0].address]) as balancer:
        with connect(balancer) as sock:
            assert exchange(sock) == b"A:"
            assert servers[0].open == 1
        wait_until(lambda: servers[0].open == 0, TIMEOUT, "the target's side closed")


def test_set_targets(servers: list[EchoServer]) -> None:
    """set_targets applies to the next connections; open ones stay where they are."""
    a, b, c = servers
    with RoundRobinProxy([a.address]) as balancer, connect(balancer) as first:
        assert exchange(first) == b"A:"
        balancer.set_targets([b.address, c.address])
        with connect(balancer) as sock:
            assert exchange(sock) in (b"B:", b"C:")
        with connect(balancer) as sock:
            exchange(sock)
        assert balancer.served == [1, 1]
        assert exchange(first) == b"A:"
        balancer.set_targets([a.address, b.address])
        assert balancer.served == [1, 1]  # counted per address


def test_close_stops_everything(servers: list[EchoServer]) -> None:
    """close() ends open connections, stops accepting and leaves no balancer thread alive; again is
    harmless."""
    assert not balancer_threads()
    balancer = RoundRobinProxy([servers[0].address, servers[1].address])
    clients = [connect(balancer) for _ in range(3)]
    try:
        for sock in clients:
            exchange(sock)
        assert len(balancer_threads()) == 1 + 2 * len(clients)
        balancer.close()
        assert not balancer_threads()
        for sock in clients:
            assert sock.recv(4096) == b""
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(balancer.address, timeout=TIMEOUT).close()
        balancer.close()
    finally:
        for sock in clients:
            sock.close()
    wait_until(lambda: all(server.open == 0 for server in servers), TIMEOUT, "the targets' sides closed")
