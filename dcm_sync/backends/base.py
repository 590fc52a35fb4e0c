"""The interface every coordination backend implements.

A backend owns the shared-state layout (keys under ``key_prefix``) and the bus. Each state
operation is atomic on its own (a Lua script or a MULTI in Redis, one lock in memory), so the
manager never leaves a half-written connection or room. Channels are logical names
(``room:<room>``, ``server:<id>``); the backend adds the prefix.

Failures surface as `BackendUnavailableError` (cannot reach the
coordinator in time) or `BackendError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import ConnectionLimitError
from ..models import RemovedConnection, RoomMember, ServerInfo

__all__ = ["Backend", "Subscription", "ConnectionRecord", "Confirmation", "RoomChange", "rooms_full",
           "user_full", "HistoryPage", "Resumed", "POSITION_MARK"]

#: A history room's message arrives on the bus as ``MARK epoch:offset MARK envelope``.
POSITION_MARK = b"\x1e"


def rooms_full(connection_id: str, max_rooms: int) -> ConnectionLimitError:
    """The error of a join refused by ``max_rooms_per_connection``."""
    return ConnectionLimitError(f"connection {connection_id} is in {max_rooms} rooms already "
                                "(max_rooms_per_connection); leave one first")


def user_full(user_id: str, max_per_user: int) -> ConnectionLimitError:
    """The error of a registration refused by ``max_connections_per_user``."""
    return ConnectionLimitError(f"user {user_id!r} has {max_per_user} connections already "
                                "(max_connections_per_user, counted on every server)")


@dataclass(frozen=True)
class ConnectionRecord:
    """A live connection as written to the shared state when (re-)registering it."""

    connection_id: str
    user_id: str
    connected_at: float
    rooms: tuple[str, ...] = ()
    #: the resume secret of a recoverable connection (None: not recoverable)
    secret: str | None = None


@dataclass(frozen=True)
class RoomChange:
    """A join or leave as the shared state made it: the connection's owner and user, and
    whether the room's other members are to be told (``user-joined`` / ``user-left``): the
    connection's membership changed, some members remain and, when users are counted, it is
    the user's first connection in the room (a join) or was their last (a leave)."""

    owner: str
    user_id: str
    tell: bool
    #: the notice given to the call was published to the room's channel (it is when ``tell``)
    published: bool = False


@dataclass(frozen=True)
class HistoryPage:
    """Part of a room's history: its ``epoch`` (None: the room has no history, none was kept
    or it expired), the ``last`` offset given, and ``(offset, envelope)`` entries oldest first."""

    epoch: str | None
    last: int
    entries: list[tuple[int, bytes]]


@dataclass(frozen=True)
class Resumed:
    """A suspended (or still open) recoverable connection taken over by a server: who held it,
    whether it was suspended, its rooms, and the number of the last message put in its mailbox."""

    owner: str
    suspended: bool
    rooms: tuple[str, ...]
    last_direct: int


class Confirmation(Protocol):
    def wait(self, timeout: float | None = None) -> bool: ...


class Subscription(Protocol):
    """One subscriber connection. ``get_message`` is called by one listener only;
    ``subscribe``/``unsubscribe`` may be called from any thread while it waits."""

    def subscribe(self, channels: Iterable[str]) -> Sequence[Confirmation]:
        """Send the subscription; each returned confirmation is set once the bus has it."""
        ...

    def unsubscribe(self, channels: Iterable[str]) -> None: ...

    def get_message(self, timeout: float | None) -> tuple[str, bytes] | None:
        """The next ``(channel, data)``, or None after ``timeout`` seconds (``None``: wait
        until a message arrives or `close` is called; some subscriptions return None now
        and then meanwhile) or for a non-message event."""
        ...

    def close(self) -> None:
        """Drop the connection; a ``get_message`` blocked in another thread returns or raises."""
        ...

    def ready(self) -> bool:
        """Whether ``get_message`` has something to return at once (read already, or waiting
        on the connection); False when unsure. The listener holds its sockets' writes back
        while it is True (see `dcm_sync.outbox.Cork`)."""
        ...


class Backend(Protocol):
    url: str
    key_prefix: str
    #: Count each room's members by user (notices per user: ``room_notices="users"``); the
    #: same on every server and Emitter of a deployment. Set once, before any other call.
    count_users: bool
    #: Messages kept per recoverable connection (0: none; recovery off) and for how long
    #: (seconds); the same on every server and Emitter. Set once, before any other call.
    mailbox_size: int
    mailbox_ttl: float
    #: Whether this backend can suspend and resume connections (Redis Cluster cannot yet).
    supports_recovery: bool

    # servers
    def register_server(self, info: ServerInfo, ttl: float) -> None: ...

    def heartbeat(self, server_id: str, active_connections: int, ttl: float) -> bool:
        """Refresh the server's record; False if it was gone (expired, cleaned or Redis emptied)."""
        ...

    def deregister_server(self, server_id: str, keep_index: bool = False) -> None:
        """Delete the server's record; with ``keep_index`` the server stays indexed, so that
        another server's cleanup takes what it leaves (its suspended connections)."""
        ...

    def dead_servers(self) -> list[str]:
        """Servers still indexed whose record has expired."""
        ...

    def live_servers(self) -> list[str]:
        """Ids of the indexed servers whose record is alive (the heartbeat registry)."""
        ...

    def claim_cleanup(self, server_id: str, claimer: str, ttl: float) -> bool:
        """Take the short cleanup lock for a dead server; False if another server holds it."""
        ...

    def pop_server_connections(self, server_id: str, count: int, adopter: str | None = None,
                               until: float = 0.0, ttl: float = 0.0) -> list[RemovedConnection]:
        """Atomically remove up to ``count`` of the server's connections; [] when none is left
        or when the server is alive again (its record is back: it writes its own state). With
        an ``adopter`` (recovery on), recoverable connections are not removed but suspended
        until ``until`` (epoch seconds; those suspended already keep theirs) and held by the
        adopter, their records kept ``ttl`` seconds: their rows have ``suspended_until``."""
        ...

    def forget_server(self, server_id: str) -> None:
        """Drop a cleaned server from the index, unless it is alive again."""
        ...

    def server_connection_count(self, server_id: str) -> int:
        """How many connection ids are listed under the server (what its failure cleanup
        would take)."""
        ...

    # connections and rooms
    def add_connection(self, server_id: str, record: ConnectionRecord,
                       max_per_user: int = 0) -> bool:
        """Write a new connection (no rooms yet) and index it under its user; False, writing
        nothing, if its id is taken. `ConnectionLimitError`, writing nothing, if its user has
        ``max_per_user`` connections on all servers together already (0: no limit). The record
        does not expire: it lives until it is removed, by its server or by the cleanup of its
        server's failure."""
        ...

    def restore_connections(self, server_id: str, records: Sequence[ConnectionRecord]) -> None:
        """Write live connections and their rooms back (idempotent), e.g. after Redis restarted."""
        ...

    def new_connection_id(self, server_id: str) -> str:
        """A fresh id for a connection of ``server_id`` (not yet checked to be free: the
        manager draws again when `add_connection` finds it taken)."""
        ...

    def join_room(self, connection_id: str, room_id: str, caller: str, route: bytes,
                  max_rooms: int = 0, user_id: str | None = None,
                  notice: bytes | None = None) -> RoomChange | None:
        """Add to the room (None if the connection is unknown). If the owner is not
        ``caller``, ``route`` is published to the owner's server channel in the same step.
        `ConnectionLimitError`, changing nothing, if the connection is
        not in the room and already in ``max_rooms`` rooms (0: no limit). ``user_id``: the
        connection's user if the caller knows it (it saves a read in Cluster). ``notice``: the
        envelope to publish to the room's channel when the members are to be told, in the
        same step where the backend can (one Redis: the same script)."""
        ...

    def leave_room(self, connection_id: str, room_id: str, caller: str, route: bytes,
                   user_id: str | None = None,
                   notice: bytes | None = None) -> RoomChange | None: ...

    def route(self, connection_id: str, caller: str, data: bytes) -> str | None:
        """Publish ``data`` to the owner's server channel unless it is ``caller``; owner or None."""
        ...

    def remove_connections(self, connection_ids: Sequence[str]) -> list[RemovedConnection | None]:
        """Remove each connection and its memberships; None for those already gone. Each
        one's ``rooms_left`` are the rooms whose members are to be told."""
        ...

    def clear_room(self, room_id: str) -> list[RoomMember]:
        """Take every member out of the room (they stay connected); who they were."""
        ...

    # presence
    def room_members(self, room_id: str) -> list[RoomMember]:
        """Every connection in the room whose record exists, on every server."""
        ...

    def user_connections(self, user_id: str) -> list[RoomMember]:
        """Every connection of the user whose record exists, on every server."""
        ...

    # bus
    def publish(self, channel: str, data: bytes) -> None: ...

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> None: ...

    def subscription(self) -> Subscription: ...

    def retry_delay(self, failures: int) -> float:
        """Seconds to wait before reconnect attempt number ``failures`` (jittered, capped)."""
        ...

    def close_idle(self) -> None:
        """Close pooled connections that no call is using (they reopen on demand), so that a
        burst does not keep its connections open for good."""
        ...

    def publish_to_server(self, server_id: str, data: bytes) -> bool:
        """Publish to a live server's channel in one step; False (nothing sent) if it is not live."""
        ...

    # recovery
    def suspend_connection(self, connection_id: str, server_id: str, until: float,
                           ttl: float) -> bool:
        """Mark a recoverable connection of ``server_id`` suspended until ``until`` (epoch
        seconds), its record kept ``ttl`` seconds; False (nothing changed) if it is gone, held
        by another server or not recoverable."""
        ...

    def remove_suspended(self, connection_id: str, server_id: str) -> RemovedConnection | None:
        """Remove a connection still suspended on ``server_id`` (as `remove_connections`);
        None if it was resumed, moved or is gone."""
        ...

    def resume_connection(self, connection_id: str, secret: str, user_id: str, server_id: str,
                          new_secret: str) -> Resumed | None:
        """Take a recoverable connection over for ``server_id`` if ``secret`` and ``user_id``
        are its own: no longer suspended (nor expiring), its secret replaced by
        ``new_secret``; None (nothing changed) otherwise."""
        ...

    def read_mailbox(self, connection_id: str, after: int, limit: int) -> HistoryPage | None:
        """Up to ``limit`` messages of a recoverable connection's mailbox numbered after
        ``after``, oldest first, and the last number given (``last``); None if it is gone."""
        ...

    # history
    def publish_history(self, room_id: str, data: bytes, size: int,
                        ttl: float) -> tuple[str, int]:
        """Append ``data`` (a room envelope) to the room's history, keeping the last ``size``
        for ``ttl`` seconds after the latest, and publish it to ``room:<room>`` marked with its
        position (`POSITION_MARK`), in one step: ``(epoch, offset)``. Offsets count from 1 in
        each epoch; a history that expired or was lost starts again under a new epoch."""
        ...

    def history_position(self, room_id: str, ttl: float) -> tuple[str, int]:
        """The room's ``(epoch, last offset)``, starting an empty history (offset 0 of a new
        epoch, kept ``ttl`` seconds unless a message comes) if it has none."""
        ...

    def read_history(self, room_id: str, after: int | None, limit: int) -> HistoryPage:
        """Up to ``limit`` entries of the room's history: those after offset ``after``, oldest
        first, or (``after`` None) the latest ones; ``limit`` 0 for the epoch and last offset."""
        ...

    # reading
    def stats(self) -> tuple[int, int, list[ServerInfo]]:
        """``(total_connections, total_rooms, live servers)``."""
        ...

    def close(self) -> None: ...

    def room_sizes(self) -> list[tuple[str, int]]:
        """Every room with members and how many (ids in its set), in no particular order."""
        ...
