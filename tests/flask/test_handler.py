"""The handler (flask_ext/handler.py) reading the wire from hostile clients, on real chat
servers (tests/flask/serve.py): close frames answered with the code RFC 6455 calls for, a
stream of empty fragments bounded like a stream of bytes, frames sent with the handshake
request served, and no token in the server's access or error log."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator

import pytest
from websocket import ABNF

from testkit.closing import closed_after_test
from testkit.frames import parse
from testkit.polling import wait_until
from testkit.processes import rss_kb
from testkit.redis_server import RedisServer
from tests.flask.procs import Server, Servers
from tests.flask.wire import close_of, masked, raw

NO_RATE_LIMIT = {"DCM_RATE_LIMIT": "0"}  # the floods below are not stopped by the rate limit


@pytest.fixture(scope="module")
def module_servers(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    made = Servers(redis_server.url, f"t{uuid.uuid4().hex[:10]}:", tmp_path_factory.mktemp("frames"))
    yield made
    made.stop_all()


@pytest.fixture(scope="module", params=["dcm", "werkzeug"])
def any_server(module_servers: Servers, request: pytest.FixtureRequest) -> Server:
    """gevent-websocket's handshake and Werkzeug's threaded server (the extension's own)."""
    return module_servers.chat(request.param, **NO_RATE_LIMIT)


@pytest.fixture(scope="module")
def dcm(module_servers: Servers) -> Server:
    return module_servers.chat("dcm", **NO_RATE_LIMIT)


@pytest.mark.parametrize("payload,code", [
    (b"\x03", 1002),                          # a 1-byte payload: half a status code
    (b"\x03\xe8\xff\xfe", 1007),              # 1000 with a reason that is not UTF-8
    ((1005).to_bytes(2, "big"), 1002),        # a code an endpoint must never send
    ((2999).to_bytes(2, "big"), 1002),        # reserved for the protocol
    ((1000).to_bytes(2, "big") + "bye ✓".encode(), 1000),
    ((4000).to_bytes(2, "big"), 4000),        # an application's code comes back
    (b"", 1000),                              # no code at all: answered with 1000
])
def test_a_clients_close_frame_is_answered_as_rfc_6455_says(any_server: Server, payload: bytes,
                                                             code: int) -> None:
    ws = raw(any_server, f"c{uuid.uuid4().hex[:6]}")
    ws.sock.sendall(masked(ABNF.OPCODE_CLOSE, payload))
    got = close_of(ws)[0]
    assert got == code or (not payload and got == 0), got  # 0: a close frame without a code


def test_a_stream_of_empty_fragments_is_bounded_like_a_stream_of_bytes(dcm: Server) -> None:
    # the rate limit is off: each empty continuation frame's header counts toward the
    # message's size (1 MiB), so the socket is closed with 1009 after about 175,000 of them
    ws = raw(dcm, f"e{uuid.uuid4().hex[:6]}")
    before = rss_kb(dcm.proc.pid)
    empty = masked(ABNF.OPCODE_CONT, b"", fin=False)
    chunk = empty * 10_000
    sent = 0
    ws.sock.sendall(masked(ABNF.OPCODE_TEXT, b"{", fin=False))
    try:
        while sent < 2_000_000:  # bounded: 12 MB at most
            ws.sock.sendall(chunk)
            sent += 10_000
    except OSError:  # the server closed its side: what it had to say is waiting to be read
        pass
    assert sent < 1_000_000, f"still accepting after {sent:,} empty fragments"
    assert close_of(ws) == (1009, "message too big")
    assert rss_kb(dcm.proc.pid) - before < 5_000  # KB


@pytest.fixture(scope="module", params=["dcm", "stock"])
def gevent_server(module_servers: Servers, request: pytest.FixtureRequest) -> Server:
    """gevent.pywsgi with the project's handler, and with gevent-websocket's own."""
    return module_servers.chat(request.param, **NO_RATE_LIMIT)


def test_frames_sent_with_the_handshake_request_are_served(gevent_server: Server) -> None:
    # the request and the client's first frames in one write: the server reads some of the
    # frames with the request's headers, before the view starts. Both are answered to this
    # socket alone (no room message, which could race the room's subscription).
    tag = uuid.uuid4().hex[:6]
    room, op = f"early{tag}", f"hello {tag} " + "x" * 1500  # more than the handler's buffer
    frames = [masked(ABNF.OPCODE_TEXT, json.dumps(m).encode())
              for m in ({"op": "join", "room": room}, {"op": op, "room": room})]
    request = (f"GET /ws?token=e{tag} HTTP/1.1\r\nHost: 127.0.0.1:{gevent_server.port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    s = closed_after_test(socket.create_connection(("127.0.0.1", gevent_server.port), timeout=10))
    s.sendall(request.encode() + b"".join(frames))
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"closed during the handshake: {buf!r}"
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    answers: list[dict[str, object]] = []
    while not any(m["type"] == "error" for m in answers):
        chunk = s.recv(65536)
        assert chunk, f"closed after {answers}"
        buf += chunk
        got, used = parse(buf)
        buf = buf[used:]
        answers += [m for m in (json.loads(payload) for _, payload in got)
                    if m["type"] in ("welcome", "people", "error")]
    assert [m["type"] for m in answers] == ["welcome", "people", "error"]
    assert answers[1]["room"] == room and answers[1]["users"] == [f"e{tag}"]
    assert answers[2]["error"] == f"unknown op {op!r}"
    s.sendall(masked(ABNF.OPCODE_CLOSE, (1000).to_bytes(2, "big")))
    while not parse(buf)[0] or parse(buf)[0][-1][0] != ABNF.OPCODE_CLOSE:
        chunk = s.recv(65536)
        assert chunk, "closed without answering the close frame"
        buf += chunk
    assert parse(buf)[0][-1] == (ABNF.OPCODE_CLOSE, (1000).to_bytes(2, "big"))
    while s.recv(65536):  # then the server ends the connection
        pass


def test_no_token_reaches_the_access_or_error_log(dcm: Server) -> None:
    secret = f"tok-SECRET-{uuid.uuid4().hex[:8]}"
    host = f"127.0.0.1:{dcm.port}"

    def request(text: str) -> bytes:
        with closed_after_test(socket.create_connection(("127.0.0.1", dcm.port), timeout=10)) as s:
            s.sendall(text.encode())
            return s.recv(4096)

    upgrade = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    answers = [
        # refused before the handshake: a foreign origin (403), a refused token (401)
        request(f"GET /ws?token={secret} HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\n"
                f"{upgrade}\r\n"),
        request(f"GET /ws?access_token=x&token={secret}! HTTP/1.1\r\nHost: {host}\r\n{upgrade}\r\n"),
        # no such route, and a plain request to a WebSocket route
        request(f"GET /nowhere?token={secret} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        request(f"GET /ws?token={secret} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        # a resume token is a credential too
        request(f"GET /ws?since=x&resume={secret} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        # a malformed request line quotes itself in the error log
        request(f"BREW /ws?token={secret} HTTP/9.9\r\nHost: {host}\r\n\r\n"),
    ]
    assert [a.split(b" ", 2)[1] for a in answers] == [b"403", b"401", b"404", b"400", b"400", b"400"]
    raw(dcm, secret).close()  # accepted: 101
    wait_until(lambda: dcm.log().count("[redacted]") >= 6)  # the lines were written
    assert secret not in dcm.log()
