"""Client-side WebSocket helpers for the wire tests: hand-made frames, reading a close frame."""

from __future__ import annotations

import json

import websocket
from websocket import ABNF

from testkit.closing import ws_connect
from testkit.frames import masked
from tests.flask.procs import Server

__all__ = ["raw", "close_of", "masked"]


def raw(server: Server, token: str) -> websocket.WebSocket:
    """A socket that has read its welcome and then speaks whatever the test sends."""
    ws = ws_connect(server.ws_url(f"?token={token}"), timeout=10, skip_utf8_validation=True)
    assert json.loads(ws.recv())["type"] == "welcome"
    return ws


def close_of(ws: websocket.WebSocket) -> tuple[int, str]:
    """The close frame's code and reason (other frames are skipped)."""
    for _ in range(1000):
        try:
            frame = ws.recv_frame()
        except (websocket.WebSocketConnectionClosedException, ConnectionError) as exc:
            raise AssertionError(f"connection ended without a close frame: {exc!r}") from exc
        if frame.opcode == ABNF.OPCODE_CLOSE:
            ws.shutdown()
            return int.from_bytes(frame.data[:2], "big"), frame.data[2:].decode()
    raise AssertionError("no close frame among 1000 frames")

