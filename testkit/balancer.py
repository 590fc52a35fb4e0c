"""A round-robin TCP load balancer on a free loopback port, for tests that put several server
processes behind one address, as a deployment would.

Plain threads (the test process is not monkey-patched). Each client connection goes to the next
target in turn; a target that refuses, or does not answer within ``CONNECT_SECONDS``, is skipped
for the following ones (one round at most; if none accepts, the client is closed). One thread
pipes each direction; when either side closes or fails, both sockets are shut down and closed at
once, so a client sees its connection drop when the server behind it dies.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Sequence

from testkit.tcp import JOIN_SECONDS, Closeable, Listener, close_socket, join_all, prepare, receive, send_all

__all__ = ["RoundRobinProxy"]

CONNECT_SECONDS = 1.0

Address = tuple[str, int]


class _Link:
    """A client connection and its upstream connection, piped by two threads."""

    def __init__(self, balancer: RoundRobinProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.balancer, self.sockets, self.closed = balancer, (client, upstream), threading.Event()
        self.threads = [threading.Thread(target=self._pipe, args=pair, name=f"balancer-{name}", daemon=True)
                        for pair, name in (((client, upstream), "up"), ((upstream, client), "down"))]

    def close(self) -> None:
        with self.balancer._lock:
            if self.closed.is_set():
                return
            self.closed.set()
            self.balancer._links.discard(self)
        for sock in self.sockets:
            close_socket(sock)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):  # reset, or closed by the other direction
            for data in receive(src, self.closed):
                send_all(data, dst, self.closed)
        self.close()


class RoundRobinProxy(Closeable):
    """Spread the connections to 127.0.0.1:<free port> over ``targets``, in turn."""

    def __init__(self, targets: Sequence[Address]) -> None:
        self._targets, self._next = list(targets), 0
        self._counts: dict[Address, int] = {}
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._threads: list[threading.Thread] = []
        self._listener = Listener(self._serve, name="balancer-accept")
        self._port = self._listener.port

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> Address:
        return ("127.0.0.1", self._port)

    def url(self, scheme: str = "http", path: str = "/") -> str:
        return f"{scheme}://127.0.0.1:{self._port}/{path.lstrip('/')}"

    @property
    def served(self) -> list[int]:
        """Client connections given to each target (counted per address), in target order."""
        with self._lock:
            return [self._counts.get(target, 0) for target in self._targets]

    def set_targets(self, targets: Sequence[Address]) -> None:
        """Replace the targets for the clients accepted from now on; open connections stay."""
        with self._lock:
            self._targets, self._next = list(targets), self._next % max(1, len(targets))

    def close(self) -> None:
        """Stop accepting, close every connection, join every thread (2 s in all); idempotent."""
        deadline = time.monotonic() + JOIN_SECONDS
        self._listener.close(deadline)
        with self._lock:
            links, threads = list(self._links), list(self._threads)
        for link in links:
            link.close()
        join_all(threads, deadline)

    def _connect(self) -> socket.socket | None:
        """A connection to the next target that takes one, counted; None if none does."""
        with self._lock:
            targets, start = self._targets, self._next
            self._next = (start + 1) % max(1, len(targets))
        for i in range(len(targets)):
            target = targets[(start + i) % len(targets)]
            try:
                upstream = socket.create_connection(target, timeout=CONNECT_SECONDS)
            except OSError:
                continue
            with self._lock:
                self._counts[target] = self._counts.get(target, 0) + 1
                if self._targets is targets:  # the next client goes to the target after this one
                    self._next = (start + i + 1) % len(targets)
            return upstream
        return None

    def _serve(self, client: socket.socket) -> None:
        """Called by the listener's thread with each client accepted."""
        upstream = self._connect()
        if upstream is None:
            close_socket(client)
            return
        prepare(client)
        prepare(upstream)
        link = _Link(self, client, upstream)
        with self._lock:  # registered and started under the lock, so that close() sees it whole
            if not self._listener.closed.is_set():
                self._links.add(link)
                self._threads = [t for t in self._threads if t.is_alive()] + link.threads
                for t in link.threads:
                    t.start()
                return
        link.close()  # closed meanwhile
