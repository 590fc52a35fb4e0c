"""Delivery to this process's sockets: one message to one socket, a room's message to its local
members (encoded once per kind of socket), and what happens when a socket cannot take it.

A socket whose outbox is full is a slow consumer: it is cut with 1013 and removed (its rooms
are told); a socket whose write failed is removed. Both go through ``remove``, the departures'
removal of a local connection.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Hashable, Iterable

from .errors import DCMError
from .history import Position
from .local import Held, LocalConnection, LocalConnectionManager
from .protocol import direct_frame, room_frame

__all__ = ["Delivery", "SLOW_CONSUMER_CODE"]

logger = logging.getLogger(__name__)

SLOW_CONSUMER_CODE = 1013  # "try again later": the client fell too far behind


class Delivery:
    def __init__(self, local: LocalConnectionManager, counters: Counter[str],
                 remove: Callable[[str], object]) -> None:
        self._local = local
        self._counters = counters
        self._remove = remove  # removes a local connection everywhere (reason "removed")

    def send(self, conn: LocalConnection, text: str, encoded: bytes | None = None) -> bool:
        """Send ``text`` to one socket; False if it failed or was cut (and so removed)."""
        try:
            if conn.send(text, encoded):
                return True
        except Exception as exc:
            self.write_failed(conn.connection_id, exc)
            return False
        # its outbox is full: a client that does not read. Cut it, never wait for it.
        self._counters["slow_consumers"] += 1
        logger.warning("cutting slow consumer %s (user %s): its outbox is full",
                       conn.connection_id, conn.user_id)
        conn.close(SLOW_CONSUMER_CODE, "slow consumer", slow=True)
        self._remove(conn.connection_id)
        return False

    def to_room(self, room_id: str, text: str, exclude: Iterable[str] = (),
                position: Position | None = None) -> None:
        """``text`` to every local member of the room, less ``exclude``; ``position``: where
        it stands in the room's history, if the room keeps one (recoverable connections get
        it in their frame)."""
        members = self._local.members(room_id, exclude)
        if len(members) < 2:
            for conn in members:
                if conn.secret is None:
                    self.send(conn, text)
                else:
                    self.framed(conn, room_id, position, room_frame(room_id, text, position))
            return
        # encoded once for every member whose socket encodes alike, not once per socket
        shared: dict[tuple[Hashable, bool], bytes] = {}
        frame = None
        for conn in members:
            wrapped = conn.secret is not None
            if wrapped and frame is None:
                frame = room_frame(room_id, text, position)
            out = frame if wrapped and frame is not None else text
            key = conn.encoding
            encoded = None
            if key is not None and conn.hold is None:
                encoded = shared.get((key, wrapped))
                if encoded is None:
                    encoded = shared[(key, wrapped)] = conn.encode(out)
            if wrapped:
                self.framed(conn, room_id, position, out, encoded)
            else:
                self.send(conn, out, encoded)

    def direct(self, conn: LocalConnection, text: str, number: int | None = None) -> bool:
        """A direct message to one socket (numbered when its mailbox keeps it)."""
        if conn.secret is None:
            return self.send(conn, text)
        return self.framed(conn, "", None if number is None else Position("", number),
                           direct_frame(text, number))

    def framed(self, conn: LocalConnection, key: str, position: Position | None, frame: str,
               encoded: bytes | None = None) -> bool:
        """A protocol frame to a recoverable socket: kept back while it replays (see `Hold`),
        never sent twice (a numbered frame not past what it got is a repeat: dropped)."""
        pos = None if position is None else (position.epoch, position.offset)
        hold = conn.hold
        if hold is not None and hold.offer((key, pos, frame)):
            return True
        return self.unique(conn, (key, pos, frame), encoded)

    def unique(self, conn: LocalConnection, held: Held, encoded: bytes | None = None) -> bool:
        """Send a protocol frame unless it is a repeat (see `LocalConnection.advance`)."""
        key, pos, frame = held
        if pos is not None and not conn.advance(key, pos):
            return True
        return self.send(conn, frame, encoded)

    def write_failed(self, connection_id: str, exc: BaseException) -> None:
        """A write to the socket failed (also called from a socket's writer): remove it."""
        self._counters["send_errors"] += 1
        logger.info("send to %s failed (%s); removing it", connection_id, exc)
        try:
            self._remove(connection_id)
        except DCMError as err:  # called from a socket's writer: nobody to raise to
            logger.warning("could not remove %s after a failed send: %s", connection_id, err)
