"""A client's messages read off gevent-websocket's ``WebSocket`` with the inbound limits applied.

gevent-websocket 0.10.1's ``receive()`` reads a frame's whole payload, however long its header
says it is, unmasks it one byte at a time in Python, and closes with an empty close frame (its
``close(code)`` drops the code) on invalid UTF-8. :class:`FrameReader` reads the frames itself:
the announced length is checked against ``max_message_bytes`` before any payload is read, a
binary frame on a text-only route is refused from its header, text is checked with the C UTF-8
decoder as it arrives, and every data frame and ping costs a token of the rate limit. A
fragmented message's size is its payload plus the headers of its continuation frames, so that
empty fragments cannot go on for ever when the rate limit is off.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from typing import Any

import gevent

from .limits import (
    CLOSE_INCOMPLETE,
    CLOSE_INVALID_UTF8,
    CLOSE_PROTOCOL,
    CLOSE_TOO_BIG,
    InboundGuard,
    Violation,
)

__all__ = ["FrameReader", "PeerGone"]

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class PeerGone(Exception):
    """The client went away (end of stream or a socket error) or sent a close frame."""


def unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FrameReader:
    def __init__(self, ws: Any, guard: InboundGuard,
                 control: Callable[[bytes, int], None] | None = None) -> None:
        self._ws = ws
        self._guard = guard
        #: how a pong goes out (the transport's, through the socket's outbox)
        self._control = control or ws.send_frame
        rfile = getattr(getattr(ws, "handler", None), "rfile", None)
        self._peek = getattr(rfile, "peek", None)
        self._idle = True

    def read(self, timeout: float | None = None) -> str | bytes:
        """The next message. ``TimeoutError`` if none starts within ``timeout`` seconds;
        :class:`Violation` if the client broke a rule (including not finishing a message it
        started within ``timeout``); :class:`PeerGone` once the client has gone."""
        if timeout is None:
            return self._message()
        timer = gevent.Timeout(timeout)
        timer.start()
        try:
            return self._message()
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            if self._idle:  # nothing of the next message was read: the stream is intact
                raise TimeoutError(f"no message within {timeout}s") from None
            raise Violation(CLOSE_INCOMPLETE) from None
        finally:
            timer.close()

    def _wait_for_data(self) -> None:
        if self._peek is None:
            return
        self._idle = True
        try:
            if not self._peek(1):
                raise PeerGone("end of stream")
        except OSError as exc:
            raise PeerGone(str(exc)) from exc
        self._idle = False

    def _exactly(self, n: int) -> bytes:
        try:
            data = self._ws.raw_read(n)
        except (OSError, TypeError, AttributeError) as exc:  # TypeError/AttributeError: closed under us
            raise PeerGone(str(exc)) from exc
        if len(data) != n:
            raise PeerGone("end of stream")
        return bytes(data)

    def _message(self) -> str | bytes:
        limits, guard, ws = self._guard.limits, self._guard, self._ws
        opcode = 0           # of the message in progress (0: none)
        parts: list[Any] = []
        size = 0
        drop = False
        decoder: Any = None
        while True:  # one frame per turn; ends with a message, a violation or the peer gone
            if not opcode:
                self._wait_for_data()
            first, second = self._exactly(2)
            fin, op, length = first & 0x80, first & 0x0F, second & 0x7F
            if first & 0x70:
                raise Violation(CLOSE_PROTOCOL, "reserved bits set (no extension was agreed)")
            if not second & 0x80:
                raise Violation(CLOSE_PROTOCOL, "client frames must be masked")
            header = 6  # with the mask
            if length == 126:
                length, header = struct.unpack("!H", self._exactly(2))[0], 8
            elif length == 127:
                length, header = struct.unpack("!Q", self._exactly(8))[0], 14
            if op >= 0x8:
                if not fin or length > 125:
                    raise Violation(CLOSE_PROTOCOL, "control frames are short and unfragmented")
                mask = self._exactly(4)
                payload = unmask(self._exactly(length), mask)
                if op == CLOSE:
                    ws.handle_close(None, payload)
                    raise PeerGone("close frame")
                if op == PING:
                    if guard.admit():
                        self._control(payload, PONG)
                elif op != PONG:
                    raise Violation(CLOSE_PROTOCOL, f"unknown opcode {op}")
                continue
            if op == CONTINUATION:
                if not opcode:
                    raise Violation(CLOSE_PROTOCOL, "continuation frame without a message")
                # its header counts toward the message's size: a stream of empty fragments
                # (rate limit off) is bounded like a stream of bytes
                size += header
            elif op in (TEXT, BINARY):
                if opcode:
                    raise Violation(CLOSE_PROTOCOL, "new message inside a fragmented one")
                opcode = op
                guard.check_kind(b"" if op == BINARY else "")
                decoder = codecs.getincrementaldecoder("utf-8")() if op == TEXT else None
            else:
                raise Violation(CLOSE_PROTOCOL, f"unknown opcode {op}")
            size += length
            if size > limits.max_message_bytes:
                raise Violation(CLOSE_TOO_BIG)
            if not guard.admit():
                drop = True  # the whole message goes, but its frames are still read
            mask = self._exactly(4)
            payload = self._exactly(length)
            if not drop and (payload or fin):  # empty fragments add nothing to keep
                payload = unmask(payload, mask)
                if decoder is not None:
                    try:
                        parts.append(decoder.decode(payload, final=bool(fin)))
                    except UnicodeDecodeError as exc:
                        raise Violation(CLOSE_INVALID_UTF8) from exc
                else:
                    parts.append(payload)
            if fin:
                if not drop:
                    return "".join(parts) if opcode == TEXT else b"".join(parts)
                opcode, parts, size, drop, decoder = 0, [], 0, False, None
