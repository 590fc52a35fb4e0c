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
from .local import LocalConnection, LocalConnectionManager

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
        it stands in the room's history, if the room keeps one."""
        members = self._local.members(room_id, exclude)
        if len(members) < 2:
            for conn in members:
                self.send(conn, text)
            return
        # encoded once for every member whose socket encodes alike, not once per socket
        shared: dict[Hashable, bytes] = {}
        for conn in members:
            key = conn.encoding
            if key is None:
                self.send(conn, text)
                continue
            encoded = shared.get(key)
            if encoded is None:
                encoded = shared[key] = conn.encode(text)
            self.send(conn, text, encoded)

    def write_failed(self, connection_id: str, exc: BaseException) -> None:
        """A write to the socket failed (also called from a socket's writer): remove it."""
        self._counters["send_errors"] += 1
        logger.info("send to %s failed (%s); removing it", connection_id, exc)
        try:
            self._remove(connection_id)
        except DCMError as err:  # called from a socket's writer: nobody to raise to
            logger.warning("could not remove %s after a failed send: %s", connection_id, err)
