"""A TCP proxy on a free loopback port, for putting network faults between a client and Redis.

Plain threads (the test process is not monkey-patched). Each proxied connection has two
directions; each direction is a reader thread that puts chunks in a bounded queue and a writer
thread that sends them on when they are due. The controls, callable from any thread:

- :meth:`TcpProxy.latency` delays every chunk, both directions, by that many seconds;
- :meth:`TcpProxy.stall` / :meth:`TcpProxy.resume`: connections stay open but nothing is
  forwarded (new connections are accepted and stalled too); what was read waits in the queues;
- :meth:`TcpProxy.cut` / :meth:`TcpProxy.restore`: every connection is reset, new ones are
  accepted and reset at once;
- :meth:`TcpProxy.deafen_subscribers` / :meth:`TcpProxy.undeafen`: on the connections that
  exist now and have sent SUBSCRIBE, SSUBSCRIBE or PSUBSCRIBE, whatever Redis sends is dropped
  (a pub/sub connection gone deaf); other connections, and connections made later, work;
- :meth:`TcpProxy.close` stops everything (fixtures call it).

A connection closed by either side is closed on the other at once; chunks still queued in the
proxy are dropped.
"""

from __future__ import annotations

import queue
import re
import socket
import threading
import time

from testkit.tcp import (
    JOIN_SECONDS,
    TICK,
    Closeable,
    Listener,
    close_socket,
    join_all,
    prepare,
    receive,
    send_all,
)

__all__ = ["TcpProxy"]

QUEUE_CHUNKS = 64  # per direction: at most 4 MiB read ahead, then the sender is held back

# A RESP array whose first element is one of the subscribing commands.
_SUBSCRIBE_RE = re.compile(rb"\*\d+\r\n\$\d+\r\n[SP]?SUBSCRIBE\r\n", re.IGNORECASE)
_TAIL = 64  # bytes kept from the previous chunk, for a command split between two chunks


class _Link:
    """One client connection and its upstream connection: four threads, started by :meth:`start`."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self.subscriber = False  # the client has sent a subscribing command
        self.deaf = False  # drop what Redis sends to this client
        self.threads: list[threading.Thread] = []
        for src, dst, name in ((client, upstream, "up"), (upstream, client, "down")):
            chunks: queue.Queue[tuple[float, bytes]] = queue.Queue(QUEUE_CHUNKS)
            self.threads.append(threading.Thread(target=self._pump_in, args=(src, chunks, name == "up"),
                                                 name=f"proxy-{name}-read", daemon=True))
            self.threads.append(threading.Thread(target=self._pump_out, args=(dst, chunks, name == "down"),
                                                 name=f"proxy-{name}-write", daemon=True))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        close_socket(self.client, reset=True)
        close_socket(self.upstream, reset=True)
        self.proxy._forget(self)

    def _pump_in(self, src: socket.socket, chunks: queue.Queue[tuple[float, bytes]],
                 from_client: bool) -> None:
        try:
            self._read(src, chunks, from_client)
        except OSError:
            return  # reset or closed: the link is closed below
        finally:
            self.close()

    def _pump_out(self, dst: socket.socket, chunks: queue.Queue[tuple[float, bytes]],
                  to_client: bool) -> None:
        try:
            self._write(dst, chunks, to_client)
        except OSError:
            return
        finally:
            self.close()

    def _read(self, src: socket.socket, chunks: queue.Queue[tuple[float, bytes]], from_client: bool) -> None:
        tail = b""
        for data in receive(src, self.closed):
            if from_client and not self.subscriber:
                if _SUBSCRIBE_RE.search(tail + data):
                    self.subscriber = True
                tail = (tail + data)[-_TAIL:]
            item = (time.monotonic() + self.proxy._latency, data)
            while not self.closed.is_set():
                try:
                    chunks.put(item, timeout=TICK)  # a full queue holds the sender back
                    break
                except queue.Full:
                    continue

    def _write(self, dst: socket.socket, chunks: queue.Queue[tuple[float, bytes]], to_client: bool) -> None:
        proxy = self.proxy
        while not self.closed.is_set():
            try:
                due, data = chunks.get(timeout=TICK)
            except queue.Empty:
                continue
            while not self.closed.is_set() and (proxy._stalled or time.monotonic() < due):
                time.sleep(min(TICK, max(0.001, due - time.monotonic())))
            if to_client and self.deaf:
                proxy._count_dropped(len(data))
                continue
            send_all(data, dst, self.closed)


class TcpProxy(Closeable):
    """Forward 127.0.0.1:<free port> to ``target``; see the module docstring for the controls."""

    def __init__(self, target: tuple[str, int], max_connections: int = 256) -> None:
        self.target = target
        self.max_connections = max_connections
        self._latency = 0.0
        self._stalled = False
        self._cut = False
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._threads: list[threading.Thread] = []
        self.dropped_bytes = 0  # what deaf connections did not get
        self.accepted = 0  # connections accepted since start (reset ones included)
        self._listener = Listener(self._serve, name="proxy-accept")
        self.port: int = self._listener.port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def connections(self) -> int:
        """Connections proxied right now."""
        with self._lock:
            return len(self._links)

    # ------------------------------------------------------------------ controls
    def latency(self, seconds: float) -> None:
        """Delay every chunk read from now on by ``seconds``, in both directions."""
        self._latency = max(0.0, float(seconds))

    def stall(self) -> None:
        self._stalled = True

    def resume(self) -> None:
        self._stalled = False

    def cut(self) -> None:
        """Reset every connection, and every new one until :meth:`restore`."""
        self._cut = True
        for link in self._snapshot():
            link.close()

    def restore(self) -> None:
        self._cut = False

    def deafen_subscribers(self) -> int:
        """Drop what Redis sends on the subscriber connections that exist now; how many."""
        links = [link for link in self._snapshot() if link.subscriber]
        for link in links:
            link.deaf = True
        return len(links)

    def undeafen(self) -> None:
        for link in self._snapshot():
            link.deaf = False

    def close(self) -> None:
        """Stop accepting, reset every connection and join every thread (bounded)."""
        self._cut = True
        self._listener.close()
        for link in self._snapshot():
            link.close()
        join_all(self.threads(), time.monotonic() + JOIN_SECONDS)

    def threads(self) -> list[threading.Thread]:
        """The proxy's threads still alive."""
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            return [t for t in (self._listener.thread, *self._threads) if t.is_alive()]

    # ------------------------------------------------------------------ internals
    def _snapshot(self) -> list[_Link]:
        with self._lock:
            return list(self._links)

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _count_dropped(self, n: int) -> None:
        with self._lock:
            self.dropped_bytes += n

    def _serve(self, client: socket.socket) -> None:
        """Called by the listener's thread with each client accepted."""
        self.accepted += 1
        if self._cut or self.connections >= self.max_connections:
            close_socket(client, reset=True)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2.0)
        except OSError:
            close_socket(client, reset=True)
            return
        prepare(client)
        prepare(upstream)
        link = _Link(self, client, upstream)
        with self._lock:  # registered before it starts, so that cut() and close() see it
            if self._cut:
                close_socket(client, reset=True)
                close_socket(upstream, reset=True)
                return
            self._links.add(link)
            self._threads.extend(link.threads)
        link.start()
