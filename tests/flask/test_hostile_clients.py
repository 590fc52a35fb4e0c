"""Hostile clients against real chat servers (tests/flask/serve.py): each gets its documented
close code (README, "Hostile clients"), and well-behaved clients on the same server are still served."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from gevent import socket as gsocket
from geventwebsocket.websocket import Stream, WebSocket
from websocket import ABNF

from dcm_sync import ConfigError
from flask_ext import DistributedWebSockets
from flask_ext.limits import InboundLimits, Violation
from flask_ext.transports import GeventTransport
from testkit.closing import closed_after_test, ws_connect
from testkit.redis_server import RedisServer
from tests.flask.procs import Client, Server, Servers
from tests.flask.wire import close_of, masked, raw

MAX_BYTES = 16 * 1024
LIMITS = {"DCM_MAX_MESSAGE_BYTES": str(MAX_BYTES), "DCM_RATE_LIMIT": "20", "DCM_RATE_BURST": "40",
          "DCM_MAX_CONNECTIONS_PER_USER": "2", "DCM_HANDSHAKE_TIMEOUT": "1.5"}


@pytest.fixture(scope="module")
def module_servers(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    made = Servers(redis_server.url, f"t{uuid.uuid4().hex[:10]}:", tmp_path_factory.mktemp("hostile"))
    yield made
    made.stop_all()


@pytest.fixture(scope="module")
def dcm(module_servers: Servers) -> Server:
    """One gevent.pywsgi server (the project's handler) with small limits, shared by the module."""
    return module_servers.chat("dcm", **LIMITS)


@pytest.fixture(scope="module")
def werkzeug_server(module_servers: Servers) -> Server:
    return module_servers.chat("werkzeug", **LIMITS)


class Pair:
    """Two well-behaved clients in one room of ``server``."""

    def __init__(self, server: Server) -> None:
        tag = uuid.uuid4().hex[:6]
        self.room = f"room{tag}"
        self.a, self.b = Client(server.ws_url(), f"a{tag}"), Client(server.ws_url(), f"b{tag}")
        self.a.join(self.room)
        self.b.join(self.room)

    def still_served(self) -> None:
        text = f"still here {uuid.uuid4().hex[:6]}"
        self.a.send(op="say", room=self.room, text=text)
        got = self.b.recv_until(lambda m: m.get("type") == "message" and m["text"] == text)
        assert got["from"] == self.a.welcome["user"]

    def close(self) -> None:
        self.a.close()
        self.b.close()


@pytest.fixture
def pair(dcm: Server) -> Iterator[Pair]:
    made = Pair(dcm)
    yield made
    made.close()


HUGE = 1 << 40  # announced, never sent: refused from the header alone

CASES = {
    # name: (frames to send, expected close code, expected reason)
    "oversize": ([masked(ABNF.OPCODE_TEXT, b"x" * (MAX_BYTES + 1))], 1009, "message too big"),
    "oversize-announced": ([masked(ABNF.OPCODE_TEXT, b"xx", length=HUGE)], 1009, "message too big"),
    "oversize-fragments": ([masked(ABNF.OPCODE_TEXT, b"x" * 10_000, fin=False),
                            masked(ABNF.OPCODE_CONT, b"x" * 10_000)], 1009, "message too big"),
    "invalid-utf8": ([masked(ABNF.OPCODE_TEXT, b'{"op": "\xff\xfe"}')], 1007, "invalid UTF-8"),
    "truncated-utf8": ([masked(ABNF.OPCODE_TEXT, b"ok", fin=False),
                        masked(ABNF.OPCODE_CONT, b"\xc3")], 1007, "invalid UTF-8"),
    "invalid-utf8-first-fragment": ([masked(ABNF.OPCODE_TEXT, b"\xffok", fin=False)], 1007,
                                    "invalid UTF-8"),  # refused before the message ends
    "binary": ([masked(ABNF.OPCODE_BINARY, b'{"op": "join", "room": "x"}')], 1003,
               "binary messages not accepted"),
    "flood": ([masked(ABNF.OPCODE_TEXT, b'{"op": "leave", "room": "nowhere"}')] * 200, 1008, "rate limit"),
    "unmasked": ([bytes([0x81, 2]) + b"hi"], 1002, "protocol error"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gevent_closes_each_violation_with_its_code(dcm: Server, pair: Pair, case: str) -> None:
    frames, code, reason = CASES[case]
    ws = raw(dcm, f"h{uuid.uuid4().hex[:6]}")
    ws.sock.sendall(b"".join(frames))
    assert close_of(ws) == (code, reason)
    pair.still_served()


def test_fragmented_text_split_inside_a_character_is_one_message(pair: Pair) -> None:
    a, b = pair.a, pair.b
    text = json.dumps({"op": "say", "room": pair.room, "text": "café"}, ensure_ascii=False).encode()
    cut = text.index("é".encode()) + 1  # between the two bytes of "é"
    a.ws.sock.sendall(masked(ABNF.OPCODE_TEXT, text[:cut], fin=False)
                      + masked(ABNF.OPCODE_PING, b"mid")  # a control frame between fragments
                      + masked(ABNF.OPCODE_CONT, text[cut:]))
    assert b.recv_until(lambda m: m.get("type") == "message")["text"] == "café"


def test_bad_room_names_get_an_error_reply_not_a_closed_socket(dcm: Server) -> None:
    c = Client(dcm.ws_url(), f"r{uuid.uuid4().hex[:6]}")
    for room in ("", "r" * 257, 5, None, ["a"]):
        c.send(op="join", room=room)
        assert c.recv()["type"] == "error"
    c.join("fine")  # the socket still works


def test_connections_per_user_are_limited(dcm: Server) -> None:
    user = f"u{uuid.uuid4().hex[:6]}"
    first, second = Client(dcm.ws_url(), user), Client(dcm.ws_url(), user)
    third = ws_connect(dcm.ws_url(f"?token={user}"), timeout=10)
    assert close_of(third) == (1008, "too many connections")
    other = Client(dcm.ws_url(), f"o{user}")  # another user is not affected
    first.close()
    for _ in range(100):  # the server frees the slot once it has seen the socket go
        ws = ws_connect(dcm.ws_url(f"?token={user}"), timeout=10)
        frame = ws.recv_frame()
        if frame.opcode == ABNF.OPCODE_TEXT:
            assert json.loads(frame.data)["type"] == "welcome"
            break
        ws.shutdown()
        time.sleep(0.05)
    else:
        raise AssertionError("the slot was never given back")
    ws.close()
    second.close()
    other.close()


def test_half_open_handshakes_do_not_block_others_and_are_dropped(dcm: Server) -> None:
    # 50 clients that open TCP and never finish their request (slowloris): half send nothing,
    # half a request line and one header
    lurkers = []
    for i in range(50):
        s = closed_after_test(socket.create_connection(("127.0.0.1", dcm.port), timeout=10))
        if i % 2:
            s.sendall(b"GET /ws?token=lurker HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        lurkers.append(s)
    started = time.monotonic()
    tag = uuid.uuid4().hex[:6]
    a, b = Client(dcm.ws_url(), f"a{tag}"), Client(dcm.ws_url(), f"b{tag}")
    a.join("slow")
    b.join("slow")
    a.send(op="say", room="slow", text="through")
    assert b.recv_until(lambda m: m.get("type") == "message")["text"] == "through"
    assert time.monotonic() - started < 1.5  # served while every lurker still waited
    for s in lurkers:  # DCM_HANDSHAKE_TIMEOUT=1.5: each is dropped without an answer
        assert s.recv(4096) == b""
        s.close()
    assert time.monotonic() - started < 8.0
    a.send(op="say", room="slow", text="after")
    assert b.recv_until(lambda m: m.get("type") == "message")["text"] == "after"


def test_drop_action_keeps_the_socket_and_drops_the_excess(module_servers: Servers) -> None:
    server = module_servers.chat("dcm", **{**LIMITS, "DCM_RATE_LIMIT_ACTION": "drop"})
    flooder, listener = Client(server.ws_url(), "flooder"), Client(server.ws_url(), "listener")
    flooder.join("flood")
    listener.join("flood")
    burst = b"".join(masked(ABNF.OPCODE_TEXT, json.dumps({"op": "say", "room": "flood",
                                                           "text": str(i)}).encode()) for i in range(200))
    flooder.ws.sock.sendall(burst)
    time.sleep(1.0)  # tokens come back (20/s)
    flooder.send(op="say", room="flood", text="marker")
    got = []
    for _ in range(300):
        msg = listener.recv_until(lambda m: m.get("type") == "message")
        if msg["text"] == "marker":
            break
        got.append(int(msg["text"]))
    assert 35 <= len(got) < 100, len(got)  # the burst (40, less the join) and little more
    assert got == sorted(got)


@pytest.mark.parametrize("case", ["oversize", "invalid-utf8", "binary", "flood", "unmasked"])
def test_werkzeug_closes_with_the_same_codes(werkzeug_server: Server, case: str) -> None:
    # the same wire under Werkzeug's threaded server: the same codes (and reasons, below)
    pair = Pair(werkzeug_server)
    frames, code, _ = CASES[case]
    ws = raw(werkzeug_server, f"h{uuid.uuid4().hex[:6]}")
    ws.sock.sendall(b"".join(frames))
    assert close_of(ws)[0] == code
    pair.still_served()
    pair.close()


@pytest.mark.parametrize("case", list(CASES))
def test_werkzeug_closes_each_violation_with_its_code_and_reason(werkzeug_server: Server,
                                                                  case: str) -> None:
    pair = Pair(werkzeug_server)
    frames, code, reason = CASES[case]
    ws = raw(werkzeug_server, f"h{uuid.uuid4().hex[:6]}")
    ws.sock.sendall(b"".join(frames))
    assert close_of(ws) == (code, reason)
    pair.still_served()
    pair.close()


def test_werkzeug_answers_an_invalid_upgrade_with_400(werkzeug_server: Server) -> None:
    # Werkzeug's server has no handshake of its own: the extension's refuses before any 101
    request = (f"GET /ws?token=u{uuid.uuid4().hex[:6]} HTTP/1.1\r\nHost: 127.0.0.1:{werkzeug_server.port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: c2hvcnQ=\r\n\r\n")
    with closed_after_test(socket.create_connection(("127.0.0.1", werkzeug_server.port), timeout=10)) as s:
        s.sendall(request.encode())
        answer = s.recv(4096)
    assert answer.split(b" ", 2)[1] == b"400", answer


# ---------------------------------------------------------------- in one process


def _transport(**limits: Any) -> tuple[GeventTransport, gsocket.socket]:
    server, client = map(closed_after_test, gsocket.socketpair())
    handler = SimpleNamespace(socket=server, rfile=closed_after_test(server.makefile("rb")))
    ws = WebSocket({}, Stream(handler), handler)
    return GeventTransport(ws, InboundLimits(**limits)), client


def test_a_receive_timeout_between_messages_leaves_the_stream_intact() -> None:
    transport, client = _transport()
    with pytest.raises(TimeoutError):
        transport.receive(timeout=0.05)
    client.sendall(masked(ABNF.OPCODE_TEXT, b"hello"))
    assert transport.receive(timeout=1) == "hello"


def test_a_message_not_finished_within_the_timeout_is_a_violation() -> None:
    transport, client = _transport()
    client.sendall(masked(ABNF.OPCODE_TEXT, b"hel", length=5))
    with pytest.raises(Violation) as err:
        transport.receive(timeout=0.1)
    assert (err.value.code, err.value.reason) == (1008, "message not completed in time")


def test_drop_action_counts_and_binary_routes_take_bytes() -> None:
    transport, client = _transport(rate_limit=1.0, rate_burst=2, rate_limit_action="drop", binary=True)
    client.sendall(b"".join(masked(ABNF.OPCODE_BINARY, bytes([i])) for i in range(5)))
    assert transport.receive(timeout=1) == b"\x00"
    assert transport.receive(timeout=1) == b"\x01"
    with pytest.raises(TimeoutError):  # the other three were dropped
        transport.receive(timeout=0.2)
    assert transport.dropped == 3


@pytest.mark.parametrize("key,value", [("DCM_RATE_LIMIT", "-1"), ("DCM_RATE_LIMIT_ACTION", "ignore"),
                                       ("DCM_RATE_BURST", "0"), ("DCM_MAX_CONNECTIONS_PER_USER", "x"),
                                       ("DCM_HANDSHAKE_TIMEOUT", "-1")])
def test_bad_limits_fail_at_init_app(key: str, value: str) -> None:
    app = Flask(__name__)
    app.config.update({"DCM_REDIS_URL": "memory://", key: value})
    with pytest.raises(ConfigError):
        DistributedWebSockets(app)


def test_limits_come_from_the_environment_when_the_app_config_lacks_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCM_RATE_LIMIT", "7")
    monkeypatch.setenv("DCM_RATE_LIMIT_ACTION", "drop")
    app = Flask(__name__)
    app.config.update(DCM_REDIS_URL="memory://", DCM_RATE_BURST=3)
    sockets = DistributedWebSockets(app)
    limits = sockets._state().limits
    assert (limits.rate_limit, limits.rate_burst, limits.rate_limit_action) == (7.0, 3, "drop")
    assert limits.max_message_bytes == 1024 * 1024  # the core's DCM_MAX_MESSAGE_BYTES
