"""What crosses the wire: user messages as compact JSON text, and the cross-server envelope.

The envelope is a JSON object, never pickle::

    {"v": 1, "k": KIND, "o": ORIGIN_SERVER_ID, "id": ENVELOPE_ID, ...kind fields}

ENVELOPE_ID is unique per origin (a counter of the sending process).

Kinds and their fields:

    room    r: room id, m: message text, x: list of excluded connection ids
    direct  c: connection id, m: message text
    server  p: the control payload as sent (dict, list or str)
    join    c: connection id, r: room id      (routed to the connection's owner)
    leave   c: connection id, r: room id
    evict   c: connection id                  (already removed from shared state; close it)
    touch   c: connection id
    probe   n: a number                       (a server to itself: proves its subscription works)

An envelope that is not valid JSON, not an object, of another version, of an unknown kind or
missing a field raises :class:`EnvelopeError`; the listener logs and drops it.
"""

from __future__ import annotations

import itertools
import json
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import DCMError, MessageTooLargeError

__all__ = [
    "PROTOCOL_VERSION",
    "Envelope",
    "EnvelopeError",
    "encode_message",
    "encode_envelope",
    "envelope_prefix",
    "decode_envelope",
    "validate_id",
    "new_connection_id",
    "MAX_ID_LENGTH",
    "exclusions",
    "disconnect_notice",
]

PROTOCOL_VERSION = 1
MAX_ID_LENGTH = 256

_REQUIRED: dict[str, tuple[tuple[str, type], ...]] = {
    "room": (("r", str), ("m", str), ("x", list)),
    "direct": (("c", str), ("m", str)),
    "server": (("p", object),),
    "join": (("c", str), ("r", str)),
    "leave": (("c", str), ("r", str)),
    "evict": (("c", str),),
    "touch": (("c", str),),
    "probe": (("n", int),),
}
KINDS = frozenset(_REQUIRED)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class EnvelopeError(DCMError, ValueError):
    """Bytes on the bus that are not a valid envelope of this protocol version."""


@dataclass(frozen=True)
class Envelope:
    kind: str
    origin: str
    id: str
    fields: dict[str, Any]


def validate_id(value: object, what: str) -> str:
    """Return ``value`` if it is a usable id: ``TypeError`` if not a str, ``ValueError`` if
    empty or longer than :data:`MAX_ID_LENGTH` characters."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{what} is {len(value)} characters; at most {MAX_ID_LENGTH} allowed")
    return value


def encode_message(message: object, max_bytes: int) -> str:
    """The text frame a client receives: ``message`` itself if it is a ``str``, else its
    compact JSON. ``TypeError`` if not JSON-serializable, :class:`MessageTooLargeError` if
    over ``max_bytes`` (UTF-8)."""
    if isinstance(message, str):
        text = message
    else:
        try:
            text = _dumps(message)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"message is not JSON-serializable: {exc}") from exc
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > max_bytes:
        raise MessageTooLargeError(f"message is {size} bytes; max_message_bytes is {max_bytes}")
    return text


def new_id() -> str:
    """A random, unguessable id (emitters)."""
    return uuid.uuid4().hex


_CONNECTION_ID_LOW = 10**18  # 19 decimal digits, no leading zero


def new_connection_id() -> str:
    """A random connection id: 19 decimal digits (about 62.6 random bits).

    Decimal integers below 2**63 let Redis keep the small sets of ids (rooms of up to 512
    members) as intsets, 8 bytes per member instead of about 90.
    """
    return str(_CONNECTION_ID_LOW + secrets.randbelow(2**63 - _CONNECTION_ID_LOW))


# Envelope ids only need to be unique per origin (which every envelope names): a counter,
# not a uuid4 and its system call on every broadcast.
_envelope_ids = itertools.count(1)


def encode_envelope(kind: str, origin: str, **fields: Any) -> bytes:
    """Encode one envelope; ``fields`` are the kind's fields listed in the module docstring."""
    body = {"v": PROTOCOL_VERSION, "k": kind, "o": origin, "id": str(next(_envelope_ids))}
    body.update(fields)
    return _dumps(body).encode("utf-8")


def envelope_prefix(kind: str, origin: str) -> bytes:
    """The bytes every envelope of ``kind`` from ``origin`` starts with (the key order is fixed):
    a listener drops its own server's room broadcasts by this prefix without decoding them."""
    return _dumps({"v": PROTOCOL_VERSION, "k": kind, "o": origin})[:-1].encode("utf-8") + b","


def decode_envelope(data: bytes | str) -> Envelope:
    """Decode and check one envelope; raise :class:`EnvelopeError` if it is not valid."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise EnvelopeError(f"envelope is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise EnvelopeError("envelope is not a JSON object")
    if body.get("v") != PROTOCOL_VERSION:
        raise EnvelopeError(f"unsupported envelope version {body.get('v')!r}")
    kind, origin, env_id = body.get("k"), body.get("o"), body.get("id")
    if kind not in KINDS:
        raise EnvelopeError(f"unknown envelope kind {kind!r}")
    if not isinstance(origin, str) or not isinstance(env_id, str):
        raise EnvelopeError("envelope origin and id must be strings")
    for name, typ in _REQUIRED[kind]:
        if name not in body or not isinstance(body[name], typ):
            raise EnvelopeError(f"{kind} envelope needs field {name!r} of type {typ.__name__}")
    if kind == "room" and not all(isinstance(c, str) for c in body["x"]):
        raise EnvelopeError("room envelope exclusions must be strings")
    return Envelope(kind, origin, env_id, body)


def exclusions(exclude: Iterable[str] | None) -> frozenset[str]:
    """The ``exclude`` argument of a broadcast as a set of ids (``TypeError`` for a bare str)."""
    if exclude is None:
        return frozenset()
    if isinstance(exclude, (str, bytes)):
        raise TypeError("exclude must be an iterable of connection ids, not a single string")
    skip = frozenset(exclude)
    for cid in skip:
        if not isinstance(cid, str):
            raise TypeError(f"exclude must hold str connection ids, got {type(cid).__name__}")
    return skip


def disconnect_notice(room: str, user_id: str, connection_id: str, reason: str) -> dict[str, str]:
    """What the members left in a room receive when a connection is removed."""
    return {"type": "user-disconnected", "roomId": room, "userId": user_id,
            "connectionId": connection_id, "reason": reason}
