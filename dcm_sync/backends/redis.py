"""``redis://``, ``rediss://``, ``unix://`` and ``redis(s)+sentinel://``: one Redis master.

Joins, leaves and removals are each one atomic script; the bus is classic pub/sub. Key names
are in `.redis_keys` (the same as in Cluster), the connection settings in
`.redis_urls`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence

import redis

from ..concurrency import HandOffLock
from ..errors import BackendUnavailableError
from ..models import RemovedConnection, RoomMember
from .base import ConnectionRecord, HistoryPage, Resumed, RoomChange, rooms_full, user_full
from .redis_base import (
    CHUNK,
    RedisBase,
    as_str,
    members_of,
    position,
    removed_row,
    translate_errors,
)
from .redis_keys import room_bucket, server_tag
from .redis_pubsub import RedisSubscription
from .redis_typed import close, redis_client
from .redis_urls import master_pools

__all__ = ["RedisBackend"]

logger = logging.getLogger(__name__)


class RedisBackend(RedisBase):
    def __init__(self, url: str, key_prefix: str, timeout: float = 2.0,
                 ca_file: str | None = None) -> None:
        super().__init__(key_prefix, timeout)
        pools = master_pools(url, timeout, ca_file)
        self.url = pools.shown_url  # for messages: never the password
        self._r = redis_client(connection_pool=pools.commands)
        # PUBLISH and routing (the per-message commands) go over one dedicated connection:
        # a pool checkout polls the socket first, which costs more than the command itself
        # under gevent. Connected on first use.
        self._hot_pool, self._hot_held = pools.hot, pools.hot_held
        self._new_sub_pool, self._close_shared = pools.subscriber, pools.close_shared
        self._hot_client: redis.Redis | None = None
        self._hot_lock = HandOffLock()  # fair under gevent: see HandOffLock
        self._hot_failed_at = 0.0  # monotonic time the hot connection last found Redis unreachable
        self._register_scripts("add", "remove", "pop_server", "join", "leave", "route",
                               "heartbeat", "to_live_server", "forget", "room_members", "restore", "user_add",
                               "user_connections", "clear_room", "room_add", "server_count",
                               "history_append", "history_read", "history_start", "suspend",
                               "remove_suspended", "resume", "mailbox_read")

    @contextlib.contextmanager
    def _hot(self, what: str) -> Iterator[redis.Redis]:
        """The dedicated connection, for one command at a time. A caller that waited for it
        while the command before failed for want of Redis fails at once: behind a stalled
        Redis no caller takes longer than about ``timeout``, however many wait."""
        start = time.monotonic()
        if not self._hot_lock.acquire(timeout=self._timeout):
            raise BackendUnavailableError(
                f"Redis did not answer within {self._timeout:.1f}s during {what}")
        try:
            if self._hot_failed_at > start:
                raise BackendUnavailableError(
                    f"Redis unreachable during {what}: the call before this one failed")
            with translate_errors(what):
                if self._hot_client is None:  # connected on first use
                    self._hot_client = redis_client(connection_pool=self._hot_pool,
                                                    single_connection_client=self._hot_held)
                yield self._hot_client
        except BackendUnavailableError:
            self._hot_failed_at = time.monotonic()
            raise
        finally:
            self._hot_lock.release()

    def publish_to_server(self, server_id: str, data: bytes) -> bool:
        with self._hot("publishing to a server") as hot:
            return bool(self._script("to_live_server", [self._keys.server(server_id)],
                                     [self._keys.channel(f"server:{server_id}"), data], hot))

    def pop_server_connections(self, server_id: str, count: int, adopter: str | None = None,
                               until: float = 0.0, ttl: float = 0.0) -> list[RemovedConnection]:
        with translate_errors("failure cleanup"):
            rows = self._script("pop_server", [self._keys.server_connection_sets(server_id)[0],
                                               self._keys.server(server_id)],
                                [self.key_prefix, count, 1, self._counted, server_id,
                                 adopter or "", server_tag(adopter) if adopter else "",
                                 int(until * 1000), max(1, int(ttl * 1000))])
        return [r for r in map(removed_row, rows) if r is not None]

    # recovery
    def suspend_connection(self, connection_id: str, server_id: str, until: float,
                           ttl: float) -> bool:
        with translate_errors("suspending a connection"):
            return bool(self._script("suspend", [self._keys.connection(connection_id)],
                                     [self.key_prefix, connection_id, server_id,
                                      int(until * 1000), max(1, int(ttl * 1000))]))

    def remove_suspended(self, connection_id: str, server_id: str) -> RemovedConnection | None:
        with translate_errors("removing a suspended connection"):
            return removed_row(self._script("remove_suspended", [],
                                            [self.key_prefix, self._counted, server_id,
                                             connection_id]))

    def resume_connection(self, connection_id: str, secret: str, user_id: str, server_id: str,
                          new_secret: str) -> Resumed | None:
        k = self._keys
        with translate_errors("resuming a connection"):
            row = self._script("resume", [k.connection(connection_id),
                                          k.server_connections(server_id, connection_id)],
                               [self.key_prefix, connection_id, secret, user_id, server_id,
                                server_tag(server_id), new_secret])
        if not row:
            return None
        owner, suspended, rooms, last = row
        try:
            names = json.loads(rooms)
        except ValueError:
            names = []
        return Resumed(as_str(owner), bool(suspended),
                       tuple(r for r in names if isinstance(r, str)), int(last))

    def read_mailbox(self, connection_id: str, after: int, limit: int) -> HistoryPage | None:
        k = self._keys
        with translate_errors("reading a mailbox"):
            flat = self._script("mailbox_read", [k.connection(connection_id),
                                                 k.mailbox(connection_id)],
                                [self.key_prefix, connection_id, after, limit])
        if not flat:
            return None
        rest = flat[1:]
        return HistoryPage("", int(flat[0]),
                           [(int(rest[i]), bytes(rest[i + 1])) for i in range(0, len(rest), 2)])

    def add_connection(self, server_id: str, record: ConnectionRecord,
                       max_per_user: int = 0) -> bool:
        with translate_errors("connection registration"):
            added = self._add(server_id, record, max_per_user, with_user=True)
        if added == -1:
            raise user_full(record.user_id, max_per_user)
        return added == 1

    def room_members(self, room_id: str) -> list[RoomMember]:
        with translate_errors("reading a room's members"):
            return members_of(self._script("room_members", [], [self.key_prefix, room_id]))

    def user_connections(self, user_id: str) -> list[RoomMember]:
        with translate_errors("reading a user's connections"):
            return members_of(self._script("user_connections", [], [self.key_prefix, user_id]),
                              user=user_id)

    def clear_room(self, room_id: str) -> list[RoomMember]:
        with translate_errors("closing a room"):
            return members_of(self._script("clear_room", [], [self.key_prefix, room_id]))

    def _room_op(self, name: str, cid: str, room: str, caller: str, route: bytes,
                 max_rooms: int, notice: bytes | None) -> RoomChange | None:
        k = self._keys
        with translate_errors("room membership change"):
            result = self._script(name, [k.connection(cid), k.room(room),
                                         k.rooms_index(room_bucket(room))],
                                  [self.key_prefix, cid, caller, route, room, max_rooms,
                                   self._counted, notice or b""])
        if result == 0:
            raise rooms_full(cid, max_rooms)
        if result is None:
            return None
        owner, user, tell = result
        return RoomChange(as_str(owner), as_str(user), bool(tell), bool(tell and notice))

    def join_room(self, connection_id: str, room_id: str, caller: str, route: bytes,
                  max_rooms: int = 0, user_id: str | None = None,
                  notice: bytes | None = None) -> RoomChange | None:
        return self._room_op("join", connection_id, room_id, caller, route, max_rooms, notice)

    def leave_room(self, connection_id: str, room_id: str, caller: str, route: bytes,
                   user_id: str | None = None,
                   notice: bytes | None = None) -> RoomChange | None:
        return self._room_op("leave", connection_id, room_id, caller, route, 0, notice)

    def route(self, connection_id: str, caller: str, data: bytes) -> str | None:
        with self._hot("routing to a connection's server") as hot:
            owner = self._script("route", [self._keys.connection(connection_id)],
                                 self._route_args(connection_id, caller, data), hot)
        return None if owner is None else as_str(owner)

    def remove_connections(self, connection_ids: Sequence[str]) -> list[RemovedConnection | None]:
        out: list[RemovedConnection | None] = []
        with translate_errors("connection removal"):
            for start in range(0, len(connection_ids), CHUNK):
                rows = self._script("remove", [], [self.key_prefix, self._counted,
                                                   *connection_ids[start:start + CHUNK]])
                out.extend(removed_row(row) for row in rows)
        return out

    # bus
    def publish(self, channel: str, data: bytes) -> None:
        with self._hot("PUBLISH") as hot:
            hot.publish(self._keys.channel(channel), data)

    def publish_history(self, room_id: str, data: bytes, size: int,
                        ttl: float) -> tuple[str, int]:
        with self._hot("appending to a room's history") as hot:
            return position(self._script("history_append", self._history_keys(room_id),
                                         self._history_args(room_id, data, size, ttl), hot))

    def close_idle(self) -> None:
        try:
            self._r.connection_pool.disconnect(inuse_connections=False)
        except (redis.RedisError, OSError) as exc:
            logger.debug("closing idle Redis connections: %s", exc)

    def subscription(self) -> RedisSubscription:
        return RedisSubscription(redis_client(connection_pool=self._new_sub_pool()), self._keys)

    def close(self) -> None:
        hot = [self._hot_client] if self._hot_client is not None else []
        for client in (self._r, *hot):
            try:
                close(client)
                client.connection_pool.disconnect()
            except (redis.RedisError, OSError) as exc:
                logger.debug("closing Redis client: %s", exc)
        try:
            self._close_shared()
        except (redis.RedisError, OSError) as exc:
            logger.debug("closing the connections to the Sentinels: %s", exc)
