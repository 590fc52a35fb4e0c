"""A recording stand-in for a WebSocket (``send(str)`` + ``close()``), and polling."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from tests.helpers.closing import closed_after_test
from tests.helpers.frames import parse


class RecordingSocket:
    """Records every text frame; ``fail=True`` makes ``send`` raise like a dead peer."""

    def __init__(self, fail: bool = False) -> None:
        self.frames: list[str] = []
        self.closed = False
        self.fail = fail
        self._lock = threading.Lock()

    def send(self, message: str) -> None:
        if not isinstance(message, str):
            raise TypeError("text frames only")
        if self.fail or self.closed:
            raise OSError("peer went away")
        with self._lock:
            self.frames.append(message)

    def close(self) -> None:
        self.closed = True

    def drop(self, frames: Sequence[str]) -> None:
        """Forget the given frames (markers, see :func:`settle`)."""
        with self._lock:
            self.frames = [f for f in self.frames if f not in frames]

    def messages(self) -> list[Any]:
        with self._lock:
            return [json.loads(f) for f in self.frames]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages() if isinstance(m, dict) and m.get("type") == kind]


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll until ``predicate()`` is truthy and return it; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def settle(room: str, senders: Sequence[Any], witnesses: Sequence[RecordingSocket],
           timeout: float = 10.0) -> None:
    """Broadcast a marker to ``room`` from each manager in ``senders`` and wait until every
    socket in ``witnesses`` (members of the room) has all of them; then take the markers out
    of the witnesses' frames.

    A test that must show that something did *not* arrive calls this after the thing that
    must not arrive, instead of sleeping: one publisher's messages on one room reach every
    server in the order they were sent, on every backend, and a message published after
    another one returned reaches each server after it. So whatever those managers published
    to the room before (a duplicate, a notice sent twice) has been delivered by the time the
    markers are.
    """
    markers = [f"marker-{uuid.uuid4().hex}" for _ in senders]
    for sender, marker in zip(senders, markers, strict=True):
        sender.broadcast_to_room(room, marker)
    wait_until(lambda: all(m in ws.frames for ws in witnesses for m in markers), timeout)
    for ws in witnesses:
        ws.drop(markers)


def until_reached(sender: Any, room: str, ws: RecordingSocket, timeout: float = 10.0) -> None:
    """Broadcast probes to ``room`` from ``sender`` until one reaches ``ws``, then settle and
    forget the probes. For a member whose server subscribes to the room on its own time (a
    remote join: the owner subscribes when it reads the routed join): from then on, what
    ``sender`` broadcasts to the room reaches ``ws``."""
    probes = (f"probe-{uuid.uuid4().hex}" for _ in itertools.count())
    sent: list[str] = []

    def reached() -> bool:
        sent.append(next(probes))
        sender.broadcast_to_room(room, sent[-1])
        return any(p in ws.frames for p in sent)

    wait_until(reached, timeout, interval=0.05)
    settle(room, [sender], [ws], timeout)
    ws.drop(sent)


def crash(manager: Any) -> None:
    """Make an in-process manager fall silent the way a killed process does: its loops stop
    and its subscription closes, but nothing is removed from the shared state."""
    manager._stop.set()
    for worker in manager._workers:
        worker.join(2.0)
    manager._listener.close()
    manager._closed = True


def connect(mgr: Any, user: str, *rooms: str) -> tuple[str, RecordingSocket]:
    """Register a recording socket for ``user`` on ``mgr`` and join it to ``rooms``."""
    ws = RecordingSocket()
    cid = mgr.register_connection(ws, user)
    for room in rooms:
        mgr.join_room(cid, room)
    return cid, ws


class PairSocket:
    """The server end of a real socket pair speaking WebSocket frames, with the outbox
    interface (:class:`dcm_sync.outbox.OutboxSocket`); the test reads the other end with
    :meth:`read_frames`. Sockets made with ``shares_frames`` encode alike (one ``encoding``)."""

    def __init__(self, shares_frames: bool = True) -> None:
        import socket as _socket

        from flask_ext.wire import ENCODING, close_frame, text_frame

        self.server, self.client = map(closed_after_test, _socket.socketpair())
        self.encoding = ENCODING if shares_frames else None
        self.control: object = None
        self._frame, self._close_frame = text_frame, close_frame
        self.aborted: tuple[int, str] | None = None
        self.reset = False  # abort() was called: the connection was dropped
        self._buf = b""

    # WebSocketLike
    def send(self, message: str) -> None:
        self.server.sendall(self._frame(message))

    def close(self) -> None:
        self.server.close()

    # OutboxSocket
    def attach(self, control: object) -> None:
        self.control = control

    def encode_text(self, text: str) -> bytes:
        return self._frame(text)

    def write_nowait(self, data: bytes) -> int:
        import socket as _socket

        try:
            return self.server.send(data, _socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0

    def write(self, data: bytes) -> None:
        self.server.sendall(data)

    def closing(self, code: int, reason: str) -> bytes:
        self.aborted = (code, reason)
        return self._close_frame(code, reason)

    def finish(self) -> None:
        import socket as _socket

        try:
            self.server.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass

    def abort(self) -> None:
        self.reset = True
        self.finish()

    # the client side
    def read_frames(self, timeout: float = 5.0) -> list[tuple[int, bytes]]:
        """Every whole frame that arrives until the server side shuts down or ``timeout``
        passes with nothing new: ``(opcode, payload)`` pairs."""
        self.client.settimeout(timeout)
        while True:
            try:
                chunk = self.client.recv(1 << 20)
            except TimeoutError:
                break
            if not chunk:
                break
            self._buf += chunk
        frames, used = parse(self._buf)
        self._buf = self._buf[used:]
        return frames
