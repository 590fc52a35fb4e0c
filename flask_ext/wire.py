"""The WebSocket wire under both transports: a client's frames decoded with the inbound limits
applied, and the server's frames encoded. No I/O here (sans-IO): a transport feeds
`Inbound` the bytes it read and asks it what they mean, so it is tested with plain bytes.

`Inbound` reads a client's frames (RFC 6455 5) as the bytes come, and applies the limits
of `flask_ext.limits` from each frame's header, before any of its payload:

- a frame that would take its message past ``max_message_bytes`` is refused (1009), however
  long it says it is; a fragmented message's size also counts the headers of its continuation
  frames, so a stream of empty fragments ends like a stream of bytes;
- a binary frame on a text-only route is refused (1003);
- each data frame and each ping costs a token of the rate limit: over it, 1008, or with the
  ``drop`` action the whole message is dropped and the ping left unanswered (both counted);
- unmasked frames, reserved bits (RSV1 is allowed on the first frame of a data message when
  permessage-deflate was agreed, `flask_ext.deflate`), unknown opcodes, long or fragmented
  control frames, and fragments out of order are refused (1002);
- a compressed message is inflated as it comes, never past ``max_message_bytes`` (1009), and
  refused when it is not deflate (1007).

Text is checked with the C UTF-8 decoder as its bytes come, in a first fragment too (1007).
A client's close frame is answered as RFC 6455 says (`close_reply`). Our close frames
carry our reasons.

Encoding is by hand, one ``struct.pack`` per frame: `text_frame` (`deflated_text_frame` on
sockets that agreed on compression) runs once per room delivery for every socket of the room
with the same encoding (the outbox's shared ``encoding``), `close_frame` and `pong_frame`
for the rest.

The frames are read by hand, not with wsproto's decoder: with it (its ``Connection``, the
limits in an extension's hooks) a chat server took in 8-14% fewer messages per second
(``python -m benchmarks.wire.inbound``), more than this project allows for it.
"""

from __future__ import annotations

import codecs
import enum
import logging
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from dcm_sync.messages import sendable_close_code

from .deflate import MIN_BYTES, Agreement, Inflater, TooBig, deflate
from .limits import (
    CLOSE_BAD_DEFLATE,
    CLOSE_INVALID_UTF8,
    CLOSE_PROTOCOL,
    CLOSE_TOO_BIG,
    InboundGuard,
    InboundLimits,
    Violation,
)

__all__ = ["Inbound", "Message", "Reply", "Closed", "WireEvent", "text_frame", "deflated_text_frame",
           "close_frame", "ping_frame", "pong_frame", "close_reply", "ENCODING"]

logger = logging.getLogger(__name__)

#: what every socket that sends plain RFC 6455 text frames (no compression) says it encodes:
#: the outbox then makes one frame of a room message for all of them
ENCODING = "rfc6455-text"

_MAX_CLOSE_REASON = 123  # bytes: a control frame's payload is at most 125, 2 of them the code


@dataclass(frozen=True)
class Message:
    """A whole message from the client: ``str`` for text, ``bytes`` for binary."""

    data: str | bytes


@dataclass(frozen=True)
class Reply:
    """A control frame the server owes the client now: the pong to a ping."""

    frame: bytes


@dataclass(frozen=True)
class Closed:
    """The client sent a close frame; the server answers with ``code`` and ``reason``."""

    code: int
    reason: str


WireEvent = Message | Reply | Closed


# ---------------------------------------------------------------------------- encoding


def text_frame(text: str) -> bytes:
    """The frame a server sends for ``text``: one final, unmasked text frame."""
    return _frame(0x81, text.encode("utf-8"))


def deflated_text_frame(text: str, agreement: Agreement) -> bytes:
    """The frame a server sends for ``text`` on a socket that agreed on permessage-deflate:
    compressed (RSV1 set) unless it is shorter than `flask_ext.deflate.MIN_BYTES`."""
    payload = text.encode("utf-8")
    if len(payload) < MIN_BYTES:
        return _frame(0x81, payload)
    return _frame(0xC1, deflate(payload, agreement.bits))


def _frame(first: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A server's close frame; ``reason`` is cut to 123 bytes on a character boundary."""
    text = reason.encode("utf-8")
    if len(text) > _MAX_CLOSE_REASON:
        text = text[:_MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!BBH", 0x88, 2 + len(text), code) + text


def ping_frame(payload: bytes = b"") -> bytes:
    """A server's ping (the client must answer with a pong of the same payload)."""
    return struct.pack("!BB", 0x89, len(payload)) + payload


def pong_frame(payload: bytes) -> bytes:
    """The pong that answers a ping of ``payload`` (at most 125 bytes: a ping's limit)."""
    return struct.pack("!BB", 0x8A, len(payload)) + payload


def close_reply(payload: bytes) -> tuple[int, str]:
    """The code and reason that answer a client's close frame of ``payload`` (RFC 6455 5.5.1,
    7.1.6, 7.4): its own code (no reason), 1000 when it gave none; 1002 for a 1-byte payload or
    a code that must not be sent; 1007 when its reason is not UTF-8."""
    if not payload:
        return 1000, ""
    if len(payload) == 1:
        return CLOSE_PROTOCOL
    code = int.from_bytes(payload[:2], "big")
    if not sendable_close_code(code):
        return CLOSE_PROTOCOL
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return CLOSE_INVALID_UTF8
    return code, ""


# ---------------------------------------------------------------------------- decoding

_HEADER, _PAYLOAD = 0, 1  # what Inbound reads next: a frame's header, or its payload


class _More(enum.Enum):
    BYTES = "more bytes needed"


_MORE = _More.BYTES
_TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def unmask(data: bytes, key: bytes) -> bytes:
    """``data`` XOR the 4-byte masking ``key`` repeated (RFC 6455 5.3)."""
    n = len(data)
    if not n:
        return data
    return (int.from_bytes(data, "little")
            ^ int.from_bytes((key * (n // 4 + 1))[:n], "little")).to_bytes(n, "little")


class Inbound:
    """A client's side of one WebSocket connection, from the bytes it sent to what they mean.

    ``feed(data)`` the bytes read from the socket, then call ``next_event()`` until it returns
    None (more bytes needed): a `Message`, a `Reply` to send (a pong), or
    `Closed` (the client closed; nothing follows). `Violation`
    when the client broke a limit: the caller closes with its code and reason, and every later
    call raises it again. A frame's payload is taken as it arrives: a text's UTF-8 is checked
    piece by piece, and nothing waits for the rest of a long frame but its own bytes.
    """

    def __init__(self, limits: InboundLimits, deflate: bool = False) -> None:
        self._guard = InboundGuard(limits)
        self._deflate = deflate    # permessage-deflate agreed: RSV1 marks a compressed message
        self._inflater: Inflater | None = None  # the message being read is compressed
        self._max = limits.max_message_bytes
        self._buf = b""            # bytes fed and not read yet: from _pos on
        self._pos = 0
        self._state = _HEADER
        # the frame whose payload is being read
        self._fin = False
        self._key = b""            # its masking key, turned to where the payload is
        self._left = 0             # its payload bytes still to come
        # the message being read (_op 0: none)
        self._op = 0
        self._size = 0             # its payload, and the headers of its continuation frames
        self._dropping = False     # it goes (drop action): its frames are still read
        self._decoder: codecs.IncrementalDecoder | None = None  # text in more than one piece
        self._parts: list[Any] = []
        self._closed = False
        self._failed: Violation | None = None

    @property
    def dropped(self) -> int:
        """Data frames and pings over the rate limit (``drop`` action)."""
        return self._guard.dropped

    @property
    def idle(self) -> bool:
        """Nothing of a message or frame has come that is not whole: a pause here leaves the
        stream intact (a pause elsewhere is a message begun and not finished)."""
        return not self._op and self._state == _HEADER and self._pos == len(self._buf)

    def feed(self, data: bytes) -> None:
        if self._closed or self._failed is not None:
            return
        if self._pos < len(self._buf):  # the start of a header or a control frame: a few bytes
            self._buf = self._buf[self._pos:] + data
        else:
            self._buf = bytes(data)
        self._pos = 0

    def next_event(self) -> WireEvent | None:
        if self._failed is not None:
            raise self._failed
        try:
            while not self._closed:
                event = self._header() if self._state == _HEADER else self._payload()
                if event is _MORE:
                    return None
                if event is not None:
                    return event
            return None
        except Violation as exc:
            self._failed = exc
            raise

    def _header(self) -> WireEvent | _More | None:
        """Read the next frame's header (or wait for the rest of it): a control frame whole, a
        data frame's header with the limits applied."""
        buf, pos = self._buf, self._pos
        have = len(buf) - pos
        if have < 2:
            return _MORE
        first, second = buf[pos], buf[pos + 1]
        if first & 0x70 and (first & 0x70 != 0x40 or not self._deflate):
            raise Violation(CLOSE_PROTOCOL, "reserved bits set (no extension agreed on them)")
        if not second & 0x80:
            raise Violation(CLOSE_PROTOCOL, "client frames must be masked")
        fin, op, length, head = first & 0x80, first & 0x0F, second & 0x7F, 6
        if length == 126:
            if have < 4:
                return _MORE
            length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 8
        elif length == 127:
            if have < 10:
                return _MORE
            length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 14
        compressed = first & 0x40
        if op >= 0x8:
            if compressed:
                raise Violation(CLOSE_PROTOCOL, "compressed control frame")
            if not fin or length > 125:
                raise Violation(CLOSE_PROTOCOL, "control frames are short and unfragmented")
            if op not in (_CLOSE, _PING, _PONG):
                raise Violation(CLOSE_PROTOCOL, f"unknown opcode {op}")
            if have < head + length:
                return _MORE
            self._pos = pos + head + length
            key = buf[pos + head - 4:pos + head]
            return self._control(op, unmask(buf[pos + head:pos + head + length], key))
        # a data frame: refused from its header, before any of its payload is read
        if op == 0:
            if not self._op:
                raise Violation(CLOSE_PROTOCOL, "continuation frame without a message")
            if compressed:
                raise Violation(CLOSE_PROTOCOL, "RSV1 on a continuation frame")
            size = self._size + head + length  # its header counts: empty fragments add up
        elif op in (_TEXT, _BINARY):
            if self._op:
                raise Violation(CLOSE_PROTOCOL, "new message inside a fragmented one")
            self._guard.check_kind(b"" if op == _BINARY else "")
            size = length
        else:
            raise Violation(CLOSE_PROTOCOL, f"unknown opcode {op}")
        if size > self._max:
            raise Violation(CLOSE_TOO_BIG)
        if have < head:
            return _MORE  # the masking key: what was checked above is checked again then
        if op:
            self._op = op
            if compressed:
                self._inflater = Inflater(self._max)
        self._size = size
        if not self._guard.admit():
            self._dropping = True  # the whole message goes, but its frames are still read
        self._fin, self._left, self._key = bool(fin), length, buf[pos + head - 4:pos + head]
        self._pos = pos + head
        self._state = _PAYLOAD
        return None

    def _payload(self) -> Message | _More | None:
        """Take what has come of the frame's payload (or wait for some); the message when the
        frame ends one."""
        buf, pos, left = self._buf, self._pos, self._left
        take = min(left, len(buf) - pos)
        if not take and left:
            return _MORE
        self._pos, self._left = pos + take, left - take
        ends = self._fin and take == left  # the message's last byte is here
        if not self._dropping and (take or ends):  # empty fragments add nothing to keep
            key = self._key
            data = unmask(buf[pos:pos + take], key)
            if take & 3:
                self._key = key[take & 3:] + key[:take & 3]
            if self._inflater is not None:
                data = self._inflate(data, ends)
            if self._op == _TEXT:
                self._text(data, ends)
            else:
                self._parts.append(data)
        if take < left:
            return None
        self._state = _HEADER
        if not self._fin:
            return None
        parts, op, dropped = self._parts, self._op, self._dropping
        self._parts, self._op, self._size, self._dropping, self._decoder = [], 0, 0, False, None
        self._inflater = None
        if dropped:
            return None
        if op == _BINARY:
            return Message(parts[0] if len(parts) == 1 else b"".join(parts))
        return Message(parts[0] if len(parts) == 1 else "".join(parts))

    def _inflate(self, data: bytes, ends: bool) -> bytes:
        """A piece of a compressed message, inflated: 1009 past the message limit, 1007 when it
        is not deflate."""
        assert self._inflater is not None
        try:
            return self._inflater.feed(data, ends)
        except TooBig:
            raise Violation(CLOSE_TOO_BIG) from None
        except zlib.error as exc:
            raise Violation(CLOSE_BAD_DEFLATE, str(exc)) from None

    def _text(self, data: bytes, ends: bool) -> None:
        """Decode a piece of text: refused as soon as its bytes cannot be UTF-8."""
        try:
            if ends and self._decoder is None:  # the whole message in one piece
                self._parts.append(data.decode("utf-8"))
                return
            if self._decoder is None:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
            self._parts.append(self._decoder.decode(data, ends))
        except UnicodeDecodeError as exc:
            raise Violation(CLOSE_INVALID_UTF8, str(exc)) from None

    def _control(self, op: int, payload: bytes) -> WireEvent | None:
        if op == _PING:
            return Reply(pong_frame(payload)) if self._guard.admit() else None
        if op == _CLOSE:
            self._closed = True
            return Closed(*close_reply(payload))
        return None  # a pong
