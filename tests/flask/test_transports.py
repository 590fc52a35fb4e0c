"""GeventTransport over a real gevent socket pair and gevent-websocket's own WebSocket."""

from __future__ import annotations

from types import SimpleNamespace

import gevent
import pytest
from gevent import socket as gsocket
from geventwebsocket.websocket import Stream, WebSocket

from flask_ext.transports import GeventTransport, SocketClosed
from flask_ext.wire import text_frame
from tests.helpers.closing import closed_after_test


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
