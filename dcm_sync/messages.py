"""What a client receives and what the API accepts: message text and ids.

User messages are compact JSON text (or a ``str`` as is), checked for size and for text that
UTF-8 cannot carry; ids (connections, rooms, users, servers) are checked the same way
everywhere. The cross-server envelope is in `dcm_sync.envelopes`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

from .errors import MessageTooLargeError

__all__ = ["encode_message", "validate_id", "utf8_length", "MAX_ID_LENGTH", "new_id",
           "exclusions", "disconnect_notice", "room_notice", "sendable_close_code"]

MAX_ID_LENGTH = 256

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def validate_id(value: object, what: str) -> str:
    """Return ``value`` if it is a usable id: ``TypeError`` if not a str, ``ValueError`` if
    empty, longer than `MAX_ID_LENGTH` (256) characters, or not valid Unicode text (a lone
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
    valid Unicode (a lone surrogate), `MessageTooLargeError` if over ``max_bytes``
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


def sendable_close_code(code: object) -> bool:
    """Whether a close frame may carry ``code`` (RFC 6455 section 7.4): 1000-1003 and 1007-1014
    are defined, 3000-4999 are for libraries and applications; the rest are reserved or must
    never be sent (1004-1006, 1015)."""
    return type(code) is int and (1000 <= code <= 1003 or 1007 <= code <= 1014
                                  or 3000 <= code <= 4999)


def disconnect_notice(room: str, user_id: str, connection_id: str, reason: str) -> dict[str, str]:
    """What the members left in a room receive when a connection is removed."""
    return {"type": "user-disconnected", "roomId": room, "userId": user_id,
            "connectionId": connection_id, "reason": reason}


def room_notice(kind: str, room: str, user_id: str, connection_id: str) -> dict[str, str]:
    """What the other members of a room receive when a connection joins (``user-joined``) or
    leaves it (``user-left``, reason ``left``)."""
    notice = {"type": kind, "roomId": room, "userId": user_id, "connectionId": connection_id}
    if kind == "user-left":
        notice["reason"] = "left"
    return notice
