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

Signing (``Config.signing_keys``). A signed envelope is the JSON body behind a fixed-length
header of :data:`SIGNED_HEADER_LENGTH` (47) bytes::

    b"S1." + base64url(HMAC-SHA256(key, b"dcm-sync/S1\0" + key_prefix + b"\0" + body)) + b"." + body

(the 32-byte MAC as 43 characters, no padding). The MAC covers the deployment's ``key_prefix``,
so an envelope replayed onto another deployment's channels (another prefix) fails, and the body
(which names its room, connection or server). The channel is not covered: a room envelope is
only accepted on its own room's channel (the manager checks), and a direct, routed or control
envelope replayed onto another server's channel names a connection that server does not hold,
or reaches that server's control handlers as any server could. Signing authenticates; it does
not stop a verbatim replay of a captured envelope within the same deployment.

The first key signs, every key verifies (rotation: add the new key second everywhere, then
make it first everywhere, then drop the old one). With signing on, anything else raises
:class:`SignatureError` (an :class:`EnvelopeError`). A server with signing off accepts a signed
envelope without checking it (it trusts its bus, as before signing), so that turning signing on
server by server loses only the unsigned-to-signing direction meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import DCMError, MessageTooLargeError

__all__ = [
    "PROTOCOL_VERSION",
    "Envelope",
    "EnvelopeError",
    "SignatureError",
    "EnvelopeSigner",
    "SIGNED_HEADER_LENGTH",
    "MIN_SIGNING_KEY_BYTES",
    "signing_key_bytes",
    "encode_message",
    "encode_envelope",
    "EnvelopeWriter",
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
MIN_SIGNING_KEY_BYTES = 16
_SIGNED_MARK = b"S1."
_MAC_CHARS = 43  # base64url of the 32-byte HMAC-SHA256, without padding
#: Bytes before the body of a signed envelope: ``S1.`` + 43 MAC characters + ``.``.
SIGNED_HEADER_LENGTH = len(_SIGNED_MARK) + _MAC_CHARS + 1

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


class SignatureError(EnvelopeError):
    """Signing is on and an envelope is unsigned, signed by no known key, or for another prefix."""


@dataclass(frozen=True)
class Envelope:
    kind: str
    origin: str
    id: str
    fields: dict[str, Any]


def validate_id(value: object, what: str) -> str:
    """Return ``value`` if it is a usable id: ``TypeError`` if not a str, ``ValueError`` if
    empty, longer than :data:`MAX_ID_LENGTH` characters, or not valid Unicode text (a lone
    surrogate, such as ``json.loads('"\\ud800"')`` gives: it cannot be stored or sent)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{what} is {len(value)} characters; at most {MAX_ID_LENGTH} allowed")
    if not value.isascii():
        utf8_length(value, what)
    return value


def utf8_length(text: str, what: str) -> int:
    """``len(text.encode("utf-8"))``; ``ValueError`` naming the first lone surrogate if
    ``text`` has one (no UTF-8 form)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid Unicode text: a lone surrogate "
                         f"{text[exc.start]!r} at position {exc.start}") from None


def encode_message(message: object, max_bytes: int) -> str:
    """The text frame a client receives: ``message`` itself if it is a ``str``, else its
    compact JSON. ``TypeError`` if not JSON-serializable, ``ValueError`` if its text is not
    valid Unicode (a lone surrogate), :class:`MessageTooLargeError` if over ``max_bytes``
    (UTF-8)."""
    if isinstance(message, str):
        text = message
    else:
        try:
            text = _dumps(message)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"message is not JSON-serializable: {exc}") from exc
    size = len(text) if text.isascii() else utf8_length(text, "message")
    if size > max_bytes:
        raise MessageTooLargeError(f"message is {size} bytes; max_message_bytes is {max_bytes}")
    return text


def new_id() -> str:
    """A random, unguessable id (emitters)."""
    return uuid.uuid4().hex


_RANDOM_DIGITS = 10**15


def new_connection_id(server_tag: str) -> str:
    """A connection id: the server's 4-digit tag (1000..9222) then 15 random decimal digits
    (about 50 random bits; a draw that is taken is drawn again).

    The tag puts the connection's hash in its server's Redis Cluster slot. Decimal integers
    below 2**63 let Redis keep the small sets of ids (rooms of up to 512 members) as intsets,
    8 bytes per member instead of about 90.
    """
    return f"{server_tag}{secrets.randbelow(_RANDOM_DIGITS):015d}"


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


def signing_key_bytes(key: object) -> bytes:
    """One signing key as bytes (``str`` is UTF-8): ``TypeError`` if not str or bytes-like,
    ``ValueError`` if shorter than :data:`MIN_SIGNING_KEY_BYTES`."""
    if isinstance(key, str):
        raw = key.encode("utf-8")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
    else:
        raise TypeError(f"a signing key must be str or bytes, got {type(key).__name__}")
    if len(raw) < MIN_SIGNING_KEY_BYTES:
        raise ValueError(f"a signing key must be at least {MIN_SIGNING_KEY_BYTES} bytes, "
                         f"got {len(raw)}")
    return raw


class EnvelopeSigner:
    """Signs and verifies envelopes of one deployment (``key_prefix``) with HMAC-SHA256.

    ``keys[0]`` signs; every key verifies. The prefix is absorbed into each key's HMAC state
    once, so a message costs one state copy and one pass over its body per key tried.
    """

    def __init__(self, keys: Sequence[str | bytes], key_prefix: str) -> None:
        if not keys:
            raise ValueError("an EnvelopeSigner needs at least one key")
        domain = b"dcm-sync/S1\0" + key_prefix.encode("utf-8") + b"\0"
        self._macs = [hmac.new(signing_key_bytes(k), domain, hashlib.sha256) for k in keys]

    def _mac(self, base: hmac.HMAC, body: bytes) -> bytes:
        mac = base.copy()
        mac.update(body)
        return base64.urlsafe_b64encode(mac.digest())[:_MAC_CHARS]

    def sign(self, body: bytes) -> bytes:
        """``body`` (an encoded envelope) behind its signature header."""
        return _SIGNED_MARK + self._mac(self._macs[0], body) + b"." + body

    def open(self, data: bytes) -> bytes:
        """The body of a signed envelope whose MAC one of the keys made for this prefix;
        :class:`SignatureError` otherwise."""
        if not data.startswith(_SIGNED_MARK):
            if data[:1] == b"S" and data[2:3] == b".":
                raise SignatureError(f"unsupported signature scheme {data[:2]!r}")
            raise SignatureError("unsigned envelope")
        if len(data) < SIGNED_HEADER_LENGTH or data[SIGNED_HEADER_LENGTH - 1] != ord("."):
            raise SignatureError("malformed signature header")
        given = data[len(_SIGNED_MARK):SIGNED_HEADER_LENGTH - 1]
        body = data[SIGNED_HEADER_LENGTH:]
        for base in self._macs:
            if hmac.compare_digest(self._mac(base, body), given):
                return body
        raise SignatureError("bad signature (another key or another key_prefix)")


class EnvelopeWriter:
    """Encodes the envelopes of one origin (a server, an emitter), signed with the first of
    ``signing_keys`` when there are any; ``signer`` is None otherwise."""

    def __init__(self, origin: str, signing_keys: Sequence[str | bytes], key_prefix: str) -> None:
        self.origin = origin
        self.signer = EnvelopeSigner(signing_keys, key_prefix) if signing_keys else None

    def __call__(self, kind: str, **fields: Any) -> bytes:
        data = encode_envelope(kind, self.origin, **fields)
        return self.signer.sign(data) if self.signer is not None else data


def _strip_unchecked(data: bytes | str) -> bytes | str:
    """The body of a signed envelope, unchecked (a server with signing off)."""
    if isinstance(data, str):
        signed = data.startswith("S1.") and data[SIGNED_HEADER_LENGTH - 1:SIGNED_HEADER_LENGTH] == "."
    else:
        signed = data.startswith(_SIGNED_MARK) and data[SIGNED_HEADER_LENGTH - 1:SIGNED_HEADER_LENGTH] == b"."
    return data[SIGNED_HEADER_LENGTH:] if signed else data


def decode_envelope(data: bytes | str, signer: EnvelopeSigner | None = None) -> Envelope:
    """Decode and check one envelope; raise :class:`EnvelopeError` if it is not valid.

    With ``signer`` the envelope must carry a valid signature (:class:`SignatureError`);
    without, a signature header is skipped unchecked."""
    if signer is not None:
        if isinstance(data, str):
            try:
                data = data.encode("utf-8")
            except UnicodeEncodeError:
                raise SignatureError("envelope is not UTF-8") from None
        data = signer.open(data)
    else:
        data = _strip_unchecked(data)
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
