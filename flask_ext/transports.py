"""The socket under a connection, behind one interface, on every server.

Both transports read and write the connection's socket themselves, through
`flask_ext.wire` (frames in and out, the inbound limits); they differ in how they wait:

- `GeventTransport`: ``environ["wsgi.websocket"]`` from gevent-websocket's handler
  (gevent.pywsgi with `flask_ext.handler.DCMWebSocketHandler`, gunicorn's gevent
  workers), which did the handshake;
- `ThreadedTransport`: Werkzeug's threaded server and gunicorn's ``gthread`` worker;
  the handshake is `flask_ext.handshake.accept`.

``receive(timeout)`` returns ``str | bytes``, ``None`` once the peer is gone or has closed,
and raises the builtin ``TimeoutError`` when ``timeout`` seconds pass without a message, and
`flask_ext.limits.Violation` when the client broke an inbound limit (the caller closes
the socket with its code; see `flask_ext.limits`), including a message begun and not
finished within ``timeout``. Pongs go out through the outbox the manager attached, between
messages. A client's close frame is answered by the close frame the socket is closed with.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Hashable
from typing import Any, Protocol

from dcm_sync.outbox import ControlSink

from .deflate import ENVIRON_KEY, Agreement
from .handshake import accept, server_socket
from .limits import CLOSE_INCOMPLETE, InboundLimits, Violation
from .wire import (
    ENCODING,
    Closed,
    Inbound,
    Message,
    close_frame,
    deflated_text_frame,
    ping_frame,
    text_frame,
)

__all__ = ["Transport", "open_transport", "SocketTransport", "GeventTransport", "ThreadedTransport",
           "SocketClosed"]

logger = logging.getLogger(__name__)

#: the most one read takes off a socket
READ_BYTES = 64 * 1024


class Transport(Protocol):
    mode: str

    def send(self, message: str) -> None: ...

    def receive(self, timeout: float | None = None) -> str | bytes | None: ...

    def close(self, code: int = 1000, reason: str = "") -> None: ...

    def wait_sent(self) -> None:
        """Wait until what the manager's outbox queued for this socket is written or given up
        (bounded by its grace period): the server closes the socket after the view returns."""
        ...

    @property
    def dropped(self) -> int:
        """Messages dropped over the rate limit (``DCM_RATE_LIMIT_ACTION = "drop"``)."""
        ...

    @property
    def peer_close_code(self) -> int | None:
        """The code the client closed with; None if it sent no close frame."""
        ...


class SocketClosed(OSError):
    """A write to a socket that was closed here, or whose peer is gone."""


class _Socket(Protocol):
    """How a transport waits on its socket: the part that differs between servers."""

    sock: Any

    def read(self, timeout: float | None) -> bytes:
        """The next bytes (b"" at the end of the stream); ``TimeoutError`` after ``timeout``."""
        ...

    def send_nowait(self, data: bytes | bytearray) -> int:
        """Write what fits now, without waiting; how many bytes (0 where it cannot try)."""
        ...


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


class SocketTransport:
    """One client's WebSocket after the handshake: the extension's `Transport` and the
    manager's `dcm_sync.outbox.OutboxSocket`. The outbox serializes writes (the
    connection's send lock); ``receive`` runs in the view's own thread or greenlet."""

    mode = ""
    #: sockets with equal encodings make the same frame of a text (one per room delivery): all
    #: those without compression, and those that agreed on the same deflate window
    encoding: Hashable = ENCODING

    def __init__(self, io: _Socket, limits: InboundLimits | None = None,
                 deflate: Agreement | None = None) -> None:
        self._io = io
        self._inbound = Inbound(limits or InboundLimits(), deflate is not None)
        self.deflate = deflate
        if deflate is not None:
            self.encoding = deflate.encoding
        self._outbox: ControlSink | None = None
        self._lock = threading.Lock()
        self._close_made = False   # our close frame is made: receive() returns None from now on
        self._answer: Closed | None = None  # the client closed: our close frame answers it
        self._down = False         # closed or shut down here: writes fail
        self._ended = False        # the peer's stream ended
        #: dcm_sync.outbox.KeepaliveSocket: when the client last sent anything (a pong too)
        self.last_received = time.monotonic()

    @property
    def dropped(self) -> int:
        """Data frames and pings dropped over the rate limit (``DCM_RATE_LIMIT_ACTION = "drop"``)."""
        return self._inbound.dropped

    @property
    def peer_close_code(self) -> int | None:
        """The code the client closed with (as answered); None if it sent no close frame."""
        return None if self._answer is None else self._answer.code

    # -- reading (the view's thread or greenlet)
    def receive(self, timeout: float | None = None) -> str | bytes | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        inbound = self._inbound
        while True:  # ends with a message, the peer gone or closing, a violation or the deadline
            if self._close_made or self._answer is not None or self._ended:
                return None
            event = inbound.next_event()
            if event is None:
                self._read(deadline, timeout)
            elif isinstance(event, Message):
                return event.data
            elif isinstance(event, Closed):
                self._answer = event
                if self._outbox is None:
                    self.close()  # nothing else writes to it: answer now
                return None
            else:
                self._control(event.frame)

    def _read(self, deadline: float | None, timeout: float | None) -> None:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            data = self._io.read(left)
        except TimeoutError:
            if self._inbound.idle:  # nothing of the next message was read: the stream is intact
                raise TimeoutError(f"no message within {timeout}s") from None
            raise Violation(CLOSE_INCOMPLETE) from None
        except (OSError, ValueError) as exc:  # ValueError: its file was closed under it
            logger.debug("read: %s", exc)
            data = b""
        if not data:
            self._ended = True
        else:
            self.last_received = time.monotonic()
            self._inbound.feed(data)

    def _control(self, frame: bytes) -> None:
        """A control frame from the reading side (a pong): through the outbox once there is
        one, so that it never lands inside a message a writer is still writing."""
        outbox = self._outbox
        if outbox is not None:
            outbox.put_control(frame)
            return
        try:
            self.write(frame)
        except OSError as exc:
            logger.debug("pong not sent: %s", exc)

    # -- dcm_sync.outbox.OutboxSocket: the manager's bounded outbox writes through these;
    #    callers serialize them per socket (the connection's send lock)
    def encode_text(self, text: str) -> bytes:
        if self.deflate is None:
            return text_frame(text)
        return deflated_text_frame(text, self.deflate)

    def attach(self, control: ControlSink) -> None:
        self._outbox = control

    def keepalive(self) -> bytes:
        """dcm_sync.outbox.KeepaliveSocket: the manager's ping; the pong is read by
        `receive`, so a view that reads (as every view does) answers for its client."""
        return ping_frame()

    def write_nowait(self, data: bytes | bytearray) -> int:
        if self._down:
            raise SocketClosed("socket is already closed")
        try:
            return self._io.send_nowait(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise SocketClosed(f"socket is dead: {exc}") from exc

    def write(self, data: bytes | bytearray) -> None:
        if self._down:
            raise SocketClosed("socket is already closed")
        try:
            self._io.sock.sendall(data)
        except OSError as exc:
            raise SocketClosed(f"socket is dead: {exc}") from exc

    def closing(self, code: int, reason: str) -> bytes:
        return self._close_frame(code, reason)

    def finish(self) -> None:
        self._down = True
        _shutdown(self._io.sock)

    def abort(self) -> None:
        self._close_made = self._down = True
        _reset(self._io.sock)

    def _close_frame(self, code: int, reason: str) -> bytes:
        """The close frame, once (b"" after): the answer to the client's, if it closed first."""
        with self._lock:
            if self._close_made:
                return b""
            self._close_made = True
        answer = self._answer
        return close_frame(code, reason) if answer is None else close_frame(answer.code, answer.reason)

    # -- the rest of Transport
    def send(self, message: str) -> None:
        self.write(self.encode_text(message))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Write the close frame now (a socket no outbox writes to); writes fail afterwards.
        The server closes the connection once the view returns."""
        frame = self._close_frame(code, reason)
        if not frame or self._down:
            return
        try:
            self.write(frame)
        except OSError as exc:
            logger.debug("close frame not sent: %s", exc)
        finally:
            self._down = True

    def wait_sent(self) -> None:
        if self._outbox is not None:
            self._outbox.wait_idle()


class _GeventSocket:
    """A connection under gevent: reads wait cooperatively, under a ``gevent.Timeout``."""

    def __init__(self, sock: Any, rfile: Any) -> None:
        from gevent import socket as gsocket

        self.sock = sock
        self._first = _take_over(sock, rfile)  # what came with the handshake: read first
        # a plain (not TLS) gevent socket: a frame is first written with one send that gives
        # up at once when the socket's buffer is full; what does not fit goes through sendall
        self._nowait = type(sock) is gsocket.socket

    def read(self, timeout: float | None) -> bytes:
        import gevent

        if self._first:
            data, self._first = self._first, b""
            return data
        timer = None if timeout is None else gevent.Timeout(timeout)
        if timer is not None:
            timer.start()
        try:
            # gevent's recv waits until the socket is readable, then reads: an idle client
            # holds no read buffer (a recv that finds nothing frees its buffer before it waits)
            return self.sock.recv(READ_BYTES)  # type: ignore[no-any-return]
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise TimeoutError() from None
        finally:
            if timer is not None:
                timer.close()

    def send_nowait(self, data: bytes | bytearray) -> int:
        if not self._nowait:
            return 0  # TLS: the outbox's writer does it all
        return int(self.sock.send(data, 0, timeout=0.0))


def _take_over(sock: Any, rfile: Any) -> bytes:
    """Take what ``rfile`` (the handshake's buffered reader over ``sock``) holds, without
    waiting, and close it: frames a client sent right after its handshake may be in its
    buffer. Closing frees the buffer for the socket's life; pywsgi then reads no further
    request from the connection once the view returns (an upgraded connection has none)."""
    timeout = sock.gettimeout()
    sock.settimeout(0.0)  # a read that would wait fails instead (so no other greenlet runs)
    try:
        # the buffered bytes if any (a reader's buffer is far smaller than READ_BYTES), else
        # what the socket has now
        return bytes(rfile.read1(READ_BYTES))
    except (OSError, ValueError) as exc:  # TLS: nothing to read now; ValueError: closed
        logger.debug("nothing taken from the handshake's reader: %s", exc)
        return b""
    finally:
        sock.settimeout(timeout)
        rfile.close()


class GeventTransport(SocketTransport):
    """``environ["wsgi.websocket"]``: gevent-websocket's ``WebSocket``, after its handler's
    handshake (gevent.pywsgi, gunicorn's gevent workers)."""

    mode = "gevent-websocket"

    def __init__(self, ws: Any, limits: InboundLimits | None = None) -> None:
        # what the handler agreed on in its answer (flask_ext.handler.DCMWebSocketHandler)
        deflate = ws.environ.get(ENVIRON_KEY)
        # gevent-websocket hands the connection over here: its WebSocket's ``handler`` (the
        # pywsgi handler that did the handshake) holds the socket and the read buffer, which
        # may already hold the client's first frames. From now on this transport reads and
        # writes them; the WebSocket is marked closed so that gevent-websocket writes nothing
        # more (its handler would send a close frame of its own after the view).
        handler = ws.handler
        super().__init__(_GeventSocket(handler.socket, handler.rfile), limits, deflate)
        ws.closed = True


class _ThreadSocket:
    """A blocking socket read by the view's thread: ``poll`` waits for data, so that the
    socket's own timeout (shared with writers in other threads) is never touched."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def read(self, timeout: float | None) -> bytes:
        # a shutdown from another thread (finish, abort) wakes the poll: recv then returns b""
        if not self._poll.poll(None if timeout is None else timeout * 1000):
            raise TimeoutError()
        return self.sock.recv(READ_BYTES)

    def send_nowait(self, data: bytes | bytearray) -> int:
        return self.sock.send(data, socket.MSG_DONTWAIT)


class ThreadedTransport(SocketTransport):
    """Werkzeug's threaded server and gunicorn's ``gthread`` worker: the handshake is done here
    (`flask_ext.handshake.accept`); `HandshakeError` if the
    request is not a valid upgrade."""

    def __init__(self, environ: dict[str, Any], limits: InboundLimits | None = None,
                 compression: bool = False) -> None:
        sock, self.mode = server_socket(environ)
        deflate = accept(environ, sock, compression)
        super().__init__(_ThreadSocket(sock), limits, deflate)


def open_transport(environ: dict[str, Any], limits: InboundLimits | None = None,
                   compression: bool = False) -> Transport:
    """The transport of the upgrade in ``environ``. ``compression``: agree on permessage-deflate
    when the client offers it (the threaded servers' handshake; gevent-websocket's is done
    by `flask_ext.handler.DCMWebSocketHandler`, which asked the app first)."""
    ws = environ.get("wsgi.websocket")
    if ws is not None:
        return GeventTransport(ws, limits)
    return ThreadedTransport(environ, limits, compression)
