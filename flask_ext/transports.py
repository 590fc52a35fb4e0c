"""The socket under a connection: gevent-websocket or simple-websocket, behind one interface.

``receive(timeout)`` returns ``str | bytes``, ``None`` once the peer is gone, and raises the
builtin ``TimeoutError`` when ``timeout`` seconds pass without a message, and
:class:`flask_ext.limits.Violation` when the client broke an inbound limit (the caller closes
the socket with its code; see :mod:`flask_ext.limits`).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Any, Protocol

from .limits import InboundGuard, InboundLimits

__all__ = ["Transport", "open_transport", "GeventTransport", "SimpleTransport", "text_frame"]

logger = logging.getLogger(__name__)


class Transport(Protocol):
    mode: str

    def send(self, message: str) -> None: ...

    def receive(self, timeout: float | None = None) -> str | bytes | None: ...

    def close(self, code: int = 1000, reason: str = "") -> None: ...

    def wait_sent(self) -> None:
        """Wait until what the manager's outbox queued for this socket is written or given up
        (bounded by its grace period): the server closes the socket after the view returns."""
        ...


def text_frame(text: str) -> bytes:
    """The RFC 6455 frame a server sends for ``text`` (one final, unmasked text frame)."""
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def _close_payload(code: int, reason: str) -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]


def _shutdown(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:
        logger.debug("shutdown: %s", exc)


def _reset(sock: Any) -> None:
    """Shut ``sock`` down so that closing it resets the connection (SO_LINGER 0): what the
    kernel still holds for the peer is dropped, not kept for as long as the peer likes. A
    read or write blocked on it wakes with an error (gevent, and threads alike)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError as exc:
        logger.debug("SO_LINGER: %s", exc)
    _shutdown(sock)


class _Guarded:
    """What both transports share: the inbound limits' guard and its drop count, and the
    outbox the manager attached (:class:`dcm_sync.outbox.ControlSink`)."""

    _guard: InboundGuard
    _outbox: Any = None

    def wait_sent(self) -> None:
        if self._outbox is not None:
            self._outbox.wait_idle()

    @property
    def dropped(self) -> int:
        """Messages dropped over the rate limit (``DCM_RATE_LIMIT_ACTION = "drop"``)."""
        return self._guard.dropped


class GeventTransport(_Guarded):
    """``environ["wsgi.websocket"]`` from gevent-websocket's handler (pywsgi or gunicorn)."""

    mode = "gevent-websocket"

    def __init__(self, ws: Any, limits: InboundLimits | None = None) -> None:
        from gevent import socket as gsocket
        from geventwebsocket.exceptions import WebSocketError

        from .frames import FrameReader

        self._ws = ws
        self._guard = InboundGuard(limits or InboundLimits())
        self._reader = FrameReader(ws, self._guard, control=self._control)
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

    # -- dcm_sync.outbox.OutboxSocket: the manager's bounded outbox writes through these;
    #    callers serialize them per socket (the connection's send lock)
    encoding = "rfc6455-text"  # no compression: every such socket sends a text's frame alike

    def encode_text(self, text: str) -> bytes:
        return text_frame(text)

    def write_nowait(self, data: bytes | bytearray) -> int:
        if self._ws.closed:
            raise self._error("socket is already closed")
        if self._os_sock is None:
            return 0  # TLS or another socket type: the outbox's writer does it all
        try:
            return int(self._os_sock.send(data))
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise self._error(f"socket is dead: {exc}") from exc

    def write(self, data: bytes | bytearray) -> None:
        if self._ws.closed:
            raise self._error("socket is already closed")
        try:
            self._ws.raw_write(data)
        except OSError as exc:
            raise self._error(f"socket is dead: {exc}") from exc

    def attach(self, control: Any) -> None:
        self._outbox = control

    def _control(self, payload: bytes, opcode: int) -> None:
        """A control frame from the receiving side (a pong): through the outbox once there is
        one, so that it never lands inside a message a writer is still writing."""
        outbox = self._outbox
        if outbox is None:
            self._ws.send_frame(payload, opcode)
        else:
            outbox.put_control(struct.pack("!BB", 0x80 | opcode, len(payload)) + payload)

    def closing(self, code: int, reason: str) -> bytes:
        self._closed = True  # close() is now a no-op; receive() returns None
        header = struct.pack("!BB", 0x88, len(_close_payload(code, reason)))
        return header + _close_payload(code, reason)

    def finish(self) -> None:
        ws = self._ws
        sock = getattr(ws.raw_write, "__self__", None) if not ws.closed else None
        ws.closed = True
        if sock is not None:
            _shutdown(sock)

    def abort(self) -> None:
        self._closed = self._ws.closed = True
        sock = getattr(self._ws.raw_write, "__self__", None)
        if sock is not None:
            _reset(sock)

    def receive(self, timeout: float | None = None) -> str | bytes | None:
        from .frames import PeerGone

        if self._closed or self._ws.closed:
            return None
        try:
            return self._reader.read(timeout)  # frames read here: gevent-websocket's reader has no limits
        except (PeerGone, self._error):
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


def close_reply_code(payload: bytes) -> int:
    """The code that answers a client's close frame (RFC 6455 5.5.1, 7.1.6, 7.4): its own code;
    1000 when it gave none; 1002 for a 1-byte payload or a code that must not be sent; 1007
    when its reason is not valid UTF-8."""
    if not payload:
        return 1000
    if len(payload) == 1:
        return 1002
    code = int.from_bytes(payload[:2], "big")
    if not (1000 <= code <= 4999) or code in (1004, 1005, 1006, 1015) or 1016 <= code <= 2999:
        return 1002
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return 1007
    return code


def _close_fixed_class(base: type) -> type:
    if base not in _FIXED:
        def handle_close(self: Any, header: Any, payload: bytes) -> None:
            code = close_reply_code(payload)
            try:
                self.send_frame(_close_payload(code, ""), self.OPCODE_CLOSE)
            except Exception as exc:  # the peer may be gone already
                logger.debug("close reply not sent: %s", exc)
            self.closed = True

        _FIXED[base] = type("ClosingWebSocket", (base,), {"__slots__": (), "handle_close": handle_close})
    return _FIXED[base]


#: seconds to let simple-websocket's reader thread write its close frame and exit
READER_EXIT_WAIT = 1.0


class SimpleTransport(_Guarded):
    """simple-websocket's ``Server`` (Werkzeug's threaded server, gunicorn's gthread worker)."""

    def __init__(self, environ: dict[str, Any], limits: InboundLimits | None = None) -> None:
        import simple_websocket

        self._closed_exc = simple_websocket.ConnectionClosed
        self._guard = InboundGuard(limits or InboundLimits())
        self._ws = simple_websocket.Server(environ, max_message_size=self._guard.limits.max_message_bytes)
        self.mode = str(self._ws.mode)
        self._lock = threading.Lock()

    def send(self, message: str) -> None:
        self._ws.send(message)

    # -- dcm_sync.outbox.OutboxSocket (see GeventTransport)
    encoding = None  # wsproto may compress per socket (permessage-deflate)

    def encode_text(self, text: str) -> bytes:
        from wsproto.events import TextMessage

        if not self._ws.connected:
            raise self._closed_exc(1006, "socket is closed")
        return bytes(self._ws.ws.send(TextMessage(data=text)))

    def write_nowait(self, data: bytes | bytearray) -> int:
        try:
            return int(self._ws.sock.send(data, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return 0

    def write(self, data: bytes | bytearray) -> None:
        self._ws.sock.sendall(data)

    def attach(self, control: Any) -> None:
        self._outbox = control  # simple-websocket's reader thread answers pings itself

    def closing(self, code: int, reason: str) -> bytes:
        from wsproto.events import CloseConnection

        with self._lock:
            try:
                frame = bytes(self._ws.ws.send(CloseConnection(code=code, reason=reason)))
            except Exception as exc:  # wsproto refuses in a state where closing is done
                logger.debug("no close frame: %s", exc)
                frame = b""
            self._ws.connected = False
            return frame

    def finish(self) -> None:
        _shutdown(self._ws.sock)

    def abort(self) -> None:
        self._ws.connected = False
        _reset(self._ws.sock)

    def receive(self, timeout: float | None = None) -> str | bytes | None:
        # simple-websocket closes with 1009 itself (max_message_size), wsproto with 1007
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:  # ends with a message admitted, the socket closed, a violation or the deadline
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                msg = self._ws.receive(left)
            except self._closed_exc:
                self._await_reader()
                return None
            if msg is None:
                if not self._ws.connected:
                    self._await_reader()
                    return None
                raise TimeoutError(f"no message within {timeout}s")
            self._guard.check_kind(msg)
            if self._guard.admit():
                return msg  # type: ignore[no-any-return]

    def _await_reader(self) -> None:
        # simple-websocket's reader thread marks the socket closed before it writes its own close
        # frame (1009 over max_message_size, wsproto's 1007/1002): let it finish, so that the
        # socket is not shut down under it
        thread = getattr(self._ws, "thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(READER_EXIT_WAIT)

    def close(self, code: int = 1000, reason: str = "") -> None:
        with self._lock:
            if self._ws.connected:
                try:
                    self._ws.close(reason=code, message=reason)
                except self._closed_exc:
                    logger.debug("socket already closed by the peer")


def open_transport(environ: dict[str, Any], limits: InboundLimits | None = None) -> Transport:
    ws = environ.get("wsgi.websocket")
    if ws is not None:
        return GeventTransport(ws, limits)
    return SimpleTransport(environ, limits)
