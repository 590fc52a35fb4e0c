"""This process's own sockets: `LocalConnectionManager`.

It knows nothing of other servers. The distributed manager keeps it in step with the shared
state; used on its own it is a thread-safe registry of sockets and their rooms.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from .errors import ConnectionLimitError
from .outbox import KeepaliveSocket, Outbox, OutboxSocket, SendPolicy

__all__ = ["LocalConnectionManager", "LocalConnection", "WebSocketLike", "Hold"]

logger = logging.getLogger(__name__)


class WebSocketLike(Protocol):
    """Anything with ``send(str)`` and ``close()``: gevent-websocket, simple-websocket, ..."""

    def send(self, message: str) -> object: ...

    def close(self) -> object: ...


#: (key, position, frame): key a room, or "" for direct messages; position (epoch, number)
Held = tuple[str, "tuple[str, int] | None", str]


class Hold:
    """Frames kept back from a socket while what it missed is replayed (a resume), then sent
    in order after the replay."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: list[Held] = []
        self._open = True

    def offer(self, frame: Held) -> bool:
        """Keep ``frame`` back; False once released (the caller sends it)."""
        with self._lock:
            if self._open:
                self._frames.append(frame)
            return self._open

    def release(self, send: Callable[[Held], object]) -> None:
        """Send what was kept, in order; frames offered meanwhile follow, and from then on
        `offer` declines."""
        while True:
            with self._lock:
                frames, self._frames = self._frames, []
                if not frames:
                    self._open = False
                    return
            for frame in frames:
                send(frame)


@dataclass(eq=False)
class LocalConnection:
    """One socket held by this process."""

    connection_id: str
    ws: WebSocketLike
    user_id: str
    connected_at: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.monotonic)
    rooms: set[str] = field(default_factory=set)
    send_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    policy: SendPolicy = field(default_factory=SendPolicy, repr=False)
    #: a recoverable connection's resume secret: its messages go out as protocol frames
    #: (`dcm_sync.protocol`); None for a plain one
    secret: str | None = field(default=None, repr=False)
    #: frames kept back during a resume's replay
    hold: Hold | None = field(default=None, repr=False)
    #: key (room, or "" for direct messages) -> (epoch, number) of the last numbered frame
    #: sent: one that is not past it is a repeat (see `advance`)
    marks: dict[str, tuple[str, int]] = field(default_factory=dict, repr=False)

    def advance(self, key: str, position: tuple[str, int]) -> bool:
        """Record ``position`` as sent for ``key``; False (a repeat: not to send) if a frame
        of the same epoch at or past it was sent already."""
        mark = self.marks.get(key)
        if mark is not None and mark[0] == position[0] and position[1] <= mark[1]:
            return False
        self.marks[key] = position
        return True

    def __post_init__(self) -> None:
        ws = self.ws
        if isinstance(ws, OutboxSocket):
            self.outbox: Outbox | None = Outbox(ws, self.policy, self.connection_id, self.send_lock)
            #: sockets with the same (non-None) encoding share one encoding of a message
            self.encoding: Hashable | None = ws.encoding
            self._encode = ws.encode_text
        else:
            self.outbox, self.encoding = None, None
        #: the socket the manager pings, if it can be (see `ping`)
        self.pingable = ws if self.outbox is not None and isinstance(ws, KeepaliveSocket) else None
        self.pinged_at = 0.0  # monotonic time of the last ping sent (0: none)

    @property
    def activity(self) -> float:
        """Monotonic time of the last activity: a message (or a touch), or any frame the
        client sent on a socket that tells (a pong counts)."""
        sock = self.pingable
        return self.last_activity if sock is None else max(self.last_activity, sock.last_received)

    def ping(self) -> None:
        """Ask the client to answer (through the outbox: never inside a message)."""
        if self.pingable is not None and self.outbox is not None:
            self.pinged_at = time.monotonic()
            self.outbox.put_control(self.pingable.keepalive())

    def encode(self, text: str) -> bytes:
        """``text`` as this socket's wire carries it; only for sockets with an ``encoding``."""
        return self._encode(text)

    def send(self, text: str, encoded: bytes | None = None) -> bool:
        """Send one text message; False if the socket's outbox is full (a slow consumer: the
        caller cuts it). ``encoded``: ``text`` as encoded by a socket of the same ``encoding``
        (a room delivery encodes once). Sockets without an outbox are written here, in turn."""
        outbox = self.outbox
        if outbox is None:
            with self.send_lock:
                self.ws.send(text)
            return True
        return outbox.put(text, encoded)

    def close(self, code: int = 1000, reason: str = "", slow: bool = False) -> None:
        """Close the socket after what its outbox holds (``slow``: dropping it), without
        waiting for the client; sockets without an outbox get ``ws.close()``."""
        if self.outbox is not None:
            self.outbox.close(code, reason, drop=slow)
        else:
            self.ws.close()


class LocalConnectionManager:
    """Sockets of this process, their rooms, and their last activity, behind one lock."""

    def __init__(self, max_connections: int = 10_000, send_policy: SendPolicy | None = None) -> None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError("max_connections must be int")
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.max_connections = max_connections
        #: outbox limits and hooks of the sockets added without a policy of their own (the
        #: distributed manager gives each socket its own, from its Config)
        self.send_policy = send_policy or SendPolicy()
        self._lock = threading.RLock()
        self._conns: dict[str, LocalConnection] = {}
        self._rooms: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, connection_id: object) -> bool:
        return connection_id in self._conns

    def add(self, connection_id: str, ws: WebSocketLike, user_id: str,
            policy: SendPolicy | None = None, secret: str | None = None,
            hold: Hold | None = None) -> LocalConnection:
        """Hold a new socket; [`ConnectionLimitError`][] when full, ``ValueError`` if the id is
        taken. ``policy``: its outbox's limits and hooks (default: its `send_policy`);
        ``secret``, ``hold``: see `LocalConnection`."""
        with self._lock:
            if len(self._conns) >= self.max_connections:
                raise ConnectionLimitError(
                    f"this server holds {len(self._conns)} connections; max_connections is "
                    f"{self.max_connections}"
                )
            if connection_id in self._conns:
                raise ValueError(f"connection {connection_id!r} is already registered")
            conn = LocalConnection(connection_id, ws, user_id, policy=policy or self.send_policy,
                                   secret=secret, hold=hold)
            self._conns[connection_id] = conn
            return conn

    def get(self, connection_id: str) -> LocalConnection | None:
        return self._conns.get(connection_id)

    def remove(self, connection_id: str) -> tuple[LocalConnection, list[str]] | None:
        """Drop a socket; return it and the rooms that now have no local member (None if unknown)."""
        with self._lock:
            conn = self._conns.pop(connection_id, None)
            if conn is None:
                return None
            emptied = [room for room in conn.rooms if self._discard_member(room, connection_id)]
            return conn, emptied

    def join(self, connection_id: str, room_id: str) -> bool | None:
        """Put a socket in a room; True if it is the room's first local member, None if unknown."""
        with self._lock:
            conn = self._conns.get(connection_id)
            if conn is None:
                return None
            conn.rooms.add(room_id)
            members = self._rooms.setdefault(room_id, set())
            first = not members
            members.add(connection_id)
            return first

    def leave(self, connection_id: str, room_id: str) -> bool | None:
        """Take a socket out of a room; True if the room has no local member left, None if unknown."""
        with self._lock:
            conn = self._conns.get(connection_id)
            if conn is None:
                return None
            if room_id not in conn.rooms:
                return False
            conn.rooms.discard(room_id)
            return self._discard_member(room_id, connection_id)

    def _discard_member(self, room_id: str, connection_id: str) -> bool:
        members = self._rooms.get(room_id)
        if members is None:
            return False
        members.discard(connection_id)
        if members:
            return False
        del self._rooms[room_id]
        return True

    def touch(self, connection_id: str) -> bool:
        conn = self._conns.get(connection_id)
        if conn is None:
            return False
        conn.last_activity = time.monotonic()
        return True

    def members(self, room_id: str, exclude: Iterable[str] = ()) -> list[LocalConnection]:
        """A snapshot of the room's local sockets, less ``exclude``."""
        with self._lock:
            ids = self._rooms.get(room_id)
            if not ids:
                return []
            skip = set(exclude)
            return [self._conns[c] for c in ids if c not in skip]

    def has_members(self, room_id: str) -> bool:
        return room_id in self._rooms

    def rooms(self) -> list[str]:
        """Rooms with at least one local member."""
        with self._lock:
            return list(self._rooms)

    def connections(self) -> list[LocalConnection]:
        with self._lock:
            return list(self._conns.values())

    def stale(self, idle_seconds: float) -> list[str]:
        """Ids of sockets with no activity for more than ``idle_seconds``."""
        limit = time.monotonic() - idle_seconds
        with self._lock:
            return [c.connection_id for c in self._conns.values() if c.activity < limit]
