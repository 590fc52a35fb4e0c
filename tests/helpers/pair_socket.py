"""The server end of a real socket pair with the outbox interface, for the outbox and manager
tests; the test reads the client end as WebSocket frames."""

from __future__ import annotations

from testkit.closing import closed_after_test
from testkit.frames import parse


class PairSocket:
    """The server end of a real socket pair speaking WebSocket frames, with the outbox
    interface (:class:`dcm_sync.outbox.OutboxSocket`); the test reads the other end with
    :meth:`read_frames`. Sockets made with ``shares_frames`` encode alike (one ``encoding``)."""

    def __init__(self, shares_frames: bool = True) -> None:
        import socket as _socket

        from flask_ext.wire import ENCODING, close_frame, text_frame

        self.server, self.client = map(closed_after_test, _socket.socketpair())
        self.encoding = ENCODING if shares_frames else None
        self.control: object = None
        self._frame, self._close_frame = text_frame, close_frame
        self.aborted: tuple[int, str] | None = None
        self.reset = False  # abort() was called: the connection was dropped
        self.writes = 0  # blocking writes (the outbox's writer): one system call each
        self.sends = 0  # non-blocking writes: one system call each
        self._buf = b""

    # WebSocketLike
    def send(self, message: str) -> None:
        self.server.sendall(self._frame(message))

    def close(self) -> None:
        self.server.close()

    # OutboxSocket
    def attach(self, control: object) -> None:
        self.control = control

    def encode_text(self, text: str) -> bytes:
        return self._frame(text)

    def write_nowait(self, data: bytes) -> int:
        import socket as _socket

        self.sends += 1
        try:
            return self.server.send(data, _socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.server.sendall(data)

    def closing(self, code: int, reason: str) -> bytes:
        self.aborted = (code, reason)
        return self._close_frame(code, reason)

    def finish(self) -> None:
        import socket as _socket

        try:
            self.server.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass

    def abort(self) -> None:
        self.reset = True
        self.finish()

    # the client side
    def read_frames(self, timeout: float = 5.0) -> list[tuple[int, bytes]]:
        """Every whole frame that arrives until the server side shuts down or ``timeout``
        passes with nothing new: ``(opcode, payload)`` pairs."""
        self.client.settimeout(timeout)
        while True:
            try:
                chunk = self.client.recv(1 << 20)
            except TimeoutError:
                break
            if not chunk:
                break
            self._buf += chunk
        frames, used = parse(self._buf)
        self._buf = self._buf[used:]
        return frames
