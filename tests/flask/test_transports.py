"""The transports over real socket pairs: GeventTransport with gevent-websocket's own WebSocket,
ThreadedTransport with the handshake it does for Werkzeug's threaded server and gunicorn's gthread."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import gevent
import pytest
from gevent import socket as gsocket
from geventwebsocket.websocket import Stream, WebSocket

from flask_ext.handshake import HandshakeError
from flask_ext.limits import Violation
from flask_ext.transports import GeventTransport, SocketClosed, ThreadedTransport
from flask_ext.wire import close_frame, pong_frame, text_frame
from testkit.closing import closed_after_test
from testkit.frames import masked, parse


def _pair() -> tuple[GeventTransport, gsocket.socket]:
    server, client = map(closed_after_test, gsocket.socketpair())
    handler = SimpleNamespace(socket=server, rfile=closed_after_test(server.makefile("rb")))
    ws = WebSocket({}, Stream(handler), handler)
    return GeventTransport(ws), client


def _read(sock: gsocket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(65536, n - got))
        assert chunk, "peer closed early"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("size", [10, 300, 4 * 1024 * 1024])
def test_prebuilt_frames_arrive_whole_and_in_order(size: int) -> None:
    # 4 MiB does not fit the socket buffer: the non-blocking write is partial, write() ends it
    transport, client = _pair()
    frames = [text_frame("a" * size), text_frame("é" * 5), text_frame("b" * size)]
    expected = b"".join(frames)
    def write_all() -> None:
        for f in frames:
            sent = transport.write_nowait(f)
            if sent < len(f):
                transport.write(f[sent:])

    writer = gevent.spawn(write_all)
    try:
        assert gevent.spawn(_read, client, len(expected)).get(timeout=30) == expected
        writer.get(timeout=30)
    finally:
        writer.kill()


def test_prebuilt_frame_to_a_closed_or_dead_socket_raises() -> None:
    transport, client = _pair()
    transport.close(1000, "bye")
    with pytest.raises(SocketClosed):
        transport.write_nowait(text_frame("late"))
    transport, client = _pair()
    client.close()
    with pytest.raises(SocketClosed):
        for _ in range(100):  # the first writes may still land in the buffer
            transport.write(text_frame("x" * 65536))


def test_abort_hands_over_the_close_frame_then_shuts_down() -> None:
    transport, client = _pair()
    frame = transport.closing(1013, "slow consumer")
    assert transport.receive() is None  # the view's loop ends
    transport.close()  # a no-op now: nothing written twice
    assert transport.write_nowait(frame) == len(frame)
    transport.finish()
    got = gevent.spawn(_read, client, len(frame)).get(timeout=5)
    assert got == b"\x88" + bytes([len(frame) - 2]) + (1013).to_bytes(2, "big") + b"slow consumer"
    assert client.recv(10) == b""  # shut down


def test_frames_sent_with_the_handshake_are_read_first_then_the_socket() -> None:
    # pywsgi reads the request through a buffered reader, which may take in frames a client
    # sent right behind its request; the first of them whole, the second only in part
    server, client = map(closed_after_test, gsocket.socketpair())
    first, second = masked(0x1, b"first"), masked(0x1, b"s" * 3000)
    client.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n" + first + second)
    rfile = closed_after_test(server.makefile("rb", 1024))
    while rfile.readline() not in (b"\r\n", b""):
        pass  # the request's lines, as pywsgi reads them
    handler = SimpleNamespace(socket=server, rfile=rfile)
    transport = GeventTransport(WebSocket({}, Stream(handler), handler))
    assert transport.receive(timeout=5) == "first"
    assert transport.receive(timeout=5) == "s" * 3000
    with pytest.raises(TimeoutError):  # nothing more: the timeout fires
        transport.receive(timeout=0.05)
    client.sendall(masked(0x1, b"later"))
    assert transport.receive(timeout=5) == "later"
    client.sendall(masked(0x8, (1000).to_bytes(2, "big")))
    assert transport.receive(timeout=5) is None
    assert transport.peer_close_code == 1000


# ---------------------------------------------------------------------------- threaded servers

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3's example, and its answer
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def _upgrade(sock: socket.socket, **headers: str) -> dict[str, Any]:
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/ws", "werkzeug.socket": sock,
                               "HTTP_HOST": "127.0.0.1:5000", "HTTP_UPGRADE": "websocket",
                               "HTTP_CONNECTION": "Upgrade", "HTTP_SEC_WEBSOCKET_KEY": KEY,
                               "HTTP_SEC_WEBSOCKET_VERSION": "13"}
    environ.update({f"HTTP_{k.upper()}": v for k, v in headers.items()})
    return environ


def _threaded(**limits: Any) -> tuple[ThreadedTransport, socket.socket]:
    from flask_ext.limits import InboundLimits

    server, client = map(closed_after_test, socket.socketpair())
    client.settimeout(5)
    transport = ThreadedTransport(_upgrade(server), InboundLimits(**limits))
    head = b""
    while b"\r\n\r\n" not in head:
        head += client.recv(1)
    status, *lines = head.decode().strip().split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
    assert status.startswith("HTTP/1.1 101 ") and headers["sec-websocket-accept"] == ACCEPT
    assert "sec-websocket-extensions" not in headers  # plain frames: no compression
    return transport, client


def _frames(client: socket.socket, count: int) -> list[tuple[int, bytes]]:
    buf = b""
    while len(parse(buf)[0]) < count:
        chunk = client.recv(65536)
        assert chunk, "peer closed early"
        buf += chunk
    return parse(buf)[0]


def test_threaded_handshake_and_messages() -> None:
    transport, client = _threaded()
    assert transport.mode == "werkzeug"
    with pytest.raises(TimeoutError):
        transport.receive(timeout=0.05)
    client.sendall(masked(0x1, b"hel", fin=False) + masked(0x9, b"ping") + masked(0x0, b"lo"))
    assert transport.receive(timeout=5) == "hello"
    assert _frames(client, 1) == [(0xA, b"ping")]  # no outbox yet: the pong went out at once
    transport.send("back")
    assert _frames(client, 1) == [(0x1, b"back")]


def test_threaded_message_not_finished_within_the_timeout_is_a_violation() -> None:
    transport, client = _threaded()
    client.sendall(masked(0x1, b"hel", length=5))
    with pytest.raises(Violation) as err:
        transport.receive(timeout=0.1)
    assert (err.value.code, err.value.reason) == (1008, "message not completed in time")


def test_threaded_client_close_is_answered_and_ends_the_stream() -> None:
    transport, client = _threaded()
    client.sendall(masked(0x8, (4000).to_bytes(2, "big") + b"bye"))
    assert transport.receive(timeout=5) is None
    assert _frames(client, 1) == [(0x8, (4000).to_bytes(2, "big"))]
    transport.close(1000, "again")  # the answer was the close frame: nothing more
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(10)


def test_threaded_receive_wakes_when_the_socket_is_shut_down() -> None:
    transport, client = _threaded()
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(transport.receive()), daemon=True)
    reader.start()
    time.sleep(0.1)
    frame = transport.closing(1013, "slow consumer")
    assert frame == close_frame(1013, "slow consumer")
    assert transport.write_nowait(frame) == len(frame)
    transport.finish()
    reader.join(5)
    assert got == [None]
    assert _frames(client, 1) == [(0x8, frame[2:])]


def test_threaded_pongs_go_through_the_outbox_once_attached() -> None:
    transport, client = _threaded()
    sent: list[bytes] = []
    transport.attach(SimpleNamespace(put_control=sent.append, wait_idle=lambda timeout=None: True))
    client.sendall(masked(0x9, b"p1") + masked(0x1, b"after"))
    assert transport.receive(timeout=5) == "after"
    assert sent == [pong_frame(b"p1")]


@pytest.mark.parametrize("headers", [{"sec_websocket_key": ""}, {"sec_websocket_key": "c2hvcnQ="},
                                     {"sec_websocket_version": "8"}, {"upgrade": "h2c"},
                                     {"connection": "keep-alive"}])
def test_threaded_bad_upgrade_sends_nothing(headers: dict[str, str]) -> None:
    server, client = map(closed_after_test, socket.socketpair())
    with pytest.raises(HandshakeError):
        ThreadedTransport(_upgrade(server, **headers))
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(10)
