"""The soak's client processes (see ``benchmarks/soak/__main__.py``), speaking the JSON protocol of
``examples/gevent_chat_server.py`` over real WebSockets.

* :func:`observer_main`: a fixed set of clients that join every soak room before the churn
  starts and stay to the end; they count every tagged message they receive.
* :func:`churn_main`: churning clients, one thread each, started on a schedule: connect, join
  1-3 random rooms, send a few tagged ``say`` messages, wait for their own echoes, then leave and
  disconnect in one of four ways (``leave`` rooms then close, ``close`` frame, ``fin``: TCP
  half-close without a close frame, ``rst``: reset).

A tag is ``ROOM/CLIENT:N``, unique over the run. Every wait is bounded.
"""

from __future__ import annotations

import json
import multiprocessing.connection
import random
import select
import socket
import struct
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..loadgen import PLAIN, LoadError, _Client

__all__ = ["MODES", "ChurnPlan", "ClientReport", "churn_main", "observer_main"]

MODES = ("leave", "close", "fin", "rst")
STEP_TIMEOUT = 10.0  # seconds for a handshake, the join acks, the echoes
Conn = multiprocessing.connection.Connection


def _command(op: str, **fields: Any) -> str:
    return json.dumps({"op": op, **fields}, separators=(",", ":"))


def _tag_of(frame: bytes | str) -> str | None:
    """``ROOM/CLIENT:N`` of a tagged room message, else None."""
    if (b'"k"' not in frame) if isinstance(frame, bytes) else ('"k"' not in frame):
        return None
    msg = json.loads(frame)
    if msg.get("type") != "message" or "k" not in msg:
        return None
    return f"{msg['room']}/{msg['k']}"


# ---------------------------------------------------------------------------- observers


def _report_crash(pipe: Conn) -> None:
    """Tell the parent what went wrong in this worker (it may be gone already)."""
    try:
        pipe.send(("error", traceback.format_exc(limit=6)))
    except OSError:
        pass


def observer_main(pipe: Conn, urls: Sequence[str], rooms: Sequence[str]) -> None:
    """Connect one client per url, join every room, say ``("ready", ids)``; then count tagged
    messages until ``("finish", expected, idle, limit)``: read on until each has ``expected``
    tagged messages (or ``idle`` s without one, or ``limit`` s), answer ``("records", ...)``;
    ``("close",)`` closes every client with a close frame and ends."""
    clients: list[_Client] = []
    try:
        deadline = time.monotonic() + 30
        ids = []
        for i, url in enumerate(urls):
            clients.append(_Client(f"{url}?user=observer-{i}", PLAIN, STEP_TIMEOUT))
        for c in clients:
            ids.append(json.loads(c.next_text(deadline))["connectionId"])
        for c in clients:
            for room in rooms:
                c.send(_command("join", room=room))
        for c in clients:
            acks = 0
            while acks < len(rooms):
                acks += json.loads(c.next_text(deadline)).get("type") == "joined"
        pipe.send(("ready", ids))
        counts: list[Counter[str]] = [Counter() for _ in clients]
        tagged = [0] * len(clients)
        notices = [0] * len(clients)
        poller = select.epoll()
        by_fd = {}
        for i, c in enumerate(clients):
            c.sock.setblocking(False)
            poller.register(c.sock.fileno(), select.EPOLLIN)
            by_fd[c.sock.fileno()] = i
        finish: tuple[Any, ...] | None = None
        finish_at = last = time.monotonic()
        while True:
            now = time.monotonic()
            if finish is None and pipe.poll():
                finish = pipe.recv()
                finish_at = last = now
            if finish is not None:
                _, expected, idle, limit = finish
                if (min(tagged) >= expected or now - last > idle or now - finish_at > limit):
                    break
            for fd, _ in poller.poll(0.05):
                i = by_fd[fd]
                try:
                    frames = clients[i].feed()
                except BlockingIOError:
                    continue
                if clients[i].closed:
                    poller.unregister(fd)
                for frame in frames:
                    tag = _tag_of(frame)
                    if tag is not None:
                        counts[i][tag] += 1
                        tagged[i] += 1
                        last = time.monotonic()
                    elif b"user-disconnected" in frame:
                        notices[i] += 1
        poller.close()
        closed = sum(c.closed for c in clients)
        pipe.send(("records", [dict(c) for c in counts], notices, closed))
        if pipe.poll(60):
            pipe.recv()  # ("close",)
        for c in clients:
            c.sock.setblocking(True)
            c.sock.settimeout(2)
            c.close()
        clients = []
        pipe.send(("closed",))
    except (EOFError, KeyboardInterrupt):
        return
    except Exception:
        _report_crash(pipe)
    finally:
        for c in clients:
            c.close()


# ---------------------------------------------------------------------------- churn


@dataclass(frozen=True)
class ChurnPlan:
    """One churning client: which server, rooms, lifetime, messages and disconnect mode."""

    gid: str
    server: int
    url: str
    start: float       # seconds after the common start
    rooms: tuple[str, ...]
    lifetime: float
    messages: int
    mode: str


@dataclass
class ClientReport:
    gid: str
    server: int
    mode: str
    started: float = 0.0   # wall clock
    ended: float = 0.0
    connected: bool = False
    sent: list[str] = field(default_factory=list)   # tags whose send call succeeded
    echo_missing: int = 0  # own tags never received back
    echo_dups: int = 0     # own tags received more than once
    other_dups: int = 0    # other clients' tags received more than once
    received: int = 0      # tagged messages received
    error: str | None = None


class _Churner:
    def __init__(self, plan: ChurnPlan) -> None:
        self.plan = plan
        self.report = ClientReport(plan.gid, plan.server, plan.mode)
        self.counts: Counter[str] = Counter()
        self.acks: Counter[str] = Counter()
        self.ws: Any = None
        self.peer_closed = False

    def pump(self, until: float, done: Callable[[], bool] = lambda: False) -> bool:
        """Read frames until ``done()`` or the monotonic time ``until``; whether ``done()``."""
        import websocket

        while not done():
            remaining = until - time.monotonic()
            if remaining <= 0 or self.peer_closed:
                return False
            self.ws.settimeout(remaining)
            try:
                frame = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketConnectionClosedException, ConnectionError):
                self.peer_closed = True
                return done()
            if not frame:
                continue
            tag = _tag_of(frame)
            if tag is not None:
                self.counts[tag] += 1
                self.report.received += 1
            else:
                self.acks[json.loads(frame).get("type", "")] += 1
        return True

    def run(self) -> None:
        import websocket

        plan, rep = self.plan, self.report
        rep.started = time.time()
        try:
            self.ws = websocket.create_connection(f"{plan.url}?user=churn-{plan.gid}", timeout=STEP_TIMEOUT,
                                                  skip_utf8_validation=True)
            rep.connected = True
            if not self.pump(time.monotonic() + STEP_TIMEOUT, lambda: self.acks["welcome"] > 0):
                raise LoadError("no welcome")
            for room in plan.rooms:
                self.ws.send(_command("join", room=room))
            if not self.pump(time.monotonic() + STEP_TIMEOUT, lambda: self.acks["joined"] >= len(plan.rooms)):
                raise LoadError(f"{self.acks['joined']} of {len(plan.rooms)} joins acknowledged")
            begin = time.monotonic()
            rng = random.Random(plan.gid)
            times = sorted(rng.uniform(0, max(0.1, plan.lifetime - 0.5)) for _ in range(plan.messages))
            for n, at in enumerate(times):
                self.pump(begin + at)
                room = rng.choice(plan.rooms)
                self.ws.send(_command("say", room=room, text="soak", k=f"{plan.gid}:{n}"))
                rep.sent.append(f"{room}/{plan.gid}:{n}")
            self.pump(begin + plan.lifetime)
            self.pump(time.monotonic() + STEP_TIMEOUT, lambda: all(self.counts[t] for t in rep.sent))
            self._disconnect()
        except Exception as exc:
            rep.error = f"{type(exc).__name__}: {exc}"
        finally:
            if self.ws is not None:
                self.ws.shutdown()
            rep.ended = time.time()
            own = set(rep.sent)
            rep.echo_missing = sum(1 for t in own if not self.counts[t])
            rep.echo_dups = sum(self.counts[t] - 1 for t in own if self.counts[t] > 1)
            rep.other_dups = sum(n - 1 for t, n in self.counts.items() if n > 1 and t not in own)

    def _disconnect(self) -> None:
        mode, ws = self.plan.mode, self.ws
        if mode == "leave":
            for room in self.plan.rooms:
                ws.send(_command("leave", room=room))
            done = lambda: self.acks["left"] >= len(self.plan.rooms)  # noqa: E731
            if not self.pump(time.monotonic() + STEP_TIMEOUT, done):
                raise LoadError(f"{self.acks['left']} of {len(self.plan.rooms)} leaves acknowledged")
            ws.close(timeout=2)
        elif mode == "close":
            ws.close(timeout=2)
        elif mode == "fin":  # half-close without a close frame; the server then closes its end
            ws.sock.shutdown(socket.SHUT_WR)
            self.pump(time.monotonic() + 2, lambda: self.peer_closed)
        else:  # "rst": the kernel resets the connection
            ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def churn_main(pipe: Conn, plans: Sequence[ChurnPlan], end: float, max_threads: int = 400) -> None:
    """Wait for ``("go", t0)`` (wall clock), start each plan's client at ``t0 + plan.start``
    (none after ``t0 + end``; at most ``max_threads`` at once), wait for them all, answer
    ``("reports", [ClientReport ...], skipped)``."""
    try:
        msg = pipe.recv()
        t0 = float(msg[1])
        churners: list[_Churner] = []
        threads: list[threading.Thread] = []
        skipped = 0
        for plan in plans:
            delay = t0 + plan.start - time.time()
            if delay > 0:
                time.sleep(delay)
            threads = [t for t in threads if t.is_alive()]
            while len(threads) >= max_threads and time.time() < t0 + end:
                time.sleep(0.01)
                threads = [t for t in threads if t.is_alive()]
            if time.time() >= t0 + end or len(threads) >= max_threads:
                skipped += 1
                continue
            ch = _Churner(plan)
            t = threading.Thread(target=ch.run, name=f"churn-{plan.gid}", daemon=True)
            t.start()
            churners.append(ch)
            threads.append(t)
        give_up = time.monotonic() + 8 + 4 * STEP_TIMEOUT
        for t in threads:
            t.join(max(0.0, give_up - time.monotonic()))
        for ch, alive in ((c, c.report.ended == 0.0) for c in churners):
            if alive:
                ch.report.error = "still running at the deadline"
        pipe.send(("reports", [c.report for c in churners], skipped))
    except (EOFError, KeyboardInterrupt):
        return
    except Exception:
        _report_crash(pipe)
