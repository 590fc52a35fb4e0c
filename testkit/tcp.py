"""Loopback TCP plumbing shared by the testkit's proxies (:mod:`testkit.proxy`,
:mod:`testkit.balancer`) and the test servers behind them.

Plain threads that never block for long: every socket has a ``TICK`` timeout, so a thread looks at
its flag (a :class:`threading.Event`) that often and ends soon after it is set.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["CHUNK", "JOIN_SECONDS", "TICK", "Closeable", "Listener", "close_socket", "join_all",
           "prepare", "receive", "send_all", "shutdown"]

CHUNK = 64 * 1024
TICK = 0.05  # how often blocked threads look at the flags
JOIN_SECONDS = 2.0

C = TypeVar("C", bound="Closeable")


class Closeable:
    """``with`` support: ``with X(...) as x:`` calls ``x.close()`` at the end."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: C) -> C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prepare(sock: socket.socket) -> None:
    """Give a connected socket the ``TICK`` timeout, and no Nagle delay."""
    sock.settimeout(TICK)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def shutdown(sock: socket.socket, reset: bool = False) -> None:
    """Shut down both directions (waking any thread blocked on it): a FIN, or with ``reset`` an RST
    on close (SO_LINGER 0), as from a killed process. Errors (already closed, reset) are ignored."""
    if reset:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def close_socket(sock: socket.socket, reset: bool = False) -> None:
    """:func:`shutdown`, then close."""
    shutdown(sock, reset)
    sock.close()


def receive(src: socket.socket, closed: threading.Event, size: int = CHUNK) -> Iterator[bytes]:
    """The chunks read from ``src`` until EOF or ``closed`` is set; socket errors propagate."""
    while not closed.is_set():
        try:
            data = src.recv(size)
        except TimeoutError:
            continue
        if not data:
            return
        yield data


def send_all(data: bytes, dst: socket.socket, closed: threading.Event) -> None:
    """Send all of ``data`` unless ``closed`` is set first; socket errors propagate."""
    view = memoryview(data)
    while view and not closed.is_set():
        with contextlib.suppress(TimeoutError):
            view = view[dst.send(view):]


def join_all(threads: Iterable[threading.Thread], deadline: float) -> None:
    """Join the threads, giving up at ``deadline`` (a :func:`time.monotonic` time)."""
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


class Listener(Closeable):
    """Listen on 127.0.0.1:<free port>; a thread (named ``name``) accepts the connections and calls
    ``on_client`` with each, until :meth:`close`."""

    def __init__(self, on_client: Callable[[socket.socket], None], name: str) -> None:
        self._on_client = on_client
        self.closed = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(TICK)
        self.port: int = self._sock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept_loop, name=name, daemon=True)
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def close(self, deadline: float | None = None) -> None:
        """Stop accepting: set :attr:`closed`, join the thread (until ``deadline``, by default
        ``JOIN_SECONDS`` from now), close the listening socket; idempotent."""
        self.closed.set()
        join_all([self.thread], time.monotonic() + JOIN_SECONDS if deadline is None else deadline)
        self._sock.close()

    def _accept_loop(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listening socket was closed
            self._on_client(client)
