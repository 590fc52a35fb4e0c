"""The socket under a connection: gevent-websocket or simple-websocket, behind one interface.

``receive(timeout)`` returns ``str | bytes``, ``None`` once the peer is gone, and raises the
builtin ``TimeoutError`` when ``timeout`` seconds pass without a message.
"""

from __future__ import annotations

import logging
import struct
import threading
from typing import Any, Protocol

__all__ = ["Transport", "open_transport", "GeventTransport", "SimpleTransport"]

logger = logging.getLogger(__name__)


class Transport(Protocol):
    mode: str

    def send(self, message: str) -> None: ...

    def receive(self, timeout: float | None = None) -> str | bytes | None: ...

    def close(self, code: int = 1000, reason: str = "") -> None: ...


def _close_payload(code: int, reason: str) -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]


class GeventTransport:
    """``environ["wsgi.websocket"]`` from gevent-websocket's handler (pywsgi or gunicorn)."""

    mode = "gevent-websocket"

    def __init__(self, ws: Any) -> None:
        from gevent import socket as gsocket
        from geventwebsocket.exceptions import WebSocketError

        self._ws = ws
        self._closed = False
        self._error = WebSocketError
        # A plain (not TLS) gevent socket: a frame is first written with one non-blocking
        # send on the OS socket, skipping gevent's sendall bookkeeping; what does not fit
        # goes through sendall.
        sock: Any = getattr(ws.raw_write, "__self__", None)
        self._os_sock = sock._sock if type(sock) is gsocket.socket else None
        # gevent-websocket 0.10.1 answers a client's close frame that carries a reason with an
        # invalid frame (the reason's repr where the code belongs). Its WebSocket has __slots__,
        # so the fix is a slot-less subclass that answers with the client's code.
        if type(ws).__name__ == "WebSocket":
            ws.__class__ = _close_fixed_class(type(ws))

    def send(self, message: str) -> None:
        self._ws.send(message)  # a str goes out as a text frame

    def send_frame_bytes(self, frame: bytes) -> None:
        """Write a frame built once for many sockets (:func:`dcm_sync.local.text_frame`).
        Callers serialize writes to one socket (``LocalConnection.send_lock``)."""
        ws = self._ws
        if ws.closed:
            raise self._error("socket is already closed")
        try:
            if self._os_sock is not None:
                try:
                    sent = self._os_sock.send(frame)
                except BlockingIOError:
                    sent = 0
                if sent == len(frame):
                    return
                frame = frame[sent:]
            ws.raw_write(frame)
        except OSError as exc:
            raise self._error(f"socket is dead: {exc}") from exc

    def receive(self, timeout: float | None = None) -> str | bytes | None:
        from geventwebsocket.exceptions import WebSocketError

        if self._closed or self._ws.closed:
            return None
        try:
            if timeout is None:
                return self._ws.receive()  # type: ignore[no-any-return]
            import gevent

            with gevent.Timeout(timeout, TimeoutError(f"no message within {timeout}s")):
                return self._ws.receive()  # type: ignore[no-any-return]
        except WebSocketError:
            return None

    def close(self, code: int = 1000, reason: str = "") -> None:
        # gevent-websocket 0.10.1's close() drops ``code`` and sends its message as text, so
        # the close frame (code + reason) is written here and the socket marked closed.
        from geventwebsocket.exceptions import WebSocketError

        if self._closed:
            return
        self._closed = True
        if self._ws.closed:
            return
        try:
            self._ws.send_frame(_close_payload(code, reason), self._ws.OPCODE_CLOSE)
        except WebSocketError as exc:
            logger.debug("close frame not sent: %s", exc)
        finally:
            self._ws.closed = True


_FIXED: dict[type, type] = {}


def _close_fixed_class(base: type) -> type:
    if base not in _FIXED:
        def handle_close(self: Any, header: Any, payload: bytes) -> None:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000
            if not (1000 <= code <= 4999) or code in (1004, 1005, 1006, 1015):
                code = 1002  # the client sent a code that must not be sent: protocol error
            try:
                self.send_frame(_close_payload(code, ""), self.OPCODE_CLOSE)
            except Exception as exc:  # the peer may be gone already
                logger.debug("close reply not sent: %s", exc)
            self.closed = True

        _FIXED[base] = type("ClosingWebSocket", (base,), {"__slots__": (), "handle_close": handle_close})
    return _FIXED[base]


class SimpleTransport:
    """simple-websocket's ``Server`` (Werkzeug's threaded server, gunicorn's gthread worker)."""

    def __init__(self, environ: dict[str, Any]) -> None:
        import simple_websocket

        self._closed_exc = simple_websocket.ConnectionClosed
        self._ws = simple_websocket.Server(environ)
        self.mode = str(self._ws.mode)
        self._lock = threading.Lock()

    def send(self, message: str) -> None:
        self._ws.send(message)

    def receive(self, timeout: float | None = None) -> str | bytes | None:
        try:
            msg = self._ws.receive(timeout)
        except self._closed_exc:
            return None
        if msg is None:
            if not self._ws.connected:
                return None
            raise TimeoutError(f"no message within {timeout}s")
        return msg  # type: ignore[no-any-return]

    def close(self, code: int = 1000, reason: str = "") -> None:
        with self._lock:
            if self._ws.connected:
                try:
                    self._ws.close(reason=code, message=reason)
                except self._closed_exc:
                    logger.debug("socket already closed by the peer")


def open_transport(environ: dict[str, Any]) -> Transport:
    ws = environ.get("wsgi.websocket")
    if ws is not None:
        return GeventTransport(ws)
    return SimpleTransport(environ)
