"""``memory://NAME``: a real in-process backend with the Redis backend's semantics.

Managers in one process that open the same ``memory://NAME`` with the same key prefix share
one state and one bus (``memory://`` alone is the name ``default``). Records expire like Redis
keys, so failure detection and cleanup work the same way. Everything is guarded by one lock;
delivery goes through a queue per subscriber, read by that manager's listener.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..models import RemovedConnection, RoomMember, ServerInfo
from . import ids
from .base import (
    POSITION_MARK,
    ConnectionRecord,
    HistoryPage,
    Resumed,
    RoomChange,
    rooms_full,
    user_full,
)

__all__ = ["MemoryBackend", "reset_memory_backends"]


@dataclass
class _Conn:
    user_id: str
    server_id: str
    connected_at: float
    expires: float
    rooms: list[str] = field(default_factory=list)
    secret: str | None = None  # recoverable: its resume secret
    suspended_until: float = 0.0  # epoch seconds; 0: not suspended
    directs: int = 0  # the number of the last message put in its mailbox
    mailbox: deque[tuple[int, bytes]] = field(default_factory=deque)


@dataclass
class _History:
    epoch: str
    expires: float
    last: int = 0
    entries: deque[tuple[int, bytes]] = field(default_factory=deque)


class _Confirmed:
    def wait(self, timeout: float | None = None) -> bool:
        return True


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.servers: dict[str, tuple[ServerInfo, float]] = {}  # id -> (info, expires)
        self.server_index: set[str] = set()
        self.server_conns: dict[str, set[str]] = {}
        self.conns: dict[str, _Conn] = {}
        self.rooms: dict[str, set[str]] = {}
        self.users: dict[str, set[str]] = {}
        self.locks: dict[str, float] = {}
        self.history: dict[str, _History] = {}
        self.subscribers: list[_MemorySubscription] = []

    def live_conn(self, cid: str) -> _Conn | None:
        conn = self.conns.get(cid)
        if conn is not None and conn.expires <= time.monotonic():
            del self.conns[cid]  # expired like a Redis key; its memberships stay, as in Redis
            return None
        return conn

    def live_history(self, room: str) -> _History | None:
        entry = self.history.get(room)
        if entry is not None and entry.expires <= time.monotonic():
            del self.history[room]
            return None
        return entry

    def live_server(self, sid: str) -> ServerInfo | None:
        entry = self.servers.get(sid)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self.servers[sid]
            return None
        return entry[0]


_STATES: dict[tuple[str, str], _State] = {}
_STATES_LOCK = threading.Lock()


def reset_memory_backends() -> None:
    """Forget every ``memory://`` state of this process (for tests of code using the library)."""
    with _STATES_LOCK:
        _STATES.clear()


class _MemorySubscription:
    def __init__(self, state: _State) -> None:
        self._state = state
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self.channels: set[str] = set()
        with state.lock:
            state.subscribers.append(self)

    def subscribe(self, channels: Iterable[str]) -> list[_Confirmed]:
        with self._state.lock:
            self.channels.update(channels)
        return []

    def unsubscribe(self, channels: Iterable[str]) -> None:
        with self._state.lock:
            self.channels.difference_update(channels)

    def deliver(self, channel: str, data: bytes) -> None:
        self._queue.put((channel, data))

    def get_message(self, timeout: float | None) -> tuple[str, bytes] | None:
        try:
            return self._queue.get(timeout=timeout)  # None once closed
        except queue.Empty:
            return None

    def ready(self) -> bool:
        return not self._queue.empty()

    def close(self) -> None:
        with self._state.lock:
            if self in self._state.subscribers:
                self._state.subscribers.remove(self)
            self.channels.clear()
        self._queue.put(None)  # wakes a blocked get_message


class MemoryBackend:
    count_users = False
    mailbox_size = 0
    mailbox_ttl = 0.0
    supports_recovery = True

    def __init__(self, url: str, key_prefix: str) -> None:
        parts = urlsplit(url)
        name = (parts.netloc + parts.path).strip("/") or "default"
        self.url = url
        self.key_prefix = key_prefix
        with _STATES_LOCK:
            self._s = _STATES.setdefault((name, key_prefix), _State())

    # servers
    def register_server(self, info: ServerInfo, ttl: float) -> None:
        s = self._s
        with s.lock:
            s.servers[info.server_id] = (info, time.monotonic() + ttl)
            s.server_index.add(info.server_id)
            s.server_conns.setdefault(info.server_id, set())

    def heartbeat(self, server_id: str, active_connections: int, ttl: float) -> bool:
        s = self._s
        with s.lock:
            info = s.live_server(server_id)
            if info is None:
                return False
            info = ServerInfo(info.server_id, info.host, info.port, info.pid, time.time(),
                              active_connections)
            s.servers[server_id] = (info, time.monotonic() + ttl)
            s.server_index.add(server_id)  # back in the index if a cleaner dropped it meanwhile
            return True

    def deregister_server(self, server_id: str, keep_index: bool = False) -> None:
        s = self._s
        with s.lock:
            s.servers.pop(server_id, None)
            if keep_index:
                return
            s.server_index.discard(server_id)
            if not s.server_conns.get(server_id):
                s.server_conns.pop(server_id, None)

    def publish_to_server(self, server_id: str, data: bytes) -> bool:
        with self._s.lock:
            if self._s.live_server(server_id) is None:
                return False
            self.publish(f"server:{server_id}", data)
            return True

    def live_servers(self) -> list[str]:
        s = self._s
        with s.lock:
            return sorted(sid for sid in s.server_index if s.live_server(sid) is not None)

    def dead_servers(self) -> list[str]:
        s = self._s
        with s.lock:
            return [sid for sid in s.server_index if s.live_server(sid) is None]

    def claim_cleanup(self, server_id: str, claimer: str, ttl: float) -> bool:
        s = self._s
        now = time.monotonic()
        with s.lock:
            if s.locks.get(server_id, 0.0) > now:
                return False
            s.locks[server_id] = now + ttl
            return True

    def pop_server_connections(self, server_id: str, count: int, adopter: str | None = None,
                               until: float = 0.0, ttl: float = 0.0) -> list[RemovedConnection]:
        s = self._s
        with s.lock:
            if s.live_server(server_id) is not None:
                return []  # alive again: it writes its own state back
            ids = s.server_conns.get(server_id, set())
            out = []
            for cid in [ids.pop() for _ in range(min(count, len(ids)))]:
                conn = s.live_conn(cid)
                if conn is not None and conn.server_id != server_id:
                    continue  # held by another server now (resumed there)
                if conn is not None and conn.secret is not None and adopter:
                    conn.suspended_until = conn.suspended_until or until
                    self._move(cid, conn, adopter)
                    conn.expires = time.monotonic() + ttl
                    out.append(RemovedConnection(cid, conn.user_id, adopter, (),
                                                 conn.suspended_until))
                elif (removed := self._remove(cid)) is not None:
                    out.append(removed)
            return out

    def _move(self, cid: str, conn: _Conn, server_id: str) -> None:
        s = self._s
        s.server_conns.get(conn.server_id, set()).discard(cid)
        s.server_conns.setdefault(server_id, set()).add(cid)
        conn.server_id = server_id

    def server_connection_count(self, server_id: str) -> int:
        with self._s.lock:
            return len(self._s.server_conns.get(server_id, ()))

    def forget_server(self, server_id: str) -> None:
        s = self._s
        with s.lock:
            if s.live_server(server_id) is not None:
                return
            s.server_index.discard(server_id)
            s.servers.pop(server_id, None)
            s.server_conns.pop(server_id, None)

    # connections and rooms
    def new_connection_id(self, server_id: str) -> str:
        return ids.new_connection_id(server_id)

    def add_connection(self, server_id: str, record: ConnectionRecord,
                       max_per_user: int = 0) -> bool:
        with self._s.lock:
            if record.connection_id in self._s.conns:
                return False
            if max_per_user and len(self._user_connections(record.user_id)) >= max_per_user:
                raise user_full(record.user_id, max_per_user)
            self.restore_connections(server_id, [record])
            return True

    def restore_connections(self, server_id: str, records: Sequence[ConnectionRecord]) -> None:
        s = self._s
        with s.lock:
            for rec in records:
                s.conns[rec.connection_id] = _Conn(rec.user_id, server_id, rec.connected_at,
                                                   math.inf, list(rec.rooms),
                                                   rec.secret)
                s.server_conns.setdefault(server_id, set()).add(rec.connection_id)
                s.users.setdefault(rec.user_id, set()).add(rec.connection_id)
                for room in rec.rooms:
                    s.rooms.setdefault(room, set()).add(rec.connection_id)

    def join_room(self, connection_id: str, room_id: str, caller: str, route: bytes,
                  max_rooms: int = 0, user_id: str | None = None,
                  notice: bytes | None = None) -> RoomChange | None:
        s = self._s
        with s.lock:
            conn = s.live_conn(connection_id)
            if conn is None:
                return None
            tell = False
            if room_id not in conn.rooms:
                if max_rooms and len(conn.rooms) >= max_rooms:
                    raise rooms_full(connection_id, max_rooms)
                members = s.rooms.setdefault(room_id, set())
                tell = bool(members) and not self._user_stays(room_id, conn.user_id)
                members.add(connection_id)
                conn.rooms.append(room_id)
            self._route_to(conn.server_id, caller, route)
            return self._told(room_id, RoomChange(conn.server_id, conn.user_id, tell), notice)

    def leave_room(self, connection_id: str, room_id: str, caller: str, route: bytes,
                   user_id: str | None = None,
                   notice: bytes | None = None) -> RoomChange | None:
        s = self._s
        with s.lock:
            conn = s.live_conn(connection_id)
            if conn is None:
                return None
            tell = False
            members = s.rooms.get(room_id)
            if members is not None and connection_id in members:
                tell = not self._discard_member(room_id, connection_id) \
                    and not self._user_stays(room_id, conn.user_id)
                conn.rooms = [r for r in conn.rooms if r != room_id]
            self._route_to(conn.server_id, caller, route)
            return self._told(room_id, RoomChange(conn.server_id, conn.user_id, tell), notice)

    def _told(self, room_id: str, change: RoomChange, notice: bytes | None) -> RoomChange:
        if not (change.tell and notice):
            return change
        self.publish(f"room:{room_id}", notice)
        return RoomChange(change.owner, change.user_id, True, True)

    def _user_stays(self, room_id: str, user_id: str) -> bool:
        """With users counted: whether the user has a connection in the room (then a join or
        a leave of another of theirs is not told). Always False when users are not counted."""
        if not self.count_users:
            return False
        s = self._s
        return any((c := s.conns.get(cid)) is not None and c.user_id == user_id
                   for cid in s.rooms.get(room_id, ()))

    def route(self, connection_id: str, caller: str, data: bytes) -> str | None:
        s = self._s
        with s.lock:
            conn = s.live_conn(connection_id)
            if conn is None:
                return None
            if conn.secret is not None and self.mailbox_size > 0:
                conn.directs += 1
                conn.mailbox.append((conn.directs, data))
                while len(conn.mailbox) > self.mailbox_size:
                    conn.mailbox.popleft()
                self.publish(f"server:{conn.server_id}",
                             b"%s:%d%s%s" % (POSITION_MARK, conn.directs, POSITION_MARK, data))
            else:
                self._route_to(conn.server_id, caller, data)
            return conn.server_id

    def remove_connections(self, connection_ids: Sequence[str]) -> list[RemovedConnection | None]:
        with self._s.lock:
            return [self._remove(cid) for cid in connection_ids]

    def _remove(self, cid: str) -> RemovedConnection | None:
        s = self._s
        conn = s.live_conn(cid)
        if conn is None:
            return None
        del s.conns[cid]
        s.server_conns.get(conn.server_id, set()).discard(cid)
        self._discard_user(conn.user_id, cid)
        left = tuple(r for r in conn.rooms if not self._discard_member(r, cid)
                     and not self._user_stays(r, conn.user_id))
        return RemovedConnection(cid, conn.user_id, conn.server_id, left)

    def _discard_user(self, user_id: str, cid: str) -> None:
        ids = self._s.users.get(user_id)
        if ids is not None:
            ids.discard(cid)
            if not ids:
                del self._s.users[user_id]

    def _user_connections(self, user_id: str) -> list[RoomMember]:
        """The user's live connections; ids of expired ones are dropped (as in Redis)."""
        s = self._s
        found = []
        for cid in sorted(s.users.get(user_id, ())):
            conn = s.live_conn(cid)
            if conn is None:
                self._discard_user(user_id, cid)
            else:
                found.append(RoomMember(cid, user_id, conn.server_id))
        return found

    def user_connections(self, user_id: str) -> list[RoomMember]:
        with self._s.lock:
            return self._user_connections(user_id)

    def room_members(self, room_id: str) -> list[RoomMember]:
        s = self._s
        with s.lock:
            return [RoomMember(cid, conn.user_id, conn.server_id)
                    for cid in sorted(s.rooms.get(room_id, ()))
                    if (conn := s.live_conn(cid)) is not None]

    def clear_room(self, room_id: str) -> list[RoomMember]:
        s = self._s
        with s.lock:
            members = self.room_members(room_id)
            s.rooms.pop(room_id, None)
            for m in members:
                conn = s.conns[m.connection_id]
                conn.rooms = [r for r in conn.rooms if r != room_id]
            return members

    def _discard_member(self, room_id: str, cid: str) -> bool:
        """Remove a member; True if the room is now gone."""
        members = self._s.rooms.get(room_id)
        if members is None:
            return True
        members.discard(cid)
        if members:
            return False
        del self._s.rooms[room_id]
        return True

    def _route_to(self, owner: str, caller: str, data: bytes) -> None:
        if owner != caller:
            self.publish(f"server:{owner}", data)

    # bus
    def publish(self, channel: str, data: bytes) -> None:
        with self._s.lock:
            targets = [sub for sub in self._s.subscribers if channel in sub.channels]
        for sub in targets:
            sub.deliver(channel, data)

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for channel, data in items:
            self.publish(channel, data)

    def retry_delay(self, failures: int) -> float:
        return min(1.0, 0.05 * failures)

    # recovery
    def suspend_connection(self, connection_id: str, server_id: str, until: float,
                           ttl: float) -> bool:
        with self._s.lock:
            conn = self._s.live_conn(connection_id)
            if conn is None or conn.server_id != server_id or conn.secret is None:
                return False
            conn.suspended_until = until
            conn.expires = time.monotonic() + ttl
            return True

    def remove_suspended(self, connection_id: str, server_id: str) -> RemovedConnection | None:
        with self._s.lock:
            conn = self._s.live_conn(connection_id)
            if conn is None or conn.server_id != server_id or not conn.suspended_until:
                return None
            return self._remove(connection_id)

    def resume_connection(self, connection_id: str, secret: str, user_id: str, server_id: str,
                          new_secret: str) -> Resumed | None:
        with self._s.lock:
            conn = self._s.live_conn(connection_id)
            if (conn is None or conn.secret is None or conn.secret != secret
                    or conn.user_id != user_id):
                return None
            found = Resumed(conn.server_id, bool(conn.suspended_until), tuple(conn.rooms),
                            conn.directs)
            self._move(connection_id, conn, server_id)
            conn.suspended_until, conn.secret = 0.0, new_secret
            conn.expires = math.inf
            return found

    def read_mailbox(self, connection_id: str, after: int, limit: int) -> HistoryPage | None:
        with self._s.lock:
            conn = self._s.live_conn(connection_id)
            if conn is None:
                return None
            return HistoryPage("", conn.directs,
                               [row for row in conn.mailbox if row[0] > after][:limit])

    # history
    def publish_history(self, room_id: str, data: bytes, size: int,
                        ttl: float) -> tuple[str, int]:
        s = self._s
        channel = f"room:{room_id}"
        with s.lock:  # delivered under the lock: the bus sees the offsets in order
            entry = self._history_entry(room_id)
            entry.last += 1
            entry.entries.append((entry.last, data))
            while len(entry.entries) > size:
                entry.entries.popleft()
            entry.expires = time.monotonic() + ttl
            marked = b"%s%s:%d%s%s" % (POSITION_MARK, entry.epoch.encode(), entry.last,
                                        POSITION_MARK, data)
            for sub in s.subscribers:
                if channel in sub.channels:
                    sub.deliver(channel, marked)
            return entry.epoch, entry.last

    def _history_entry(self, room_id: str) -> _History:
        entry = self._s.live_history(room_id)
        if entry is None:
            entry = self._s.history[room_id] = _History(f"{time.time_ns() // 1000:x}", 0.0)
        return entry

    def history_position(self, room_id: str, ttl: float) -> tuple[str, int]:
        with self._s.lock:
            entry = self._history_entry(room_id)
            if entry.last == 0:
                entry.expires = time.monotonic() + ttl
            return entry.epoch, entry.last

    def read_history(self, room_id: str, after: int | None, limit: int) -> HistoryPage:
        with self._s.lock:
            entry = self._s.live_history(room_id)
            if entry is None:
                return HistoryPage(None, 0, [])
            if after is None:
                rows = list(entry.entries)[-limit:] if limit > 0 else []
            else:
                rows = [row for row in entry.entries if row[0] > after][:limit]
            return HistoryPage(entry.epoch, entry.last, rows)

    def close_idle(self) -> None:
        pass  # nothing pooled

    def subscription(self) -> _MemorySubscription:
        return _MemorySubscription(self._s)

    # reading
    def stats(self) -> tuple[int, int, list[ServerInfo]]:
        s = self._s
        with s.lock:
            live = [info for sid in sorted(s.server_index)
                    if (info := s.live_server(sid)) is not None]
            counted = [ServerInfo(i.server_id, i.host, i.port, i.pid, i.last_heartbeat,
                                  len(s.server_conns.get(i.server_id, ())))
                       for i in live]
            return sum(i.active_connections for i in counted), len(s.rooms), counted

    def close(self) -> None:
        """Nothing to release: the state lives as long as the process (like a Redis server)."""

    def room_sizes(self) -> list[tuple[str, int]]:
        with self._s.lock:
            return [(room, len(ids)) for room, ids in self._s.rooms.items() if ids]
