"""Room history: which rooms keep one, where each of their messages stands in it, reading it back.

A room whose name matches one of ``Config.history_rooms`` (glob patterns) keeps its last
``history_size`` messages for ``history_ttl`` seconds after the latest. Each message is
appended and published in one step of the backend, so every member that gets it live gets
its `Position` too: the history's epoch and the message's offset (1, 2, 3, ... in each
epoch). An epoch changes when the history was lost (it expired, or Redis restarted empty):
a reader that knows an older epoch knows that what it missed cannot be told.

Rooms without history are published as before: nothing is stored, nothing else is paid.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .backends import Backend
from .backends.base import POSITION_MARK
from .envelopes import EnvelopeError, RoomMessage, decode_body
from .signing import EnvelopeSigner

__all__ = ["HistoryEntry", "Position", "RoomHistory", "split_position", "MAX_HISTORY_READ",
           "PAGE"]

logger = logging.getLogger(__name__)

MAX_HISTORY_READ = 10_000  # entries one get_room_history call may ask for
PAGE = 200  # entries read from the backend at a time: replays are paged, never one XRANGE


@dataclass(frozen=True)
class Position:
    """Where a message stands in its room's history."""

    epoch: str
    offset: int


@dataclass(frozen=True)
class HistoryEntry:
    """One message of a room's history: its ``offset`` in the history's ``epoch``, and the
    ``message`` text as the room's members got it (JSON for a dict or list sent)."""

    offset: int
    message: str
    epoch: str
    #: connections the sender left out (``exclude``): a replay skips them too
    exclude: tuple[str, ...] = ()


def split_position(data: bytes) -> tuple[Position | None, bytes]:
    """``(position, envelope)`` of a bus message: the position of a history room's message
    (marked ``\\x1e epoch:offset \\x1e``) or the number of a message kept in a mailbox (no
    epoch: ``\\x1e :number \\x1e``), None for any other. `EnvelopeError` if the mark is
    broken."""
    if data[:1] != POSITION_MARK:
        return None, data
    end = data.find(POSITION_MARK, 1)
    epoch, colon, offset = data[1:max(end, 1)].partition(b":")
    if end < 0 or not colon or not offset.isdigit():
        raise EnvelopeError("broken history position in front of an envelope")
    return Position(epoch.decode("ascii", "replace"), int(offset)), data[end + 1:]


class RoomHistory:
    """Publishes room messages (with history where the room keeps one) and reads histories.
    Shared by the manager and the Emitter."""

    def __init__(self, backend: Backend, patterns: Sequence[str], size: int, ttl: float,
                 signer: EnvelopeSigner | None) -> None:
        self._backend = backend
        self._size, self._ttl, self._signer = size, ttl, signer
        regex = "|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)
        self._match = re.compile(regex).match if patterns else None

    def keeps(self, room_id: str) -> bool:
        """Whether the room keeps a history (its name matches ``history_rooms``)."""
        return self._match is not None and self._match(room_id) is not None

    def append(self, room_id: str, data: bytes) -> Position:
        """Append a room envelope to the room's history and publish it, in one step."""
        epoch, offset = self._backend.publish_history(room_id, data, self._size, self._ttl)
        return Position(epoch, offset)

    def latest(self, room_id: str, limit: int) -> list[HistoryEntry]:
        """The room's last ``limit`` messages, oldest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        if limit > MAX_HISTORY_READ:
            raise ValueError(f"limit must be at most {MAX_HISTORY_READ}, got {limit}")
        if limit == 0:
            return []
        page = self._backend.read_history(room_id, None, limit)
        if page.epoch is None:
            return []
        return self._entries(room_id, page.epoch, page.entries)

    def position(self, room_id: str) -> Position:
        """The room's epoch and last offset (an empty history is started if it has none)."""
        return Position(*self._backend.history_position(room_id, self._ttl))

    def since(self, room_id: str,
              known: Position) -> tuple[bool, Iterator[list[HistoryEntry]] | None]:
        """What the room said after ``known``: ``(complete, pages)``. ``complete`` is False
        when the history cannot fill the gap: trimmed past ``known`` (the pages then hold
        what is left after it), or of another epoch (it was lost: pages is None). Pages are
        read lazily, `PAGE` entries at a time."""
        first = self._backend.read_history(room_id, known.offset, PAGE)
        if first.epoch is None:  # expired with nothing new since (history_ttl >= the window)
            return True, iter(())
        if first.epoch != known.epoch:
            return False, None
        complete = first.last <= known.offset or (
            bool(first.entries) and first.entries[0][0] == known.offset + 1)
        return complete, self._pages(room_id, first.epoch, first.entries)

    def _pages(self, room_id: str, epoch: str,
               rows: list[tuple[int, bytes]]) -> Iterator[list[HistoryEntry]]:
        while rows:
            yield self._entries(room_id, epoch, rows)
            if len(rows) < PAGE:
                return
            page = self._backend.read_history(room_id, rows[-1][0], PAGE)
            if page.epoch != epoch:
                return
            rows = page.entries

    def _entries(self, room_id: str, epoch: str,
                 rows: list[tuple[int, bytes]]) -> list[HistoryEntry]:
        out = []
        for offset, data in rows:
            try:
                body = decode_body(data, self._signer).body
                if not isinstance(body, RoomMessage) or body.room != room_id:
                    raise EnvelopeError(f"not a message of room {room_id!r}")
            except EnvelopeError as exc:
                logger.warning("skipped history entry %s of room %r: %s", offset, room_id, exc)
                continue
            out.append(HistoryEntry(offset, body.text, epoch, body.exclude))
        return out
