"""WebSocketConnection: what a ``@sockets.route`` view receives for the life of one socket."""

from __future__ import annotations

import json
import logging
from typing import Any

from dcm_sync import DistributedConnectionManager

from .limits import Violation
from .transports import Transport

__all__ = ["WebSocketConnection"]

logger = logging.getLogger(__name__)


class WebSocketConnection:
    """One client socket, registered with this process's manager.

    ``receive()`` returns ``str | bytes`` and ``None`` once the peer is gone; with ``timeout``
    it raises ``TimeoutError`` when nothing arrives in time. Every message received counts as
    activity for stale cleanup. A client that breaks an inbound limit (``flask_ext.limits``) is
    closed with that limit's code, and ``receive()`` returns None.
    """

    def __init__(self, manager: DistributedConnectionManager, connection_id: str, user_id: str,
                 transport: Transport, recovered: bool | None = None,
                 resumed: bool = False) -> None:
        self._manager = manager
        self.id = connection_id
        """The cluster-wide connection id (what ``send_to_connection`` takes)."""
        self.user_id = user_id
        """The user id ``@sockets.authenticate`` returned (or ``anonymous-<random>``)."""
        self.recovered = recovered
        """On a ``recovery=True`` route: True if this socket resumed a connection and got all
        it missed, False if it asked to resume and could not be given everything (or the
        resume was refused: then it is a new connection), None if it did not ask."""
        self.resumed = resumed
        """True if this socket took an existing connection over (its id and rooms): the
        view need not join its rooms again; False for a new connection."""
        self._transport = transport
        self._refused = False

    @property
    def rooms(self) -> frozenset[str]:
        """Rooms this connection is in (as this server knows them)."""
        return self._manager.rooms_of(self.id)

    @property
    def transport(self) -> str:
        """The server underneath: ``gevent-websocket``, ``werkzeug`` or ``gunicorn`` (``gthread``)."""
        return self._transport.mode

    @property
    def dropped_messages(self) -> int:
        """Messages dropped over the rate limit (``DCM_RATE_LIMIT_ACTION = "drop"``)."""
        return self._transport.dropped

    def receive(self, timeout: float | None = None) -> str | bytes | None:
        """The next message (``bytes`` only on a ``binary=True`` route); None once the socket is
        closed. With ``timeout``, the builtin ``TimeoutError`` when nothing arrives in time."""
        if self._refused:
            return None
        try:
            message = self._transport.receive(timeout)
        except Violation as exc:
            logger.info("closing %s (user %r): %s", self.id, self.user_id, exc)
            self._refused = True
            self.close(exc.code, exc.reason)
            return None
        if message is not None:
            self._manager.touch_local(self.id)
        return message

    def receive_json(self, timeout: float | None = None) -> Any:
        """The next message decoded from JSON (``None`` once closed); ``ValueError`` if it is not JSON."""
        message = self.receive(timeout)
        return None if message is None else json.loads(message)

    def send(self, message: Any) -> bool:
        """Send to this socket (dict/list as JSON, str as is); False if it has gone away."""
        return self._manager.send_to_connection(self.id, message)

    def join(self, room_id: str) -> None:
        """Put this connection in a room (cluster-wide)."""
        self._manager.join_room(self.id, room_id)

    def leave(self, room_id: str) -> None:
        """Take this connection out of a room; a no-op if it is not in it."""
        self._manager.leave_room(self.id, room_id)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket with ``code`` (after what its outbox still holds, never waiting
        for the client); the view's ``receive()`` then returns None."""
        if not self._manager.close_connection(self.id, code, reason):
            self._transport.close(code, reason)

    def __repr__(self) -> str:
        return f"<WebSocketConnection {self.id} user={self.user_id!r}>"
