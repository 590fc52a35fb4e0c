"""permessage-deflate on real servers (gevent.pywsgi with the project's handler, Werkzeug,
gunicorn with the project's worker): the ``websockets`` client library, which offers it, and raw
sockets that read the frames as they come on the wire."""

from __future__ import annotations

import json
import socket
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from testkit.closing import closed_after_test, ws_connect
from testkit.frames import masked, split
from tests.flask.procs import Server, Servers

AGREED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
OFFER = "permessage-deflate; client_max_window_bits"  # what browsers offer
DCM_WORKER = "flask_ext.gunicorn_worker.DCMGeventWebSocketWorker"
RSV1, TEXT = 0x40, 0x1


def start(servers: Servers, mode: str, **env: str) -> Server:
    if mode == "gunicorn":
        return servers.gunicorn(DCM_WORKER, 1, env=env)
    return servers.chat(mode, **env)


def client(server: Server, token: str) -> ClientConnection:
    stack = ExitStack()  # closes it when the test ends
    ws: ClientConnection = stack.enter_context(connect(server.ws_url(f"?token={token}"),
                                                       open_timeout=10))
    closed_after_test(stack, stack.close)
    assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
    return ws


def until(ws: ClientConnection, kind: str, **fields: Any) -> Any:
    for _ in range(50):
        msg = json.loads(ws.recv(timeout=10))
        if msg.get("type") == kind and all(msg.get(k) == v for k, v in fields.items()):
            return msg
    raise AssertionError(f"no {kind!r} message")


def join(ws: ClientConnection, room: str) -> None:
    ws.send(json.dumps({"op": "join", "room": room}))
    until(ws, "joined")


@pytest.mark.parametrize("mode", ["dcm", "werkzeug", "gunicorn"])
def test_websockets_client_reads_and_sends_compressed_messages(servers: Servers, mode: str) -> None:
    server = start(servers, mode, DCM_COMPRESSION="1")
    alice, bob = client(server, "alice"), client(server, "bob")
    assert alice.response is not None
    assert alice.response.headers["Sec-WebSocket-Extensions"] == AGREED
    join(alice, "lobby")
    join(bob, "lobby")
    # the client compresses what it sends (the server inflates it) and inflates what it gets
    text = "Grüße aus dem Süden! " * 70
    alice.send(json.dumps({"op": "say", "room": "lobby", "text": text}))
    assert until(bob, "message")["text"] == text
    bob.send(json.dumps({"op": "say", "room": "lobby", "text": "short"}))
    assert until(alice, "message", **{"from": "bob"})["text"] == "short"


@pytest.mark.parametrize(("mode", "env"), [("dcm", {}), ("werkzeug", {}),
                                           ("stock", {"DCM_COMPRESSION": "1"})])
def test_no_compression_unless_on_with_the_projects_handshake(servers: Servers, mode: str,
                                                              env: dict[str, str]) -> None:
    # off by default; gevent-websocket's own handler never asks the app, so never agrees
    server = start(servers, mode, **env)
    alice, bob = client(server, "alice"), client(server, "bob")
    assert alice.response is not None
    assert "Sec-WebSocket-Extensions" not in alice.response.headers
    join(alice, "lobby")
    join(bob, "lobby")
    alice.send(json.dumps({"op": "say", "room": "lobby", "text": "plain " * 200}))
    assert until(bob, "message")["text"] == "plain " * 200


def _message(first: int, payload: bytes) -> Any:
    """A chat message from its frame, inflated when RSV1 says it is compressed."""
    if first & RSV1:
        payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
    return json.loads(payload)


class RawClient:
    """A chat client on a plain socket that reads frames as they are on the wire."""

    def __init__(self, server: Server, token: str, offer: str | None) -> None:
        headers = [f"Sec-WebSocket-Extensions: {offer}"] if offer else []
        ws = ws_connect(server.ws_url(f"?token={token}"), timeout=10, header=headers)
        self.answer = ws.getheaders().get("sec-websocket-extensions")
        self.sock: socket.socket = ws.sock
        self.buf = b""
        self.frames: Iterator[tuple[int, bytes]] = self._frames()
        assert self.next_json()["type"] == "welcome"

    def _frames(self) -> Iterator[tuple[int, bytes]]:
        while True:
            frames, used = split(self.buf)
            self.buf = self.buf[used:]
            yield from frames
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.buf += data

    def next_json(self) -> Any:
        return _message(*next(self.frames))

    def send(self, **msg: Any) -> None:
        self.sock.sendall(masked(TEXT, json.dumps(msg).encode()))

    def until(self, kind: str) -> tuple[int, bytes, Any]:
        for _ in range(50):
            first, payload = next(self.frames)
            msg = _message(first, payload)
            if msg.get("type") == kind:
                return first, payload, msg
        raise AssertionError(f"no {kind!r} message")


def test_a_room_message_is_one_compressed_frame_for_every_member(servers: Servers) -> None:
    server = start(servers, "dcm", DCM_COMPRESSION="1")
    carol, dave = RawClient(server, "carol", OFFER), RawClient(server, "dave", OFFER)
    plain = RawClient(server, "erin", None)
    assert carol.answer == dave.answer == AGREED and plain.answer is None
    for member in (carol, dave, plain):
        member.send(op="join", room="lobby")
        member.until("joined")
    text = json.dumps([{"id": n, "name": f"item {n}", "tags": ["a", "b"]} for n in range(30)])
    carol.send(op="say", room="lobby", text=text)
    got = [member.until("message") for member in (carol, dave, plain)]
    (c_first, c_payload, c_msg), (d_first, d_payload, d_msg), (p_first, p_payload, p_msg) = got
    assert c_msg["text"] == d_msg["text"] == p_msg["text"] == text
    assert c_first == d_first == 0x80 | RSV1 | TEXT and p_first == 0x80 | TEXT
    assert c_payload == d_payload  # the same bytes for both (compressed once: see benchmarks)
    assert len(c_payload) * 3 < len(p_payload)  # what the wire carries
    # a short message is not worth compressing: a plain frame on every socket
    carol.send(op="say", room="lobby", text="hi")
    assert dave.until("message")[0] == 0x80 | TEXT


def test_a_compressed_bomb_is_closed_with_1009(servers: Servers) -> None:
    server = start(servers, "dcm", DCM_COMPRESSION="1", DCM_MAX_MESSAGE_BYTES="65536")
    mallory = RawClient(server, "mallory", OFFER)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = (c.compress(b" " * 50_000_000) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]  # ~50 KB
    mallory.sock.sendall(masked(RSV1 | TEXT, bomb))
    closes = []
    for first, payload in mallory.frames:
        if first & 0x0F == 0x8:
            closes.append(int.from_bytes(payload[:2], "big"))
            break
    assert closes == [1009]
    alice = client(server, "alice")  # the server goes on serving
    join(alice, "lobby")
