"""Who is where, and acting on users and rooms across servers: a room's members and users, a
user's connections, a message to every connection of a user, disconnecting a user, closing a
room. Everything is read from the shared state (the room sets, the index by user and the
connection records), never gathered by asking the servers.

The manager and the `Emitter` share this part: the manager serves its own connections directly
(`Here`), an Emitter holds none and goes through the bus for all.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .backends import Backend
from .concurrency import INLINE, Runner, on_runner
from .delivery import Delivery
from .departures import Departures, Publication
from .envelopes import DirectMessage, DirectMessages, Disconnect, EnvelopeWriter, LeaveRoom
from .local import LocalConnection, LocalConnectionManager
from .membership import Membership
from .messages import encode_message, sendable_close_code, utf8_length, validate_id
from .models import RemovedConnection, RoomMember

__all__ = ["Presence", "Here", "ServerHere", "check_close", "rooms_page"]

Notices = Callable[[Sequence[RemovedConnection], str], list[Publication]]


def check_close(code: int, reason: str) -> None:
    """`ValueError` unless ``code`` may be sent in a close frame and ``reason`` fits in it."""
    if not sendable_close_code(code):
        raise ValueError(f"close code {code!r} is not one an application may send "
                         "(1000-1003, 1007-1014, 3000-4999)")
    if not isinstance(reason, str):
        raise TypeError("reason must be str")
    if utf8_length(reason, "reason") > 123:
        raise ValueError("a close reason holds at most 123 bytes of UTF-8")


class Here(Protocol):
    """What a server does for its own connections."""

    server_id: str

    def send(self, connection_id: str, text: str) -> bool | None:
        """Send to a local connection: whether it went out; None if it is not local."""
        ...

    def disconnect(self, connection_id: str, code: int, reason: str) -> bool:
        """Remove a local connection everywhere and close its socket; False if not local."""
        ...

    def leave(self, connection_id: str, room_id: str) -> None:
        """A local connection is out of a room in the shared state: out of it here too."""
        ...


class ServerHere:
    """`Here` for a server: its sockets, its rooms and its departures."""

    def __init__(self, server_id: str, local: LocalConnectionManager, delivery: Delivery,
                 departures: Departures, membership: Membership,
                 send: Callable[[LocalConnection, str], bool]) -> None:
        self.server_id = server_id
        self._local = local
        self._delivery = delivery
        self._departures = departures
        self._membership = membership
        self._send = send  # the manager's send to a local connection

    def send(self, connection_id: str, text: str) -> bool | None:
        conn = self._local.get(connection_id)
        return None if conn is None else self._send(conn, text)

    def disconnect(self, connection_id: str, code: int, reason: str) -> bool:
        return self._departures.remove_local(connection_id, "removed", code, reason)

    def leave(self, connection_id: str, room_id: str) -> None:
        self._membership.change_here(connection_id, room_id, False, None)


class Presence:
    def __init__(self, backend: Backend, envelope: EnvelopeWriter, max_message_bytes: int,
                 notices: Notices, here: Here | None = None) -> None:
        self._backend = backend
        self._envelope = envelope
        self._max = max_message_bytes
        self._notices = notices
        self._here = here

    def _is_here(self, member: RoomMember) -> bool:
        return self._here is not None and member.server_id == self._here.server_id

    # reading
    def room_members(self, room_id: str) -> list[RoomMember]:
        return self._backend.room_members(validate_id(room_id, "room_id"))

    def room_users(self, room_id: str) -> set[str]:
        return {m.user_id for m in self.room_members(room_id)}

    def user_connections(self, user_id: str) -> list[str]:
        return [m.connection_id for m in
                self._backend.user_connections(validate_id(user_id, "user_id"))]

    # acting
    def send_to_user(self, user_id: str, message: Any) -> int:
        validate_id(user_id, "user_id")
        text = encode_message(message, self._max)
        reached = 0
        remote: dict[str, list[str]] = defaultdict(list)  # owner -> its connections of the user
        mailboxes = self._backend.mailbox_size > 0
        for m in self._backend.user_connections(user_id):
            if self._here is not None and self._is_here(m):
                reached += bool(self._here.send(m.connection_id, text))
            elif mailboxes:  # each through the route that keeps it for a recoverable one
                reached += self._backend.route(m.connection_id, self._envelope.origin,
                                               self._envelope(DirectMessage(m.connection_id,
                                                                            text))) is not None
            else:
                remote[m.server_id].append(m.connection_id)
        if remote:  # one message per owning server, not one per connection
            self._backend.publish_many([
                (f"server:{owner}", self._envelope(DirectMessages(tuple(ids), text)))
                for owner, ids in remote.items()])
        return reached + sum(map(len, remote.values()))

    def disconnect_user(self, user_id: str, code: int = 1000, reason: str = "") -> int:
        validate_id(user_id, "user_id")
        check_close(code, reason)
        closed = 0
        remote = []
        for m in self._backend.user_connections(user_id):
            if self._here is not None and self._is_here(m):
                closed += self._here.disconnect(m.connection_id, code, reason)
            else:
                remote.append(m.connection_id)
        return closed + self.remove_elsewhere(remote, code, reason)

    def remove_elsewhere(self, connection_ids: Sequence[str], code: int = 1000,
                         reason: str = "") -> int:
        """Remove connections held by other servers from the shared state; each owner closes
        its sockets with ``code`` (told first, one message per owner), then the rooms hear
        ``user-disconnected`` (reason ``removed``). How many were there to remove."""
        if not connection_ids:
            return 0
        removed = [r for r in self._backend.remove_connections(connection_ids) if r is not None]
        owners: dict[str, list[str]] = defaultdict(list)
        for r in removed:
            owners[r.server_id].append(r.connection_id)
        self._backend.publish_many(
            [(f"server:{owner}", self._envelope(Disconnect(tuple(ids), code, reason)))
             for owner, ids in owners.items()] + self._notices(removed, "removed"))
        return len(removed)

    def close_room(self, room_id: str) -> int:
        validate_id(room_id, "room_id")
        members = self._backend.clear_room(room_id)
        routes = []
        for m in members:
            if self._here is not None and self._is_here(m):
                self._here.leave(m.connection_id, room_id)
            else:
                routes.append((f"server:{m.server_id}",
                               self._envelope(LeaveRoom(m.connection_id, room_id))))
        if routes:
            self._backend.publish_many(routes)
        return len(members)


def rooms_page(backend: Backend, offset: int, limit: int) -> list[tuple[str, int]]:
    """``(room, members)`` of the rooms with members, largest first and ties by name, from
    ``offset`` on, at most ``limit``. Every call reads the whole room index (the order needs
    every size), so a page costs about as much as the full list."""
    if type(offset) is not int or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
    if type(limit) is not int or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    ranked = sorted(backend.room_sizes(), key=lambda rs: (-rs[1], rs[0]))
    return ranked[offset:offset + limit]


class PresenceMethods:
    """The presence and user methods of the manager and the [`Emitter`][dcm_sync.Emitter]
    (each sets ``_presence`` and has ``_check_open``; the manager sets its ``_runner``)."""

    _presence: Presence
    _runner: Runner = INLINE

    def _check_open(self) -> None:
        raise NotImplementedError

    @on_runner
    def get_room_members(self, room_id: str) -> list[RoomMember]:
        """Every connection in the room on every server, from the shared state (``[]`` for an
        unknown or empty room), in connection id order."""
        self._check_open()
        return self._presence.room_members(room_id)

    @on_runner
    def get_room_users(self, room_id: str) -> set[str]:
        """The user ids of the room's members on every server."""
        self._check_open()
        return self._presence.room_users(room_id)

    @on_runner
    def get_user_connections(self, user_id: str) -> list[str]:
        """The connection ids of a user on every server."""
        self._check_open()
        return self._presence.user_connections(user_id)

    @on_runner
    def send_to_user(self, user_id: str, message: Any) -> int:
        """Send to every connection of a user on every server: a server's own directly, the
        others' in one bus message per server that holds some. How many connections it reached."""
        self._check_open()
        return self._presence.send_to_user(user_id, message)

    @on_runner
    def disconnect_user(self, user_id: str, code: int = 1000, reason: str = "") -> int:
        """Close every socket of a user on every server with ``code`` and ``reason``; the
        rooms they were in hear ``user-disconnected`` (reason ``removed``). How many."""
        self._check_open()
        return self._presence.disconnect_user(user_id, code, reason)

    @on_runner
    def close_room(self, room_id: str) -> int:
        """Take every member out of the room on every server; they stay connected. How many."""
        self._check_open()
        return self._presence.close_room(room_id)
