"""Emitter: reach users from a plain script or cron job without being a server."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .backends import open_backend
from .config import Config
from .departures import notice_publications
from .envelopes import DirectMessage, EnvelopeWriter, RoomMessage
from .errors import DCMError
from .history import HistoryEntry, RoomHistory
from .messages import encode_message, exclusions, new_id, validate_id
from .models import DistributedStats
from .presence import Presence, PresenceMethods, rooms_page

__all__ = ["Emitter"]


class Emitter(PresenceMethods):
    """Publishes to rooms and connections; registers no server and runs no background loop.

    ``Emitter("redis://127.0.0.1:6379/0", key_prefix="dcm:")`` must use the servers' URL and
    prefix, and their ``signing_keys`` when they sign (only the first key is used here);
    ``ca_file`` is their ``redis_ca_file``, ``room_notices`` their ``room_notices``, and
    ``history_rooms``, ``history_size``, ``history_ttl`` their room history settings (its
    broadcasts to those rooms are kept in their history, as a server's are).
    Use it as a context manager, or call [`close`][].
    """

    def __init__(self, redis_url: str, key_prefix: str = "dcm:",
                 max_message_bytes: int = 1024 * 1024, timeout: float = 2.0,
                 signing_keys: Sequence[str | bytes] = (), ca_file: str | None = None,
                 room_notices: str = "connections", history_rooms: Sequence[str] = (),
                 history_size: int = 100, history_ttl: float = 300.0) -> None:
        cfg = Config(redis_url=redis_url, key_prefix=key_prefix,
                     max_message_bytes=max_message_bytes, redis_timeout=timeout,
                     signing_keys=signing_keys, redis_ca_file=ca_file, room_notices=room_notices,
                     history_rooms=history_rooms, history_size=history_size,
                     history_ttl=history_ttl)
        self._max = cfg.max_message_bytes
        self.origin = f"emitter:{new_id()}"
        self._envelope = EnvelopeWriter(self.origin, cfg.signing_keys, cfg.key_prefix)
        self._backend = open_backend(cfg.redis_url, cfg.key_prefix, timeout=cfg.redis_timeout,
                                     ca_file=cfg.redis_ca_file,
                                     count_users=cfg.room_notices == "users")
        self._history = RoomHistory(self._backend, cfg.history_rooms, cfg.history_size,
                                    cfg.history_ttl, self._envelope.signer)
        tell = cfg.room_notices != "off"
        self._closed = False
        self._presence = Presence(self._backend, self._envelope, self._max,
                                  lambda removed, reason: notice_publications(
                                      removed, reason, self._envelope, self._max) if tell else [])

    def broadcast_to_room(self, room_id: str, message: Any,
                          exclude: Iterable[str] | None = None) -> None:
        """Send ``message`` to every member of the room on every server."""
        self._check_open()
        validate_id(room_id, "room_id")
        text = encode_message(message, self._max)
        skip = sorted(exclusions(exclude))
        data = self._envelope(RoomMessage(room_id, text, tuple(skip)))
        if self._history.keeps(room_id):
            self._history.append(room_id, data)
        else:
            self._backend.publish(f"room:{room_id}", data)

    def get_room_history(self, room_id: str, limit: int = 50) -> list[HistoryEntry]:
        """The room's last ``limit`` messages, oldest first (see the manager's
        [`get_room_history`][dcm_sync.DistributedConnectionManager.get_room_history])."""
        self._check_open()
        validate_id(room_id, "room_id")
        return self._history.latest(room_id, limit)

    def send_to_connection(self, connection_id: str, message: Any) -> bool:
        """Send to one connection; False if no server knows it."""
        self._check_open()
        validate_id(connection_id, "connection_id")
        text = encode_message(message, self._max)
        data = self._envelope(DirectMessage(connection_id, text))
        return self._backend.route(connection_id, self.origin, data) is not None

    def get_distributed_stats(self) -> DistributedStats:
        """Cluster-wide figures, as a server's (``local_connections`` is 0)."""
        self._check_open()
        total, rooms, servers = self._backend.stats()
        return DistributedStats(total, rooms, len(servers), 0, servers)

    def get_rooms(self, offset: int = 0, limit: int = 50) -> list[tuple[str, int]]:
        """``(room_id, members)`` of the rooms with members, largest first (ties by name): up
        to ``limit`` from ``offset`` on. Each page reads the whole room index."""
        self._check_open()
        return rooms_page(self._backend, offset, limit)

    def close(self) -> None:
        """Release the connection to the backend. Idempotent."""
        if not self._closed:
            self._closed = True
            self._backend.close()

    def _check_open(self) -> None:
        if self._closed:
            raise DCMError("this emitter is closed")

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
