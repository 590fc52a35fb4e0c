"""permessage-deflate (RFC 7692), sans-IO: the offer a client makes, the server's answer, and
the compressed messages both ways.

The server always agrees on *no context takeover* in both directions:

- ``server_no_context_takeover``: each message the server sends is compressed on its own, so
  one compressed frame of a room message is the same bytes for every socket that agreed on
  the same window (`Agreement.encoding`): a room broadcast is compressed once, not once per
  member. One compressor per window size serves the whole process;
- ``client_no_context_takeover``: each message a client sends is inflated on its own, so a
  socket keeps no inflate state (tens of KB) between messages.

A client's offer is read strictly: an offer with an unknown, repeated or malformed parameter
is declined (the next offer, if any, is tried; with none left the connection goes on without
compression). An offer of ``server_max_window_bits=8`` is declined too: zlib cannot make a raw
deflate stream with a 256-byte window. The negotiation is written here, not taken from
wsproto's ``PerMessageDeflate.accept``, which raises on a malformed value and agrees to 8.

Texts under `MIN_BYTES` go out uncompressed (the RFC lets each message choose): deflate
makes them no smaller and costs as much as the rest of the frame.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from typing import Any

__all__ = ["Agreement", "negotiate", "deflate", "Inflater", "MIN_BYTES", "LEVEL", "ENVIRON_KEY"]

#: the environ key where a route's precheck leaves what it agreed on, for
#: `flask_ext.handler.DCMWebSocketHandler`'s ``101`` and the gevent transport
ENVIRON_KEY = "dcm.deflate"
#: texts shorter than this (UTF-8 bytes) are sent uncompressed
MIN_BYTES = 128
#: zlib's compression level: 6, its default (1 saves little CPU on 1 KB JSON and loses ratio)
LEVEL = 6
#: what ends a flushed deflate block: the sender strips it, the receiver puts it back
TAIL = b"\x00\x00\xff\xff"
NAME = "permessage-deflate"


@dataclass(frozen=True)
class Agreement:
    """What a server and a client agreed on: the server's window (``bits``)."""

    bits: int = 15

    @property
    def header(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value of the server's answer."""
        value = f"{NAME}; server_no_context_takeover; client_no_context_takeover"
        return value if self.bits == 15 else f"{value}; server_max_window_bits={self.bits}"

    @property
    def encoding(self) -> tuple[str, int]:
        """Sockets with equal encodings turn a text into the same frame."""
        return NAME, self.bits


def _bits(value: str | None, required: bool) -> int | None:
    """A window size parameter's value, 8 to 15 (quoted or not); None when absent and allowed."""
    if value is None:
        if required:
            raise ValueError("a value is required")
        return None
    value = value.strip().strip('"')
    if not (value.isdigit() and len(value) <= 2 and 8 <= int(value) <= 15):
        raise ValueError(f"window bits must be 8 to 15, got {value!r}")
    return int(value)


def _accept(offer: str) -> Agreement | None:
    """The agreement on one offer, or None when it is not permessage-deflate or is declined."""
    name, *params = (part.strip() for part in offer.split(";"))
    if name.lower() != NAME:
        return None
    seen: set[str] = set()
    bits = 15
    try:
        for param in params:
            key, eq, value = param.partition("=")
            key = key.strip().lower()
            if key in seen:
                raise ValueError(f"{key} given twice")
            seen.add(key)
            if key in ("server_no_context_takeover", "client_no_context_takeover"):
                if eq:
                    raise ValueError(f"{key} takes no value")
            elif key == "server_max_window_bits":
                bits = _bits(value if eq else None, required=True) or 15
            elif key == "client_max_window_bits":
                _bits(value if eq else None, required=False)  # checked; the client keeps its own
            else:
                raise ValueError(f"unknown parameter {key!r}")
    except ValueError:
        return None
    if bits < 9:
        return None  # zlib makes no raw deflate stream with a 256-byte window
    return Agreement(bits)


def negotiate(header: str | None) -> Agreement | None:
    """The server's agreement on a request's ``Sec-WebSocket-Extensions`` (the first
    permessage-deflate offer it can take), or None: no compression."""
    if not header:
        return None
    for offer in header.split(","):
        agreement = _accept(offer)
        if agreement is not None:
            return agreement
    return None


_lock = threading.Lock()
_compressors: dict[int, Any] = {}


def deflate(payload: bytes, bits: int) -> bytes:
    """``payload`` compressed as one message of a socket that agreed on ``bits`` (no context
    takeover), without the trailing `TAIL`.

    One compressor per window serves every socket: a full flush after each message leaves it
    as if new, so what it made next depends on nothing before (a fresh inflater reads it).
    The lock keeps one message's compress and flush together between threads."""
    with _lock:
        compressor = _compressors.get(bits)
        if compressor is None:
            compressor = _compressors[bits] = zlib.compressobj(LEVEL, zlib.DEFLATED, -bits)
        data: bytes = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
    return data[:-4]  # a full flush always ends with TAIL


class TooBig(Exception):
    """The message inflates past its limit."""


class Inflater:
    """One compressed message from a client, inflated as its pieces come, never past ``limit``
    bytes: `TooBig` as soon as it would be (a few KB of deflate can stand for gigabytes);
    ``zlib.error`` when the data is not deflate."""

    def __init__(self, limit: int) -> None:
        self._room = limit
        self._zlib = zlib.decompressobj(-15)

    def feed(self, data: bytes, last: bool) -> bytes:
        out = self._inflate(data)
        if last:
            out += self._inflate(TAIL)
        return out

    def _inflate(self, data: bytes) -> bytes:
        # max_length is at least 1 (0 would mean no limit): one byte past the room says too big
        out: bytes = self._zlib.decompress(data, self._room + 1)
        if len(out) > self._room:
            raise TooBig()
        self._room -= len(out)
        return out
