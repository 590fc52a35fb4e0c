"""The cross-server envelope: what one server (or an emitter) puts on the bus for another.

The manager speaks in typed bodies (`RoomMessage`, `DirectMessage`, ...); this
module alone knows their JSON form, never pickle::

    {"v": 1, "k": KIND, "o": ORIGIN_SERVER_ID, "id": ENVELOPE_ID, ...kind fields}

ENVELOPE_ID is unique per origin (a counter of the sending process). Kinds, their fields and
their bodies:

    room    r: room id, m: message text, x: excluded connection ids   RoomMessage
    direct  c: connection id, m: message text                         DirectMessage
    directs cs: connection ids (all of one server), m: message text   DirectMessages
    server  p: the control payload as sent (dict, list or str)        ServerMessage
    join    c: connection id, r: room id  (routed to its owner)       JoinRoom
    leave   c: connection id, r: room id                              LeaveRoom
    disconnect cs: connection ids, n: close code, e: close reason     Disconnect
                (removed from shared state; close them with that code)
    touch   c: connection id                                          Touch
    probe   n: a number  (a server to itself: its subscription works) Probe
    request q: request id, p: the message as sent                     Request
    reply   q: request id, s: success, p: the reply (or error text)   Reply

An envelope that is not valid JSON, not an object, of another version, of an unknown kind or
missing a field raises `EnvelopeError`; the listener logs and drops
it. Signing is in `dcm_sync.signing`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from .signing import (
    SIGNED_HEADER_LENGTH,
    EnvelopeError,
    EnvelopeSigner,
    SignatureError,
    strip_unchecked,
)

__all__ = ["PROTOCOL_VERSION", "KINDS", "Envelope", "Received", "Body", "RoomMessage",
           "DirectMessage", "DirectMessages", "Disconnect", "ServerMessage", "JoinRoom",
           "LeaveRoom", "Touch", "Probe", "Request", "Reply",
           "EnvelopeWriter", "encode_envelope", "envelope_prefix", "decode_envelope",
           "decode_body", "EnvelopeError", "SignatureError", "SIGNED_HEADER_LENGTH"]

PROTOCOL_VERSION = 1

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


# ---------------------------------------------------------------- typed bodies
@dataclass(frozen=True)
class RoomMessage:
    """A broadcast to a room's members on every server, less ``exclude``."""

    KIND: ClassVar[str] = "room"
    room: str
    text: str
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class DirectMessage:
    """A message to one connection, published to its owner's channel."""

    KIND: ClassVar[str] = "direct"
    connection: str
    text: str


@dataclass(frozen=True)
class DirectMessages:
    """One message to several connections of one server (a user's), published to its channel."""

    KIND: ClassVar[str] = "directs"
    connections: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class Disconnect:
    """Connections removed from the shared state: their owner closes them with ``code``."""

    KIND: ClassVar[str] = "disconnect"
    connections: tuple[str, ...]
    code: int
    reason: str


@dataclass(frozen=True)
class ServerMessage:
    """A control message to one server's handlers (``on_server_message``)."""

    KIND: ClassVar[str] = "server"
    payload: Any


@dataclass(frozen=True)
class JoinRoom:
    """The owner of ``connection`` is told that it joined ``room`` (the shared state has it)."""

    KIND: ClassVar[str] = "join"
    connection: str
    room: str


@dataclass(frozen=True)
class LeaveRoom:
    """The owner of ``connection`` is told that it left ``room``."""

    KIND: ClassVar[str] = "leave"
    connection: str
    room: str


@dataclass(frozen=True)
class Touch:
    """Activity on the connection, seen on another server."""

    KIND: ClassVar[str] = "touch"
    connection: str


@dataclass(frozen=True)
class Probe:
    """A server's probe of its own subscription."""

    KIND: ClassVar[str] = "probe"
    number: int


@dataclass(frozen=True)
class Request:
    """A request to one server's request handler, answered by a `Reply` with the same ``id``
    on the asking server's own channel."""

    KIND: ClassVar[str] = "request"
    id: str
    payload: Any


@dataclass(frozen=True)
class Reply:
    """The answer to `Request` ``id``: the handler's reply when ``ok``, else the error's text."""

    KIND: ClassVar[str] = "reply"
    id: str
    ok: bool
    payload: Any


Body = (RoomMessage | DirectMessage | DirectMessages | Disconnect | ServerMessage | JoinRoom
        | LeaveRoom | Touch | Probe | Request | Reply)

#: body class -> (JSON key, type) of each of its fields, in field order
_KEYS: dict[type[Body], tuple[tuple[str, type], ...]] = {
    RoomMessage: (("r", str), ("m", str), ("x", list)),
    DirectMessage: (("c", str), ("m", str)),
    DirectMessages: (("cs", list), ("m", str)),
    Disconnect: (("cs", list), ("n", int), ("e", str)),
    ServerMessage: (("p", object),),
    JoinRoom: (("c", str), ("r", str)),
    LeaveRoom: (("c", str), ("r", str)),
    Touch: (("c", str),),
    Probe: (("n", int),),
    Request: (("q", str), ("p", object)),
    Reply: (("q", str), ("s", bool), ("p", object)),
}
_BODIES: dict[str, type[Body]] = {cls.KIND: cls for cls in _KEYS}
_REQUIRED = {kind: _KEYS[cls] for kind, cls in _BODIES.items()}
KINDS = frozenset(_BODIES)


# ---------------------------------------------------------------- the JSON form
@dataclass(frozen=True)
class Envelope:
    """A decoded envelope in its JSON form (``fields`` by their one-letter keys)."""

    kind: str
    origin: str
    id: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Received:
    """A decoded envelope as the manager sees it: who sent it, and its typed body."""

    origin: str
    body: Body


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


def _json_fields(body: Body) -> dict[str, Any]:
    out = {}
    for (key, _), f in zip(_KEYS[type(body)], fields(body), strict=True):
        value = getattr(body, f.name)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _typed(env: Envelope) -> Body:
    cls = _BODIES[env.kind]
    values: list[Any] = [tuple(env.fields[key]) if typ is list else env.fields[key]
                         for key, typ in _KEYS[cls]]
    body: Body = cls(*values)
    return body


class EnvelopeWriter:
    """Encodes the envelopes of one origin (a server, an emitter), signed with the first of
    ``signing_keys`` when there are any; ``signer`` is None otherwise."""

    def __init__(self, origin: str, signing_keys: Sequence[str | bytes], key_prefix: str) -> None:
        self.origin = origin
        self.signer = EnvelopeSigner(signing_keys, key_prefix) if signing_keys else None

    def __call__(self, body: Body) -> bytes:
        data = encode_envelope(body.KIND, self.origin, **_json_fields(body))
        return self.signer.sign(data) if self.signer is not None else data


def decode_envelope(data: bytes | str, signer: EnvelopeSigner | None = None) -> Envelope:
    """Decode and check one envelope; raise `EnvelopeError` if it is not valid.

    With ``signer`` the envelope must carry a valid signature (`SignatureError`);
    without, a signature header is skipped unchecked."""
    if signer is not None:
        if isinstance(data, str):
            try:
                data = data.encode("utf-8")
            except UnicodeEncodeError:
                raise SignatureError("envelope is not UTF-8") from None
        data = signer.open(data)
    else:
        data = strip_unchecked(data)
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise EnvelopeError(f"envelope is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise EnvelopeError("envelope is not a JSON object")
    version = body.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # not true, not 1.0
        raise EnvelopeError(f"unsupported envelope version {version!r}")
    kind, origin, env_id = body.get("k"), body.get("o"), body.get("id")
    if kind not in KINDS:
        raise EnvelopeError(f"unknown envelope kind {kind!r}")
    if not isinstance(origin, str) or not isinstance(env_id, str):
        raise EnvelopeError("envelope origin and id must be strings")
    for name, typ in _REQUIRED[kind]:
        if name not in body or not isinstance(body[name], typ):
            raise EnvelopeError(f"{kind} envelope needs field {name!r} of type {typ.__name__}")
    for name, typ in _REQUIRED[kind]:
        if typ is list and not all(isinstance(c, str) for c in body[name]):
            raise EnvelopeError(f"{kind} envelope field {name!r} must hold strings")
        if typ is int and type(body[name]) is not int:  # not true
            raise EnvelopeError(f"{kind} envelope field {name!r} must be an integer")
    return Envelope(kind, origin, env_id, body)


def decode_body(data: bytes | str, signer: EnvelopeSigner | None = None) -> Received:
    """`decode_envelope`, as its origin and typed body."""
    env = decode_envelope(data, signer)
    return Received(env.origin, _typed(env))
