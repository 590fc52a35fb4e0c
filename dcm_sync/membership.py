"""Room membership changes: in the shared state (one atomic step that also tells the
connection's owner when it is another server), in this process's rooms and subscriptions, and
the ``user-joined`` / ``user-left`` notices to the room's other members."""

from __future__ import annotations

from collections.abc import Callable

from .backends import Backend
from .delivery import Delivery
from .envelopes import EnvelopeWriter, JoinRoom, LeaveRoom, RoomMessage
from .errors import UnknownConnectionError
from .listener import Listener
from .local import LocalConnectionManager
from .messages import encode_message, room_notice

__all__ = ["Membership"]


class Membership:
    def __init__(self, server_id: str, local: LocalConnectionManager, backend: Backend,
                 listener: Listener, envelope: EnvelopeWriter, delivery: Delivery,
                 max_rooms: int, subscribe_timeout: float, notices: bool,
                 max_message_bytes: int,
                 joined: Callable[[str, str], None] | None = None) -> None:
        self._server_id = server_id
        self._delivery = delivery
        self._notices = notices
        self._max_bytes = max_message_bytes
        self._local = local
        self._backend = backend
        self._listener = listener
        self._envelope = envelope
        self._max_rooms = max_rooms
        self._subscribe_timeout = subscribe_timeout
        self._joined = joined  # (connection, room): a local connection joined, here and shared

    def change(self, connection_id: str, room_id: str, join: bool) -> None:
        """Join or leave a room for a connection on any server (ids already checked);
        `UnknownConnectionError` if no server holds it."""
        body = (JoinRoom if join else LeaveRoom)(connection_id, room_id)
        kind = "user-joined" if join else "user-left"
        conn = self._local.get(connection_id)
        route = b"" if conn is not None else self._envelope(body)
        user = conn.user_id if conn is not None else None
        # the notice, made ahead when the user is known, goes out in the membership's own step
        text = notice = None
        if self._notices and user is not None:
            text = self._text(kind, room_id, user, connection_id)
            notice = self._envelope(RoomMessage(room_id, text, (connection_id,)))
        if join:
            change = self._backend.join_room(connection_id, room_id, self._server_id, route,
                                             self._max_rooms, user, notice)
        else:
            change = self._backend.leave_room(connection_id, room_id, self._server_id, route,
                                              user, notice)
        if change is None:
            raise UnknownConnectionError(f"unknown connection {connection_id!r}")
        if change.owner == self._server_id:
            self.change_here(connection_id, room_id, join, self._subscribe_timeout)
        if change.tell and self._notices:
            if text is None:  # another server's connection: its user is known now
                text = self._text(kind, room_id, change.user_id, connection_id)
            if not change.published:
                self._backend.publish(f"room:{room_id}", self._envelope(
                    RoomMessage(room_id, text, (connection_id,))))
            self._delivery.to_room(room_id, text, (connection_id,))  # this server's members

    def _text(self, kind: str, room_id: str, user_id: str, connection_id: str) -> str:
        return encode_message(room_notice(kind, room_id, user_id, connection_id), self._max_bytes)

    def change_here(self, connection_id: str, room_id: str, join: bool,
                    wait: float | None) -> None:
        """Apply a change to this process's rooms, subscribing to a room's channel for its first
        local member (waiting up to ``wait`` for Redis to confirm) and leaving it after the last."""
        changed = (self._local.join if join else self._local.leave)(connection_id, room_id)
        if changed:
            self._listener.sync_rooms([room_id], wait=wait)
        if join and changed is not None and self._joined is not None:
            self._joined(connection_id, room_id)
