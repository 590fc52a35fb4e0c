"""Envelope signing (``Config.signing_keys``): HMAC-SHA256 over the deployment's ``key_prefix``
and the envelope body.

A signed envelope is the JSON body behind a fixed-length header of `SIGNED_HEADER_LENGTH`
(47) bytes::

    b"S1." + base64url(HMAC-SHA256(key, b"dcm-sync/S1\0" + key_prefix + b"\0" + body)) + b"." + body

(the 32-byte MAC as 43 characters, no padding). The MAC covers the deployment's ``key_prefix``,
so an envelope replayed onto another deployment's channels (another prefix) fails, and the body
(which names its room, connection or server). The channel is not covered: a room envelope is
only accepted on its own room's channel (the dispatcher checks), and a direct, routed or control
envelope replayed onto another server's channel names a connection that server does not hold,
or reaches that server's control handlers as any server could. Signing authenticates; it does
not stop a verbatim replay of a captured envelope within the same deployment.

The first key signs, every key verifies (rotation: add the new key second everywhere, then
make it first everywhere, then drop the old one). With signing on, anything else raises
`SignatureError`. A server with signing off accepts a signed envelope without checking
it (it trusts its bus, as before signing), so that turning signing on server by server loses
only the unsigned-to-signing direction meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from .errors import DCMError

__all__ = ["EnvelopeError", "SignatureError", "EnvelopeSigner", "SIGNED_HEADER_LENGTH",
           "MIN_SIGNING_KEY_BYTES", "signing_key_bytes", "strip_unchecked"]

MIN_SIGNING_KEY_BYTES = 16
_SIGNED_MARK = b"S1."
_MAC_CHARS = 43  # base64url of the 32-byte HMAC-SHA256, without padding
#: Bytes before the body of a signed envelope: ``S1.`` + 43 MAC characters + ``.``.
SIGNED_HEADER_LENGTH = len(_SIGNED_MARK) + _MAC_CHARS + 1


class EnvelopeError(DCMError, ValueError):
    """Bytes on the bus that are not a valid envelope of this protocol version."""


class SignatureError(EnvelopeError):
    """Signing is on and an envelope is unsigned, signed by no known key, or for another prefix."""


def signing_key_bytes(key: object) -> bytes:
    """One signing key as bytes (``str`` is UTF-8): ``TypeError`` if not str or bytes-like,
    ``ValueError`` if shorter than `MIN_SIGNING_KEY_BYTES`."""
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
        `SignatureError` otherwise."""
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


def strip_unchecked(data: bytes | str) -> bytes | str:
    """The body of a signed envelope, unchecked (a server with signing off)."""
    if isinstance(data, str):
        signed = data.startswith("S1.") and data[SIGNED_HEADER_LENGTH - 1:SIGNED_HEADER_LENGTH] == "."
    else:
        signed = data.startswith(_SIGNED_MARK) and data[SIGNED_HEADER_LENGTH - 1:SIGNED_HEADER_LENGTH] == b"."
    return data[SIGNED_HEADER_LENGTH:] if signed else data
