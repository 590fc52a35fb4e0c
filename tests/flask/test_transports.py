"""GeventTransport over a real gevent socket pair and gevent-websocket's own WebSocket."""

from __future__ import annotations

from types import SimpleNamespace

import gevent
import pytest
from gevent import socket as gsocket
from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.websocket import Stream, WebSocket

from dcm_sync.local import text_frame
from flask_ext.transports import GeventTransport


def _pair() -> tuple[GeventTransport, gsocket.socket]:
    server, client = gsocket.socketpair()
    handler = SimpleNamespace(socket=server, rfile=server.makefile("rb"))
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
    # 4 MiB does not fit the socket buffer: the first send is partial, sendall finishes it
    transport, client = _pair()
    frames = [text_frame("a" * size), text_frame("é" * 5), text_frame("b" * size)]
    expected = b"".join(frames)
    writer = gevent.spawn(lambda: [transport.send_frame_bytes(f) for f in frames])
    try:
        assert gevent.spawn(_read, client, len(expected)).get(timeout=30) == expected
        writer.get(timeout=30)
    finally:
        writer.kill()


def test_prebuilt_frame_to_a_closed_or_dead_socket_raises() -> None:
    transport, client = _pair()
    transport.close(1000, "bye")
    with pytest.raises(WebSocketError):
        transport.send_frame_bytes(text_frame("late"))
    transport, client = _pair()
    client.close()
    with pytest.raises(WebSocketError):
        for _ in range(100):  # the first writes may still land in the buffer
            transport.send_frame_bytes(text_frame("x" * 65536))
