"""Load generation: WebSocket clients in their own processes, speaking the servers' protocol
directly with little per-message overhead.

A :class:`ClientGroup` is one process holding some clients. websocket-client makes each
connection (handshake, masked client frames, ``skip_utf8_validation=True``); frames from the
server are read straight off the socket in large chunks and parsed here, so receiving costs a few
microseconds per frame. Two dialects (see ``benchmarks/servers/__init__.py``): ``plain`` JSON
commands (this project and the ceiling), and ``sio``, the same commands as Socket.IO v5 events
over Engine.IO v4's websocket transport (``0{...}`` open, ``40`` -> ``40{"sid": ...}``,
``42[...]`` events, ``2`` ping answered ``3``).

Every payload is :data:`PAYLOAD_BYTES` of text ``~SEQ~SENT~xxx...`` where ``SENT`` is the sender's
``time.time()``: receivers record ``(seq, sent, received)`` for every payload whose sequence
number lies in the phase's range, and the parent turns the records into rates and latencies.
Every wait is bounded: a group that does not answer in time raises :class:`LoadError`.
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import multiprocessing.connection
import re
import select
import socket
import threading
import time
import traceback
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .harness import pipe_reply

__all__ = ["PAYLOAD_BYTES", "PLAIN", "SIO", "LoadError", "ClientGroup", "Records", "SendReport",
           "payload", "data_command", "percentile"]

PAYLOAD_BYTES = 100
PLAIN, SIO = "plain", "sio"
_PAYLOAD = re.compile(rb"~(\d+)~(\d+\.\d+)~")  # sequence number, sent at

_mp = multiprocessing.get_context("fork")

# Payloads recorded so far in each group's current phase, in shared memory made by the parent
# before its first fork, so that a sender can keep a bounded number of messages in flight.
_SLOTS = 256
_progress: Any = None
_slots = itertools.count()


def _shared_progress() -> Any:
    global _progress
    if _progress is None:
        _progress = _mp.RawArray("q", _SLOTS)
    return _progress


class LoadError(RuntimeError):
    """A client group failed, died or did not answer in time."""


def payload(seq: int) -> str:
    head = f"~{seq}~{time.time():.6f}~"
    return head + "x" * (PAYLOAD_BYTES - len(head))


def _command(proto: str, op: str, **fields: Any) -> str:
    if proto == SIO:
        return "42" + json.dumps([op, fields], separators=(",", ":"))
    return json.dumps({"op": op, **fields}, separators=(",", ":"))


def data_command(proto: str, op: str, key: str, value: str) -> tuple[str, str]:
    """The text around a payload for ``op`` (fanout: key "room", direct: key "to"): the
    payload holds only ``~``, digits, ``.`` and ``x``, so it goes into the JSON unescaped."""
    head = f'{{"{key}":{json.dumps(value)},"data":"'
    if proto == SIO:
        return f'42["{op}",{head}', '"}]'
    return f'{{"op":"{op}",{head[1:]}', '"}'


# ---------------------------------------------------------------------------- in the child


class _Client:
    def __init__(self, url: str, proto: str, timeout: float) -> None:
        import websocket

        self.ws = websocket.create_connection(url, timeout=timeout, skip_utf8_validation=True)
        if self.ws.sock is None:
            raise LoadError(f"no socket after connecting to {url}")
        self.sock: socket.socket = self.ws.sock
        self.timeout = timeout
        self.proto = proto
        self.buf = bytearray()
        self.pending: deque[bytes] = deque()
        self.closed = False
        self.id = ""

    def send(self, text: str) -> None:
        self.ws.send(text)

    def _read(self) -> bool:
        data = self.sock.recv(1 << 18)
        if not data:
            self.closed = True
            return False
        self.buf += data
        return True

    def feed(self) -> list[bytes]:
        """One read from the socket; the data frames it completed, one bytes each."""
        if not self._read():
            return []
        end, spans = self._walk(True)
        buf = self.buf
        out = [bytes(buf[a:b]) for a, b in spans]
        del buf[:end]
        return out

    def feed_chunk(self) -> bytes:
        """One read from the socket; the bytes of the frames it completed, headers and all
        (payloads are then found with one regular expression over the chunk)."""
        if not self._read():
            return b""
        end, _ = self._walk(False)
        chunk = bytes(self.buf[:end])
        del self.buf[:end]
        return chunk

    def _walk(self, spans: bool) -> tuple[int, list[tuple[int, int]]]:
        """Where the complete frames in the buffer end, and (if asked) each data frame's
        payload span. Control frames (and Engine.IO pings) are answered on the way."""
        buf, out, i = self.buf, [], 0
        n = len(buf)
        sio = self.proto == SIO
        while n - i >= 2:
            ln, h = buf[i + 1] & 0x7F, 2
            if ln >= 126:
                if ln == 126:
                    if n - i < 4:
                        break
                    ln, h = (buf[i + 2] << 8) | buf[i + 3], 4
                else:
                    if n - i < 10:
                        break
                    ln, h = int.from_bytes(buf[i + 2:i + 10], "big"), 10
            end = i + h + ln
            if end > n:
                break
            op = buf[i] & 0x0F
            if op >= 8:
                if op == 8:
                    self.closed = True
                elif op == 9:
                    self.ws.pong(bytes(buf[i + h:end]))
            elif sio and ln == 1 and buf[i + h] == 0x32:
                self.send("3")  # answer an Engine.IO ping
            elif spans:
                out.append((i + h, end))  # continuation, text, binary (never fragmented here)
            i = end
        return i, out

    def next_text(self, deadline: float) -> bytes:
        while not self.pending:
            if self.closed:
                raise LoadError("the server closed the socket")
            if time.monotonic() > deadline:
                raise LoadError("no frame from the server in time")
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                self.pending.extend(self.feed())
            except TimeoutError:
                continue
            finally:
                self.sock.settimeout(self.timeout)
        return self.pending.popleft()

    def handshake(self, deadline: float) -> None:
        if self.proto == PLAIN:
            self.id = json.loads(self.next_text(deadline))["id"]
            return
        opening = self.next_text(deadline)
        if not opening.startswith(b"0"):
            raise LoadError(f"expected an Engine.IO open packet, got {opening[:80]!r}")
        self.send("40")
        while not (frame := self.next_text(deadline)).startswith(b"40"):
            pass
        self.id = json.loads(frame[2:])["sid"]

    def close(self) -> None:
        try:
            self.ws.close(timeout=0.05)
        except Exception:  # noqa: S110 - closing at teardown; the peer may be gone already
            pass


def _join(clients: list[_Client], rooms: Sequence[Sequence[str]], timeout: float) -> float:
    started = time.monotonic()
    deadline = started + timeout
    ack = b'42["joined"' if clients and clients[0].proto == SIO else b'{"t":"joined"'
    waiting = []
    for c, names in zip(clients, rooms, strict=True):
        if names:
            c.send(_command(c.proto, "join", rooms=list(names)))
            waiting.append(c)
    for c in waiting:
        while not c.next_text(deadline).startswith(ack):
            pass  # a late payload of an earlier phase
    return time.monotonic() - started


def _record(clients: list[_Client], progress: Any, slot: int, lo: int, hi: int, expected: int,
            limit: float, idle: float, nap: float) -> tuple[str, bytes, bytes, bytes, int, float]:
    """Read every client until ``expected`` payloads in ``[lo, hi)``, ``limit`` seconds, or
    ``idle`` seconds without one. ``nap`` > 0 sleeps that long after each round of reads so that
    frames arrive in batches (less CPU per frame under a burst; receipt times then lag by up to
    ``nap``)."""
    seqs, sent, recvd = array("q"), array("d"), array("d")
    poller = select.epoll()
    by_fd = {}
    for c in clients:
        c.sock.setblocking(False)
        poller.register(c.sock.fileno(), select.EPOLLIN)
        by_fd[c.sock.fileno()] = c
    count, closed = 0, 0
    find = _PAYLOAD.findall
    cpu = time.process_time()
    start = last = time.monotonic()
    try:
        while count < expected:
            events = poller.poll(0.05)
            now = time.monotonic()
            if now - start > limit or (not events and now - last > idle):
                break
            t = time.time()
            for fd, _ in events:
                c = by_fd[fd]
                try:
                    chunk = c.feed_chunk()
                except BlockingIOError:
                    continue
                if c.closed:
                    poller.unregister(fd)
                    closed += 1
                for seq_text, sent_text in find(chunk):
                    seq = int(seq_text)
                    if lo <= seq < hi:
                        seqs.append(seq)
                        sent.append(float(sent_text))
                        recvd.append(t)
                        count += 1
                        last = now
                progress[slot] = count
            if nap and events:
                time.sleep(nap)
    finally:
        poller.close()
        for c in clients:
            if not c.closed:
                c.sock.settimeout(c.timeout)
    return "done", seqs.tobytes(), sent.tobytes(), recvd.tobytes(), closed, time.process_time() - cpu


def _send(clients: list[_Client], progress: Any, items: Sequence[Sequence[tuple[str, str, int]]],
          rate: float | None, flow: tuple[Sequence[int], int, int] | None,
          stall: float = 10.0) -> tuple[str, float, float, int, list[str]]:
    """Each client sends its items (prefix, suffix, seq) in its own thread. ``rate`` (messages
    per second over all senders) paces them; without it they go as fast as the window allows:
    ``flow = (slots, receipts_per_message, window)`` keeps at most ``window`` messages in flight,
    a message counting as delivered once the groups in ``slots`` recorded its receipts."""
    active = [(c, its) for c, its in zip(clients, items, strict=True) if its]
    interval = len(active) / rate if rate else 0.0
    firsts: list[float] = []
    lasts: list[float] = []
    counts: list[int] = []
    errors: list[str] = []
    total = [0]  # messages sent by every thread (increments under the GIL)
    start = time.perf_counter() + 0.01

    def wait_for_window() -> None:
        assert flow is not None
        slots, per_message, window = flow
        limit = window * per_message
        waited_since = 0.0
        while total[0] * per_message - sum(progress[s] for s in slots) >= limit:
            now = time.perf_counter()
            if not waited_since:
                waited_since = now
            elif now - waited_since > stall:
                raise LoadError(f"nothing delivered for {stall:.0f} s with {window} messages in flight")
            time.sleep(0.0002)

    def run(c: _Client, its: Sequence[tuple[str, str, int]]) -> None:
        n = 0
        try:
            firsts.append(time.time())
            for k, (prefix, suffix, seq) in enumerate(its):
                if interval:
                    delay = start + k * interval - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                elif flow is not None:
                    wait_for_window()
                c.send(prefix + payload(seq) + suffix)
                total[0] += 1
                n += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            lasts.append(time.time())
            counts.append(n)

    threads = [threading.Thread(target=run, args=pair, daemon=True) for pair in active]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return "sent", min(firsts, default=0.0), max(lasts, default=0.0), sum(counts), errors


def _worker(pipe: multiprocessing.connection.Connection, proto: str, urls: list[str],
            timeout: float, progress: Any, slot: int) -> None:
    clients: list[_Client] = []
    try:
        deadline = time.monotonic() + timeout
        for url in urls:
            clients.append(_Client(url, proto, timeout))
        for c in clients:
            c.handshake(deadline)
        pipe.send(("ready", [c.id for c in clients]))
        while True:
            msg = pipe.recv()
            try:
                if msg[0] == "close":
                    return
                if msg[0] == "join":
                    pipe.send(("joined", _join(clients, msg[1], msg[2])))
                elif msg[0] == "record":
                    progress[slot] = 0
                    pipe.send(("armed",))
                    pipe.send(_record(clients, progress, slot, *msg[1:]))
                elif msg[0] == "send":
                    pipe.send(_send(clients, progress, *msg[1:]))
            except Exception:
                pipe.send(("error", traceback.format_exc(limit=4)))
    except (EOFError, KeyboardInterrupt):
        return
    except Exception:
        try:
            pipe.send(("error", traceback.format_exc(limit=4)))
        except OSError:
            pass
    finally:
        for c in clients:
            c.close()


# ---------------------------------------------------------------------------- in the parent


@dataclass
class Records:
    """What one group received in one phase: parallel arrays, one entry per payload frame."""

    seqs: array[int]
    sent: array[float]
    received: array[float]
    closed_sockets: int
    cpu_seconds: float  # the group's CPU time while recording


@dataclass
class SendReport:
    first: float   # wall-clock time of the first send
    last: float    # wall-clock time after the last send
    sent: int
    errors: list[str]


class ClientGroup:
    """``len(urls)`` clients in one new process (connected, handshaken). Use :meth:`wait_ready`
    before anything else, and :meth:`close` in a ``finally``."""

    def __init__(self, name: str, proto: str, urls: Sequence[str], timeout: float = 30.0) -> None:
        self.name = name
        self.proto = proto
        self.size = len(urls)
        self.timeout = timeout
        self.ids: list[str] = []
        self.slot = next(_slots) % _SLOTS  # where this group counts what it records
        self._pipe, child = _mp.Pipe()
        self._proc = _mp.Process(target=_worker, args=(child, proto, list(urls), timeout,
                                                       _shared_progress(), self.slot),
                                 name=f"loadgen-{name}", daemon=True)
        self._proc.start()
        child.close()

    def _reply(self, timeout: float, want: str) -> tuple[Any, ...]:
        return pipe_reply(self._pipe, want, timeout, f"client group {self.name}", LoadError)

    def wait_ready(self) -> list[str]:
        self.ids = list(self._reply(self.timeout + 5, "ready")[1])
        return self.ids

    def start_join(self, rooms: Sequence[Sequence[str]], timeout: float = 60.0) -> None:
        """Each client joins its rooms; finish with :meth:`wait_joined`."""
        self._join_timeout = timeout
        self._pipe.send(("join", [list(r) for r in rooms], timeout))

    def wait_joined(self) -> float:
        return float(self._reply(self._join_timeout + 5, "joined")[1])

    def start_record(self, lo: int, hi: int, expected: int, limit: float, idle: float,
                     nap: float = 0.0) -> None:
        """Record payloads with ``lo <= seq < hi`` until ``expected`` of them, ``limit`` seconds,
        or ``idle`` seconds without one; returns once the group is recording."""
        self._record_limit = limit
        self._pipe.send(("record", lo, hi, expected, limit, idle, nap))
        self._reply(10, "armed")

    def finish_record(self) -> Records:
        _, seqs, sent, recvd, closed, cpu = self._reply(self._record_limit + 10, "done")
        out = Records(array("q"), array("d"), array("d"), closed, cpu)
        out.seqs.frombytes(seqs)
        out.sent.frombytes(sent)
        out.received.frombytes(recvd)
        return out

    def send(self, items: Sequence[Sequence[tuple[str, str, int]]], rate: float | None,
             timeout: float, flow: tuple[Sequence[ClientGroup], int, int] | None = None) -> SendReport:
        """Client ``i`` sends ``items[i]`` (prefix, suffix, seq); blocks until all are sent.
        ``rate`` paces the sends; else ``flow = (receiving groups, receipts per message, window)``
        keeps at most ``window`` messages in flight (sent, not yet received by those groups)."""
        window = None if flow is None else ([g.slot for g in flow[0]], flow[1], flow[2])
        self._pipe.send(("send", [list(x) for x in items], rate, window))
        _, first, last, sent, errors = self._reply(timeout, "sent")
        return SendReport(first, last, sent, list(errors))

    def close(self) -> None:
        try:
            self._pipe.send(("close",))
        except OSError:
            pass
        self._proc.join(3)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._pipe.close()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        raise ValueError("no values")
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return float(sorted_values[k])
