"""Room membership changes: in the shared state (one atomic step that also tells the
connection's owner when it is another server), and in this process's rooms and subscriptions."""

from __future__ import annotations

from .backends import Backend
from .envelopes import EnvelopeWriter, JoinRoom, LeaveRoom
from .errors import UnknownConnectionError
from .listener import Listener
from .local import LocalConnectionManager

__all__ = ["Membership"]


class Membership:
    def __init__(self, server_id: str, local: LocalConnectionManager, backend: Backend,
                 listener: Listener, envelope: EnvelopeWriter, max_rooms: int,
                 subscribe_timeout: float) -> None:
        self._server_id = server_id
        self._local = local
        self._backend = backend
        self._listener = listener
        self._envelope = envelope
        self._max_rooms = max_rooms
        self._subscribe_timeout = subscribe_timeout

    def change(self, connection_id: str, room_id: str, join: bool) -> None:
        """Join or leave a room for a connection on any server (ids already checked);
        `UnknownConnectionError` if no server holds it."""
        body = (JoinRoom if join else LeaveRoom)(connection_id, room_id)
        route = b"" if connection_id in self._local else self._envelope(body)
        if join:
            owner = self._backend.join_room(connection_id, room_id, self._server_id, route,
                                            self._max_rooms)
        else:
            owner = self._backend.leave_room(connection_id, room_id, self._server_id, route)
        if owner is None:
            raise UnknownConnectionError(f"unknown connection {connection_id!r}")
        if owner == self._server_id:
            self.change_here(connection_id, room_id, join, self._subscribe_timeout)

    def change_here(self, connection_id: str, room_id: str, join: bool,
                    wait: float | None) -> None:
        """Apply a change to this process's rooms, subscribing to a room's channel for its first
        local member (waiting up to ``wait`` for Redis to confirm) and leaving it after the last."""
        changed = (self._local.join if join else self._local.leave)(connection_id, room_id)
        if changed:
            self._listener.sync_rooms([room_id], wait=wait)
