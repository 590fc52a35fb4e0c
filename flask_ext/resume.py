"""What a client asks for when it reconnects to a ``recovery=True`` route: the query parameters
``resume`` (its last resume token), ``since`` (JSON: room -> [epoch, offset] of the last message
it got from each room) and ``seen`` (the number of the last direct message it got). See
``docs/protocol.md``."""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["ResumeRequest", "resume_request", "MAX_SINCE_BYTES"]

MAX_SINCE_BYTES = 16 * 1024  # rooms a client reports: more is not a client of ours

ResumeRequest = tuple[str, dict[str, tuple[str, int]], int]  # token, rooms, directs


def resume_request(args: Mapping[str, str]) -> ResumeRequest | None:
    """``(token, rooms, directs)`` from a reconnecting client's query; None if it did not ask
    to resume. Parts that are malformed count as unknown: a room without a valid position
    cannot be recovered (``recovered`` is then False), a bad ``seen`` is 0."""
    token = args.get("resume")
    if not token:
        return None
    rooms: dict[str, tuple[str, int]] = {}
    text = args.get("since", "")
    if text and len(text) <= MAX_SINCE_BYTES:
        try:
            since = json.loads(text)
        except ValueError:
            since = None
        if isinstance(since, dict):
            for room, pos in since.items():
                if (isinstance(pos, list) and len(pos) == 2 and isinstance(pos[0], str)
                        and type(pos[1]) is int and pos[1] >= 0):
                    rooms[room] = (pos[0], pos[1])
    seen = args.get("seen", "0")
    directs = int(seen) if seen.isdigit() and len(seen) < 19 else 0
    return token, rooms, directs
