"""Connections leaving: a local socket dropped and removed from the shared state, the notices
to the members left in its rooms, and the removals that had to wait for Redis.

A connection removed while Redis is unreachable is removed locally at once (its socket closes,
local members are told) and noted; once Redis is back it is removed there and the other
servers are told (`Departures.flush_pending`, from the heartbeat).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from .backends import Backend
from .delivery import Delivery
from .envelopes import EnvelopeWriter, RoomMessage
from .errors import BackendError
from .listener import Listener
from .local import LocalConnection, LocalConnectionManager
from .messages import disconnect_notice, encode_message
from .models import RemovedConnection

__all__ = ["Departures", "Publication", "notice_publications", "close_socket"]

logger = logging.getLogger(__name__)

Publication = tuple[str, bytes]  # (logical channel, envelope)


class Departures:
    def __init__(self, server_id: str, local: LocalConnectionManager, backend: Backend,
                 listener: Listener, delivery: Delivery, envelope: EnvelopeWriter,
                 notify: bool, max_message_bytes: int) -> None:
        self._server_id = server_id
        self._local = local
        self._backend = backend
        self._listener = listener
        self._delivery = delivery
        self._envelope = envelope
        self._notify = notify
        self._max_bytes = max_message_bytes
        # removals made while Redis was unreachable: connection id -> (what it was, reason)
        self._pending: dict[str, tuple[RemovedConnection, str]] = {}
        self._pending_lock = threading.Lock()

    def remove_local(self, connection_id: str, reason: str, code: int = 1000,
                     close_reason: str = "") -> bool:
        """Remove one of this server's connections everywhere, closing its socket with
        ``code`` and ``close_reason``; False if it is not local."""
        conn = self.drop_local(connection_id, code, close_reason)
        if conn is None:
            return False
        try:
            removed = self._backend.remove_connections([connection_id])[0]
        except BackendError as exc:
            logger.warning("connection %s removed locally; shared state follows later: %s",
                           connection_id, exc)
            known = RemovedConnection(connection_id, conn.user_id, self._server_id,
                                      tuple(conn.rooms))
            with self._pending_lock:
                self._pending[connection_id] = (known, reason)
            self.notices([known], reason)  # local members now; the others once Redis is back
            return True
        if removed is not None:
            self.publish_quietly(self.notices([removed], reason))
        return True

    def drop_local(self, connection_id: str, code: int = 1000,
                   reason: str = "") -> LocalConnection | None:
        """Forget a local socket, close it and leave emptied room channels."""
        result = self._local.remove(connection_id)
        if result is None:
            return None
        conn, emptied = result
        if emptied:
            self._listener.sync_rooms(emptied)
        close_socket(conn, code, reason)
        return conn

    def notices(self, removed: Sequence[RemovedConnection], reason: str,
                local: bool = True) -> list[Publication]:
        """Tell the members left in each room; deliver here unless ``local`` is False and
        return the envelopes to publish for the other servers."""
        if not self._notify:
            return []
        deliver = self._delivery.to_room if local else None
        return notice_publications(removed, reason, self._envelope, self._max_bytes, deliver)

    def publish_quietly(self, items: list[Publication]) -> None:
        """Publish departure notices; a failure is logged, not raised (the removal is done)."""
        if not items:
            return
        try:
            self._backend.publish_many(items)
        except BackendError as exc:
            logger.warning("could not tell other servers of %d departure(s): %s", len(items), exc)

    def flush_pending(self) -> None:
        """Remove from the shared state what was removed here while Redis was away, and tell
        the other servers; ``BackendError`` (the removals stay noted) if Redis is away still."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            removed = self._backend.remove_connections(list(pending))
        except BackendError:
            with self._pending_lock:
                self._pending.update(pending)
            raise
        for (known, reason), r in zip(pending.values(), removed, strict=True):
            # Redis may have come back empty and forgotten it: announce it from what we knew
            # (local members were told when it left)
            self.publish_quietly(self.notices([r or known], reason, local=False))


def notice_publications(removed: Sequence[RemovedConnection], reason: str,
                        envelope: EnvelopeWriter, max_bytes: int,
                        deliver: Callable[[str, str], object] | None = None) -> list[Publication]:
    """The room envelopes that tell the other servers' members of each removal (reason
    ``reason``); ``deliver(room, text)`` gives each notice to this server's members too."""
    items = []
    for r in removed:
        for room in r.rooms_left:
            text = encode_message(disconnect_notice(room, r.user_id, r.connection_id, reason),
                                  max_bytes)
            if deliver is not None:
                deliver(room, text)
            items.append((f"room:{room}", envelope(RoomMessage(room, text, (r.connection_id,)))))
    return items


def close_socket(conn: LocalConnection, code: int = 1000, reason: str = "") -> None:
    try:
        conn.close(code, reason)
    except Exception as exc:  # the peer may already be gone
        logger.debug("closing socket of %s: %s", conn.connection_id, exc)
