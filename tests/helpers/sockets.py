"""A recording stand-in for a WebSocket (``send(str)`` + ``close()``), and polling."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any


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
