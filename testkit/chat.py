"""Drive ``examples/gevent_chat_server.py`` from tests: server processes and WebSocket clients."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websocket

from testkit.closing import ws_connect
from testkit.processes import ROOT, ServerProcess

EXAMPLE = ROOT / "examples" / "gevent_chat_server.py"

#: Fast failure detection: a killed server is declared dead about a second later.
FAST_ENV = {"DCM_HEARTBEAT_INTERVAL": "0.2", "DCM_HEARTBEAT_TTL": "1.0", "DCM_CLEANUP_INTERVAL": "0.2"}

Frame = dict[str, Any]
Stats = dict[str, Any]
Predicate = Callable[[Frame], bool]


def _is_stats(answer: Stats) -> bool:
    return "error" not in answer  # a 503 answers {"error": why}


class ChatServer(ServerProcess):
    """One example server process on 127.0.0.1:<free port>, its output in ``log_path``."""

    def __init__(self, name: str, redis_url: str | None, prefix: str, log_dir: Path) -> None:
        super().__init__(name, [sys.executable, str(EXAMPLE)], log_dir, redis_url=redis_url, prefix=prefix,
                         fast=FAST_ENV)

    def stats(self) -> Stats | None:
        """``GET /stats`` as a dict; None if it does not answer 200 right now."""
        answer = self.get_json("/stats")
        return answer if answer is not None and _is_stats(answer) else None

    def wait_stats(self, predicate: Callable[[Stats], bool] = lambda stats: True,
                   timeout: float = 15.0) -> Stats:
        """Poll ``/stats`` until it answers 200 with figures that satisfy ``predicate``; those figures.
        AssertionError with the last answer and the log's tail if not."""
        return self.wait_ready("/stats", lambda answer: _is_stats(answer) and predicate(answer), timeout)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)


class ChatClient:
    """A websocket-client connection whose frames a reader thread collects as dicts."""

    def __init__(self, port: int, user: str, timeout: float = 10.0) -> None:
        self.user = user
        self.ws = ws_connect(f"ws://127.0.0.1:{port}/ws?user={user}", timeout=5,
                                              skip_utf8_validation=True)
        self.ws.settimeout(None)  # the reader blocks; abort() wakes it
        self.frames: list[Frame] = []
        self.closed = threading.Event()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"ws-reader-{user}", daemon=True)
        self._reader.start()
        welcome = self.wait_for(lambda f: f.get("type") == "welcome", timeout)
        self.cid: str = welcome["connectionId"]
        self.server_id: str = welcome["serverId"]

    def _read(self) -> None:
        try:
            while True:
                opcode, data = self.ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return
                with self._cond:
                    self.frames.append(json.loads(data))
                    self._cond.notify_all()
        except (websocket.WebSocketException, OSError, ValueError):
            return
        finally:
            self.closed.set()
            with self._cond:
                self._cond.notify_all()

    # ------------------------------------------------------------------ observing
    def matching(self, predicate: Predicate, start: int = 0) -> list[Frame]:
        with self._cond:
            return [f for f in self.frames[start:] if predicate(f)]

    def wait_for(self, predicate: Predicate, timeout: float = 10.0, start: int = 0) -> Frame:
        """The first frame (from index ``start``) matching ``predicate``, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for f in self.frames[start:]:
                    if predicate(f):
                        return f
                left = deadline - time.monotonic()
                if left <= 0 or self.closed.is_set():
                    raise AssertionError(f"{self.user}: no matching frame within {timeout}s "
                                         f"(closed={self.closed.is_set()}); got {self.frames}")
                self._cond.wait(left)

    def mark(self) -> int:
        with self._cond:
            return len(self.frames)

    # ------------------------------------------------------------------ commands
    def send(self, command: dict[str, Any]) -> None:
        self.ws.send(json.dumps(command))

    def request(self, command: dict[str, Any], reply: Predicate, timeout: float = 10.0) -> Frame:
        start = self.mark()
        self.send(command)
        return self.wait_for(reply, timeout, start)

    def join(self, room: str) -> None:
        reply = self.request({"op": "join", "room": room},
                             lambda f: f.get("type") == "error" or f == {"type": "joined", "room": room})
        assert reply["type"] == "joined", reply

    def say(self, room: str, text: str, **extra: Any) -> None:
        self.send({"op": "say", "room": room, "text": text, **extra})

    def direct(self, to: str, text: str) -> bool:
        reply = self.request({"op": "direct", "to": to, "text": text},
                             lambda f: f.get("type") == "direct-result")
        return bool(reply["sent"])

    def close(self) -> None:
        """Close politely (the server removes the connection), then drop the socket."""
        if not self.closed.is_set():
            with contextlib.suppress(websocket.WebSocketException, OSError):
                self.ws.send_close()
            self.closed.wait(5)
        self.ws.abort()  # type: ignore[no-untyped-call]
        self.ws.shutdown()  # type: ignore[no-untyped-call]
        self._reader.join(5)


def is_message(seq: object, room: str | None = None) -> Predicate:
    return lambda f: f.get("type") == "message" and f.get("seq") == seq and room in (None, f.get("room"))


def is_departure(connection_id: str, room: str | None = None) -> Predicate:
    return lambda f: (f.get("type") == "user-disconnected" and f.get("connectionId") == connection_id
                      and room in (None, f.get("roomId")))


def say_until_received(sender: ChatClient, receiver: ChatClient, room: str,
                       attempts: int = 100, timeout: float = 20.0) -> int:
    """Say numbered messages until one reaches ``receiver`` (the bus may still be reconnecting);
    return the seq that arrived."""
    deadline = time.monotonic() + timeout
    start = receiver.mark()
    tag = uuid.uuid4().hex

    def arrived(f: Frame) -> bool:
        return f.get("type") == "message" and f.get("tag") == tag and f.get("from") == sender.user

    for seq in range(1, attempts + 1):
        sender.say(room, f"try {seq}", seq=seq, tag=tag)
        try:
            got = receiver.wait_for(arrived, timeout=max(0.0, min(0.3, deadline - time.monotonic())),
                                    start=start)
            return int(got["seq"])
        except AssertionError:
            if time.monotonic() > deadline:
                break
    raise AssertionError(f"no message from {sender.user} reached {receiver.user} "
                         f"within {attempts} attempts / {timeout}s")
