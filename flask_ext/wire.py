"""The WebSocket wire under both transports: a client's frames decoded with the inbound limits
applied, and the server's frames encoded. No I/O here (sans-IO): a transport feeds
:class:`Inbound` the bytes it read and asks it what they mean, so it is tested with plain bytes.

Decoding is wsproto's frame-level :class:`wsproto.connection.Connection` (server side, begun
after the handshake). The limits sit in a wsproto extension that is on without being
negotiated: it is never offered in a handshake and claims no reserved bit, so a frame with one
is still refused. Its header hook sees each frame's announced length before any of its payload:

- a frame that would take its message past ``max_message_bytes`` is refused from its header
  (1009), however long it says it is; a fragmented message's size also counts the headers of
  its continuation frames, so a stream of empty fragments ends like a stream of bytes;
- a binary frame on a text-only route is refused from its header (1003);
- each data frame and each ping costs a token of the rate limit: over it, 1008, or with the
  ``drop`` action the whole message is dropped and the ping left unanswered (both counted).

wsproto refuses unmasked, reserved-bit and malformed frames (1002), and text that is not UTF-8
as soon as its bytes arrive, in a first fragment too (1007; the C decoder, incrementally).
A client's close frame is answered as RFC 6455 says (:func:`close_reply`). Our close frames
carry our reasons (:mod:`flask_ext.limits`).

Encoding is by hand, one ``struct.pack`` per frame: :func:`text_frame` runs once per room
delivery for every socket of the room (the outbox's shared ``encoding``), :func:`close_frame`
and :func:`pong_frame` for the rest.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from .limits import (
    CLOSE_INVALID_UTF8,
    CLOSE_PROTOCOL,
    CLOSE_TOO_BIG,
    InboundGuard,
    InboundLimits,
    Violation,
)

__all__ = ["Inbound", "Message", "Reply", "Closed", "WireEvent", "text_frame", "close_frame",
           "pong_frame", "close_reply", "ENCODING"]

logger = logging.getLogger(__name__)

#: what every socket that sends plain RFC 6455 text frames (no compression) says it encodes:
#: the outbox then makes one frame of a room message for all of them
ENCODING = "rfc6455-text"

_NO_RSV = RsvBits(False, False, False)
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
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A server's close frame; ``reason`` is cut to 123 bytes on a character boundary."""
    text = reason.encode("utf-8")
    if len(text) > _MAX_CLOSE_REASON:
        text = text[:_MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!BBH", 0x88, 2 + len(text), code) + text


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
    if not (1000 <= code <= 4999) or code in (1004, 1005, 1006, 1015) or 1016 <= code <= 2999:
        return CLOSE_PROTOCOL
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return CLOSE_INVALID_UTF8
    return code, ""


def frame_bytes(payload_length: int) -> int:
    """A masked client frame's size on the wire: header, masking key and payload. wsproto
    refuses a length not written in its shortest form, so the length alone tells the header."""
    if payload_length < 126:
        return 6 + payload_length
    if payload_length < 65536:
        return 8 + payload_length
    return 14 + payload_length


# ---------------------------------------------------------------------------- decoding


class _Limits(Extension):
    """The inbound limits, from wsproto's extension hooks (see the module docstring). It also
    notes what :class:`Inbound` needs to know of the frame being read: its opcode, its size on
    the wire and, for a close frame, its payload."""

    name = "dcm-inbound-limits"

    def __init__(self, limits: InboundLimits) -> None:
        self.guard = InboundGuard(limits)
        self.size = 0              # of the message being read, continuation headers included
        self.dropping = False      # the message being read goes (drop action)
        self.answer_ping = True    # the last ping had its token
        self.opcode: Opcode | None = None   # of the frame being read
        self.frame_bytes = 0       # the frame being read, on the wire
        self.close_payload: bytes | None = None
        self.violation: Violation | None = None
        self.seen = False          # the frame being read was accounted for

    def enabled(self) -> bool:
        return True  # on for every connection, without a handshake

    def offer(self) -> bool:
        return False  # never offered: nothing to negotiate

    def frame_inbound_header(self, proto: FrameDecoder | FrameProtocol, opcode: Opcode,
                             rsv: RsvBits, payload_length: int) -> CloseReason | RsvBits:
        if self.seen:  # wsproto parses a header again when its masking key had not all come
            return _NO_RSV
        self.seen = True
        self.opcode = opcode
        self.frame_bytes = frame_bytes(payload_length)
        try:
            self._account(opcode, payload_length)
        except Violation as exc:  # wsproto stops with this code; Inbound raises exc itself
            self.violation = exc
            return CloseReason(exc.code)
        return _NO_RSV

    def _account(self, opcode: Opcode, length: int) -> None:
        guard = self.guard
        if opcode is Opcode.PING:
            self.answer_ping = guard.admit()
            return
        if opcode.iscontrol():
            return  # a pong or a close frame costs nothing
        if opcode is Opcode.CONTINUATION:
            size = self.size + self.frame_bytes  # its header counts: empty fragments add up
        else:
            guard.check_kind(b"" if opcode is Opcode.BINARY else "")
            size = length
        if size > guard.limits.max_message_bytes:
            raise Violation(CLOSE_TOO_BIG)
        self.size = size
        if not guard.admit():
            self.dropping = True  # the whole message goes, but its frames are still read

    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol,
                                   data: bytes) -> bytes | CloseReason:
        if self.opcode is Opcode.CLOSE:  # a control frame comes in one piece
            self.close_payload = data
        return data

    def message_done(self) -> bool:
        """The message being read has ended: whether it was dropped."""
        dropped = self.dropping
        self.size, self.dropping = 0, False
        return dropped


class Inbound:
    """A client's side of one WebSocket connection, from the bytes it sent to what they mean.

    ``feed(data)`` the bytes read from the socket, then call ``next_event()`` until it returns
    None (more bytes needed): a :class:`Message`, a :class:`Reply` to send (a pong), or
    :class:`Closed` (the client closed; nothing follows). :class:`~flask_ext.limits.Violation`
    when the client broke a limit: the caller closes with its code and reason, and every later
    call raises it again.
    """

    def __init__(self, limits: InboundLimits) -> None:
        self._limits = _Limits(limits)
        self._conn = Connection(ConnectionType.SERVER, extensions=[self._limits])
        self._events: Iterator[Event] | None = None
        self._text: list[str] = []     # the text message being read, in pieces
        self._data: list[bytes] = []   # the binary one
        self._in_message = False
        self._fed = 0    # bytes fed so far
        self._done = 0   # bytes of the frames read whole so far
        self._closed = False
        self._failed: Violation | None = None

    @property
    def dropped(self) -> int:
        """Data frames and pings over the rate limit (``drop`` action)."""
        return self._limits.guard.dropped

    @property
    def idle(self) -> bool:
        """Nothing of a message or frame has come that is not whole: a pause here leaves the
        stream intact (a pause elsewhere is a message begun and not finished)."""
        return not self._in_message and self._fed == self._done

    def feed(self, data: bytes) -> None:
        if self._closed or self._failed is not None:
            return
        self._fed += len(data)
        self._conn.receive_data(data)

    def next_event(self) -> WireEvent | None:
        if self._failed is not None:
            raise self._failed
        while not self._closed:
            if self._events is None:
                self._events = self._conn.events()
            event = next(self._events, None)
            if event is None:
                self._events = None
                return None
            try:
                out = self._handle(event)
            except Violation as exc:
                self._failed = exc
                raise
            if out is not None:
                return out
        return None

    def _frame_done(self) -> None:
        self._done += self._limits.frame_bytes
        self._limits.seen = False

    def _piece(self, frame_finished: bool, message_finished: bool, binary: bool) -> Message | None:
        """After a piece of a data frame: the message, if that piece ended it (and it stays)."""
        if frame_finished:
            self._frame_done()
        self._in_message = not message_finished
        if self._in_message:
            return None
        text, data = self._text, self._data
        self._text, self._data = [], []
        if self._limits.message_done():
            return None
        return Message(b"".join(data)) if binary else Message("".join(text))

    def _handle(self, event: Event) -> WireEvent | None:
        limits = self._limits
        if isinstance(event, TextMessage):
            if not limits.dropping:
                self._text.append(event.data)
            return self._piece(event.frame_finished, event.message_finished, binary=False)
        if isinstance(event, BytesMessage):
            if not limits.dropping:
                self._data.append(bytes(event.data))
            return self._piece(event.frame_finished, event.message_finished, binary=True)
        if isinstance(event, Ping):
            self._frame_done()
            return Reply(pong_frame(bytes(event.payload))) if limits.answer_ping else None
        if isinstance(event, Pong):
            self._frame_done()
            return None
        if isinstance(event, CloseConnection):
            if limits.violation is not None:
                raise limits.violation
            if limits.close_payload is not None:  # the client's close frame, valid or not
                self._closed = True
                return Closed(*close_reply(limits.close_payload))
            # wsproto refused a frame: its code is 1007 (UTF-8) or 1002 (everything else)
            close = CLOSE_INVALID_UTF8 if event.code == CLOSE_INVALID_UTF8[0] else CLOSE_PROTOCOL
            raise Violation(close, event.reason or "")
        logger.debug("ignoring wsproto event %r", event)  # none other after the handshake
        return None
