"""A recording stand-in for a WebSocket (``send(str)`` + ``close()``) for in-process managers,
and waiting on what such sockets receive: markers that settle a room, probes until a route works."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from dcm_sync import BackendUnavailableError
from testkit.polling import wait_until


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


def connect(mgr: Any, user: str, *rooms: str) -> tuple[str, RecordingSocket]:
    """Register a recording socket for ``user`` on ``mgr`` and join it to ``rooms``."""
    ws = RecordingSocket()
    cid = mgr.register_connection(ws, user)
    for room in rooms:
        mgr.join_room(cid, room)
    return cid, ws


def deliver_until(sender: Any, room: str, ws: RecordingSocket,
                  timeout: float = 15.0) -> float:
    """Broadcast tagged messages until one reaches ``ws`` (a subscription may still be coming
    back); the seconds it took. A failed broadcast counts as a failed attempt."""
    tag = uuid.uuid4().hex
    started = time.monotonic()
    for n in range(1000):
        try:
            sender.broadcast_to_room(room, {"tag": tag, "n": n})
        except BackendUnavailableError:
            pass
        try:
            wait_until(lambda: any(m.get("tag") == tag for m in json_frames(ws)), timeout=0.2)
            return time.monotonic() - started
        except AssertionError:
            if time.monotonic() - started > timeout:
                break
    raise AssertionError(f"no broadcast from {sender.server_id} reached the socket within {timeout}s")


def json_frames(ws: RecordingSocket) -> list[dict[str, Any]]:
    """The socket's JSON-object frames (plain-text messages are sent as they are)."""
    out = []
    for frame in list(ws.frames):
        if frame.startswith("{"):
            value = json.loads(frame)
            if isinstance(value, dict):
                out.append(value)
    return out
