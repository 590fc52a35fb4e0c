"""A ``recovery=True`` route (the chat example's ``/ws/resumable``) over real sockets, on the
project's gevent handler and on Werkzeug's threaded server: the hello and the frames, a socket
that drops without a close frame resumed on another server with what it missed, a token that
is refused (a new connection, said so), and a client that closes on purpose removed at once."""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from typing import Any

import pytest
import websocket

from testkit.closing import ws_connect
from tests.flask.procs import Server, Servers

pytestmark = pytest.mark.timeout(60)


class Page:
    """A client of the recovery protocol, as client.js is: positions kept from the frames."""

    def __init__(self, server: Server, user: str, resume_from: Page | None = None) -> None:
        query: dict[str, str] = {"token": user}
        if resume_from is not None:
            query.update(resume=resume_from.token, since=json.dumps(resume_from.rooms),
                         seen=str(resume_from.directs))
        url = f"ws://127.0.0.1:{server.port}/ws/resumable?{urllib.parse.urlencode(query)}"
        self.ws = ws_connect(url, timeout=10, skip_utf8_validation=True)
        self.hello = json.loads(self.ws.recv())
        assert self.hello["t"] == "hello" and self.hello["dcm"] == 1
        self.token: str = self.hello["token"]
        self.rooms: dict[str, list[Any]] = dict(resume_from.rooms) if resume_from else {}
        self.directs = resume_from.directs if resume_from else 0
        self.got: list[Any] = []

    def read_until(self, done: Any, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(done(m) for m in self.got):
            assert time.monotonic() < deadline, f"not seen; got {self.got!r}"
            frame = json.loads(self.ws.recv())
            if frame["t"] == "j":
                self.rooms.setdefault(frame["r"], [frame["e"], frame["o"]])
            elif frame["t"] == "r":
                if "o" in frame:
                    self.rooms[frame["r"]] = [frame["e"], frame["o"]]
                self.got.append(json.loads(frame["d"]))
            elif frame["t"] == "d":
                self.directs = frame.get("n", self.directs)
                self.got.append(json.loads(frame["d"]))

    def say(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def drop(self) -> None:
        """The network goes: no close frame, the TCP connection reset."""
        sock = self.ws.sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()


def plain(server: Server, user: str) -> websocket.WebSocket:
    ws = ws_connect(server.ws_url(f"?token={user}"), timeout=10, skip_utf8_validation=True)
    assert json.loads(ws.recv())["type"] == "welcome"
    ws.send(json.dumps({"op": "join", "room": "lobby"}))
    return ws


def read_plain(ws: websocket.WebSocket, done: Any, got: list[Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(done(m) for m in got):
        assert time.monotonic() < deadline, f"not seen; got {got!r}"
        got.append(json.loads(ws.recv()))


@pytest.mark.parametrize("mode", ["dcm", "werkzeug"])
def test_a_dropped_socket_resumes_on_another_server(servers: Servers, mode: str) -> None:
    a, b = servers.chat(mode), servers.chat(mode)
    witness, seen = plain(b, "wendy"), []
    read_plain(witness, lambda m: m.get("type") == "people", seen)
    page = Page(a, "alice")
    assert "recovered" not in page.hello
    page.read_until(lambda m: m.get("type") == "welcome")
    page.say({"op": "join", "room": "lobby"})
    page.read_until(lambda m: m.get("type") == "people")
    page.say({"op": "say", "room": "lobby", "text": "before"})
    page.read_until(lambda m: m.get("text") == "before")
    page.drop()
    read_plain(witness, lambda m: m.get("text") == "before", seen)
    for n in range(3):
        witness.send(json.dumps({"op": "say", "room": "lobby", "text": f"missed {n}"}))
    read_plain(witness, lambda m: m.get("text") == "missed 2", seen)
    back = Page(b, "alice", resume_from=page)
    assert back.hello["recovered"] is True and back.hello["id"] == page.hello["id"]
    back.read_until(lambda m: m.get("type") == "welcome")
    welcome = next(m for m in back.got if m.get("type") == "welcome")
    assert welcome["resumed"] is True  # the view knew: conn.resumed
    said = [m["text"] for m in back.got if m.get("type") == "message"]
    assert said == ["missed 0", "missed 1", "missed 2"]
    witness.send(json.dumps({"op": "say", "room": "lobby", "text": "after"}))
    back.read_until(lambda m: m.get("text") == "after")
    read_plain(witness, lambda m: m.get("text") == "after", seen)
    assert [m for m in seen if m.get("type") in ("user-left", "user-disconnected")] == []


def test_a_refused_resume_is_a_new_connection(servers: Servers) -> None:
    a = servers.chat("dcm")
    page = Page(a, "alice")
    forged = Page.__new__(Page)
    forged.token, forged.rooms, forged.directs = page.hello["id"] + ".forged", {}, 0
    other = Page(a, "alice", resume_from=forged)
    assert "recovered" not in other.hello  # refused: a new connection, told by its hello
    assert other.hello["id"] != page.hello["id"]
    other.read_until(lambda m: m.get("type") == "welcome")
    assert next(m for m in other.got if m.get("type") == "welcome")["resumed"] is False


def test_a_client_that_closes_on_purpose_leaves_at_once(servers: Servers) -> None:
    a = servers.chat("dcm")
    witness, seen = plain(a, "wendy"), []
    read_plain(witness, lambda m: m.get("type") == "people", seen)
    page = Page(a, "alice")
    page.say({"op": "join", "room": "lobby"})
    page.read_until(lambda m: m.get("type") == "people")
    page.ws.close(status=1000)
    read_plain(witness, lambda m: m.get("type") == "user-disconnected", seen)
    [gone] = [m for m in seen if m.get("type") == "user-disconnected"]
    assert gone["userId"] == "alice" and gone["connectionId"] == page.hello["id"]
