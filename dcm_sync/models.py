"""Plain values returned by the API: `ServerInfo`, `DistributedStats`, `RoomMember`,
and the record of a connection removed from shared state."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ServerInfo", "DistributedStats", "RoomMember", "RemovedConnection"]


@dataclass(frozen=True)
class ServerInfo:
    """One live server as the shared state records it."""

    server_id: str
    host: str
    port: int
    pid: int
    last_heartbeat: float  # epoch seconds
    active_connections: int


@dataclass(frozen=True)
class DistributedStats:
    """Cluster-wide figures. ``local_connections`` is this process's own count (0 for an Emitter)."""

    total_connections: int
    total_rooms: int
    active_servers: int
    local_connections: int
    server_stats: list[ServerInfo] = field(default_factory=list)


@dataclass(frozen=True)
class RemovedConnection:
    """What the shared state held about a connection at the moment it was removed.

    ``rooms_left`` are its rooms that still have members (who are to be told). A failure
    cleanup with recovery on does not remove a recoverable connection: it suspends it (until
    ``suspended_until``, epoch seconds; 0 for a removal) and ``server_id`` is the adopter."""

    connection_id: str
    user_id: str
    server_id: str
    rooms_left: tuple[str, ...]
    suspended_until: float = 0.0


@dataclass(frozen=True)
class RoomMember:
    """One connection as the shared state knows it: whose it is and which server holds it."""

    connection_id: str
    user_id: str
    server_id: str
