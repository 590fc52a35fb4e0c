"""``redis+cluster://`` and ``rediss+cluster://``: Redis Cluster with sharded pub/sub.

Each script touches one slot (`.redis_keys`). What a single Redis does in one script, this
backend does in two, in an order that keeps the shared state consistent if another server
changes the same connection in between:

* join: the room set first (room bucket slot), then the connection's room list and the notice
  to its owner (server slot). If the connection turned out unknown the id is taken back out of
  the room. A removal that runs between the two either sees the room in the list (and takes the
  id out of the room itself) or makes the second step find no connection.
* leave: the room set first, then the connection's list and the notice.
* removal (and a dead server's cleanup batch): the connections' records first (server slot; the
  script returns each one's rooms and, in the same step, notes them in ``removing:{T}``), then
  the room sets, then the note is deleted and the id taken out of its user's bucket.
* registration: the connection's record first, then its user's bucket (user bucket slot, where
  the cap on connections per user is checked); a refused or failed second step takes the record
  back. A user's bucket may keep the id of a connection whose removal was cut short between its
  steps: reading the user's connections drops such ids (and the cap check reads them first when
  the user is at the cap).
* closing a room: the room's set first (its members, taken out), then each member's room list.

A removal whose second step never happens (its process killed, or the room's shard unreachable)
is finished by whoever reads the note next: every heartbeat of a server reads the notes of its
own tag, and a dead server's cleanup reads those of the dead server's tag before each batch.
Taking an id out of a room set twice is harmless. Rooms, room channels and the room index are
spread over the shards by name; the server index is one key.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from ..concurrency import HandOffLock
from ..config import redact_url
from ..errors import BackendError
from ..models import RemovedConnection, RoomMember
from .base import ConnectionRecord, HistoryPage, Resumed, RoomChange, rooms_full, user_full
from .redis_base import (
    CHUNK,
    TRANSIENT_ERRORS,
    RedisBase,
    as_str,
    position,
    removed_row,
    translate_errors,
)
from .redis_cluster_steps import SecondSteps
from .redis_keys import server_tag, unpack_record
from .redis_sharded import ShardedSubscription
from .redis_typed import close, evalsha
from .redis_urls import cluster_clients

__all__ = ["RedisClusterBackend"]

logger = logging.getLogger(__name__)


def _no_recovery() -> BackendError:
    return BackendError("connection-state recovery is not available on Redis Cluster")


class RedisClusterBackend(RedisBase):
    PUBLISH = "SPUBLISH"  # sharded pub/sub: a message costs the channel's shard only
    #: a resumed connection's records would span its old and new server's slots
    supports_recovery = False

    def __init__(self, url: str, key_prefix: str, timeout: float = 2.0,
                 ca_file: str | None = None) -> None:
        super().__init__(key_prefix, timeout)
        self.url = redact_url(url)
        with translate_errors(f"connecting to the Redis Cluster at {self.url}"):
            self._r, self._subscriber, self._held = cluster_clients(url, timeout, ca_file)
        self._register_scripts("add", "pop_server", "route", "heartbeat", "to_live_server",
                               "room_add", "room_del", "conn_room", "conn_remove", "forget",
                               "user_add", "user_drop", "user_ids", "room_clear", "conn_leave",
                               "server_count", "restore",
                               "history_append", "history_read", "history_start")
        self._subscribed_before = False
        self._steps = SecondSteps(self._r, self._keys, self._run_many, self._room_keys,
                                  lambda: self._counted)
        # Per-message commands (SPUBLISH, routing) go over one held connection to the master of
        # the slot: redis-py's cluster client costs more than the command itself (~55 us a call)
        self._hot: dict[str, redis.Redis] = {}
        self._hot_lock = HandOffLock()  # fair under gevent: see HandOffLock

    def _pipeline_evalsha(self, name: str,
                          calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        sha = self._scripts[name].sha
        node_of = self._r.get_node_from_key
        pipe = self._r.pipeline(transaction=False)
        for keys, args in calls:
            # the node named here, or redis-py asks a server (COMMAND GETKEYS) for every
            # EVALSHA's keys; a MOVED answer is retried through the slot map
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args,
                                 target_nodes=node_of(keys[0]))
        return list(pipe.execute(raise_on_error=False))

    def _load_on(self, name: str, keys: Sequence[str]) -> None:
        """Load a script on the masters of ``keys`` (only: another master may be down)."""
        nodes = {node.name: node for node in map(self._r.get_node_from_key, keys)}
        for node in nodes.values():
            self._r.execute_command("SCRIPT LOAD", self._scripts[name].script, target_nodes=node)

    def _script(self, name: str, keys: Sequence[str], args: Sequence[Any],
                client: Any = None) -> Any:
        # redis-py's Script would load a missing script on every master, failing while one of
        # them (unrelated to these keys) is down
        sha = self._scripts[name].sha
        try:
            return self._r.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            self._load_on(name, keys[:1])
            return self._r.evalsha(sha, len(keys), *keys, *args)

    def _on_master(self, key: str, call: Callable[[redis.Redis], Any],
                   fallback: Callable[[], Any]) -> Any:
        """``call(client)`` on a held connection to the master of ``key``'s slot. If the slot
        moved, the master changed or the connection failed, ``fallback()`` through the cluster
        client, which follows redirections and refreshes its slot map (errors raised there
        are the caller's)."""
        node = self._r.get_node_from_key(key)
        if not self._hot_lock.acquire(timeout=self._timeout):
            return fallback()
        try:
            client = self._hot.get(node.name)
            if client is None:
                client = self._hot[node.name] = self._held(node)
            try:
                return call(client)
            except NoScriptError:  # a master that never saw the script
                for script in self._scripts.values():
                    client.script_load(script.script)
                return call(client)
            except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.MovedError,
                    redis.exceptions.AskError, *TRANSIENT_ERRORS) as exc:
                logger.debug("held connection to %s: %s; through the cluster client", node.name, exc)
                self._hot.pop(node.name, None)
                close(client)
        finally:
            self._hot_lock.release()
        return fallback()

    # servers
    def publish_to_server(self, server_id: str, data: bytes) -> bool:
        with translate_errors("publishing to a server"):
            return bool(self._script("to_live_server", [self._keys.server(server_id)],
                                     [self._keys.channel(f"server:{server_id}"), data]))

    def _after_heartbeat(self, server_id: str) -> None:
        """Back in the index (as on a single Redis) and, in the same pipeline (two shards at
        once), the notes of interrupted removals of this server's tag, finished if any."""
        tag = server_tag(server_id)
        pipe = self._r.pipeline(transaction=False)
        pipe.sadd(self._keys.servers_index, server_id)
        pipe.hgetall(self._keys.removing(tag))
        notes = pipe.execute()[1]
        if notes:
            try:
                self._steps.finish(tag, notes)
            except BackendError as exc:  # a room's shard still away: a later beat finishes them
                logger.debug("interrupted removals not finished yet: %s", exc)

    def pop_server_connections(self, server_id: str, count: int, adopter: str | None = None,
                               until: float = 0.0, ttl: float = 0.0) -> list[RemovedConnection]:
        # a cleaner that stopped between the two steps left notes: finish them first, and
        # announce the dead server's own ones with this batch
        done = [r for r in self._steps.finish_tag(server_tag(server_id))
                if r.server_id == server_id]
        with translate_errors("failure cleanup"):
            rows = self._script("pop_server", [self._keys.server_connection_sets(server_id)[0],
                                               self._keys.server(server_id)],
                                [self.key_prefix, count, 0, self._counted, server_id,
                                 "", "", 0, 1])
            return done + self._steps.empty_rooms([r for r in map(removed_row, rows) if r is not None])

    # connections and rooms
    def add_connection(self, server_id: str, record: ConnectionRecord,
                       max_per_user: int = 0) -> bool:
        cid, user = record.connection_id, record.user_id
        with translate_errors("connection registration"):
            if not self._add(server_id, record, 0, with_user=False):
                return False
            indexed = False
            try:
                indexed = self._index_user(cid, user, max_per_user)
            finally:
                if not indexed:  # refused at the cap, or the user's shard failed
                    self._take_back_connection(cid)
        if not indexed:
            raise user_full(user, max_per_user)
        return True

    def _index_user(self, cid: str, user: str, max_per_user: int) -> bool:
        """Add ``cid`` to its user's bucket unless the user is at the cap; at the cap, ids of
        connections that are gone are dropped first and the cap checked again."""
        key = self._keys.user(user)
        if self._script("user_add", [key], [cid, max_per_user, user]):
            return True
        self.user_connections(user)  # drops the ids of connections that are gone
        return bool(self._script("user_add", [key], [cid, max_per_user, user]))

    def _take_back_connection(self, cid: str) -> None:
        try:
            self._script("conn_remove", [self._keys.connection(cid)], [self.key_prefix, cid])
        except redis.RedisError as exc:
            logger.warning("connection %s left registered after a failed registration: %s",
                           cid, exc)

    def _members(self, ids: Sequence[str]) -> list[RoomMember]:
        """The connections of ``ids`` whose record exists: one pipeline, split by shard."""
        pipe = self._r.pipeline(transaction=False)
        for cid in ids:
            pipe.hget(self._keys.connection(cid), cid)
        rows = [unpack_record(v) for v in pipe.execute()] if ids else []
        found = [RoomMember(cid, *row) for cid, row in zip(ids, rows, strict=True) if row]
        return sorted(found, key=lambda m: m.connection_id)

    def room_members(self, room_id: str) -> list[RoomMember]:
        with translate_errors("reading a room's members"):
            return self._members([as_str(c) for c in self._r.smembers(self._keys.room(room_id))])

    def user_connections(self, user_id: str) -> list[RoomMember]:
        key = self._keys.user(user_id)
        with translate_errors("reading a user's connections"):
            ids = [as_str(c) for c in self._script("user_ids", [key], [user_id])]
            found = self._members(ids)
            gone = set(ids) - {m.connection_id for m in found}
            if gone:  # removals cut short between their steps
                self._script("user_drop", [key], [user_id, *sorted(gone)])
        return found

    def clear_room(self, room_id: str) -> list[RoomMember]:
        k = self._keys
        with translate_errors("closing a room"):
            ids = [as_str(c) for c in self._script(
                "room_clear", [*self._room_keys(room_id)[:2], k.room_users(room_id)], [room_id])]
            rows = self._run_many("conn_leave", [([k.connection(c)], [self.key_prefix, c, room_id])
                                                 for c in ids])
        found = [RoomMember(cid, as_str(row[0]), as_str(row[1]))
                 for cid, row in zip(ids, rows, strict=True) if row]
        return sorted(found, key=lambda m: m.connection_id)

    def _conn_room(self, cid: str, room: str, caller: str, route: bytes, join: bool,
                   max_rooms: int = 0) -> tuple[str, str] | None:
        found = self._script("conn_room", [self._keys.connection(cid)],
                             [self.key_prefix, cid, caller, route, room, int(join), max_rooms])
        if found == 0:
            raise rooms_full(cid, max_rooms)
        return None if found is None else (as_str(found[0]), as_str(found[1]))

    def _user_of(self, cid: str, user_id: str | None) -> str:
        """The connection's user, read only when users are counted and the caller did not know."""
        if user_id is not None or not self.count_users:
            return user_id or ""
        record = unpack_record(self._r.hget(self._keys.connection(cid), cid))
        return record[0] if record else ""

    def join_room(self, connection_id: str, room_id: str, caller: str, route: bytes,
                  max_rooms: int = 0, user_id: str | None = None,
                  notice: bytes | None = None) -> RoomChange | None:
        room_keys = self._room_keys(room_id)
        with translate_errors("room membership change"):
            user = self._user_of(connection_id, user_id)
            added = self._script("room_add", room_keys,
                                 [connection_id, room_id, user, self._counted])
            found = None
            try:
                found = self._conn_room(connection_id, room_id, caller, route, True, max_rooms)
            finally:
                # unknown connection, in too many rooms, or the second step failed
                if found is None and added:
                    self._take_back(room_keys, connection_id, room_id, user)
        return None if found is None else self._told(room_id, found, added == 2, notice)

    def _told(self, room: str, found: tuple[str, str], tell: bool,
              notice: bytes | None) -> RoomChange:
        """The change, its notice published to the room's channel (an untagged channel: not
        from the scripts, whose keys are in other slots) when the members are to be told."""
        if tell and notice:
            self.publish(f"room:{room}", notice)
        return RoomChange(found[0], found[1], tell, bool(tell and notice))

    def _take_back(self, room_keys: list[str], cid: str, room: str, user: str) -> None:
        try:
            self._script("room_del", room_keys, [cid, room, user, self._counted])
        except redis.RedisError as exc:
            logger.warning("connection %s left in room %r after a failed join: %s", cid, room, exc)

    def leave_room(self, connection_id: str, room_id: str, caller: str, route: bytes,
                   user_id: str | None = None,
                   notice: bytes | None = None) -> RoomChange | None:
        room_keys = self._room_keys(room_id)
        with translate_errors("room membership change"):
            user = self._user_of(connection_id, user_id)
            tell = self._script("room_del", room_keys,
                                [connection_id, room_id, user, self._counted])
            found = self._conn_room(connection_id, room_id, caller, route, False)
        if found is None:
            return None
        return self._told(room_id, found, tell == 1, notice)

    def route(self, connection_id: str, caller: str, data: bytes) -> str | None:
        key = self._keys.connection(connection_id)
        args = self._route_args(connection_id, caller, data)
        sha = self._scripts["route"].sha
        with translate_errors("routing to a connection's server"):
            owner = self._on_master(key, lambda c: evalsha(c, sha, [key], args),
                                    lambda: self._script("route", [key], args))
        return None if owner is None else as_str(owner)

    def remove_connections(self, connection_ids: Sequence[str]) -> list[RemovedConnection | None]:
        by_tag: dict[str, list[int]] = defaultdict(list)  # one script per server slot
        for i, cid in enumerate(connection_ids):
            by_tag[cid[:4]].append(i)
        rows: list[RemovedConnection | None] = [None] * len(connection_ids)
        with translate_errors("connection removal"):
            calls, where = [], []
            for positions in by_tag.values():
                for start in range(0, len(positions), CHUNK):
                    part = positions[start:start + CHUNK]
                    ids = [connection_ids[i] for i in part]
                    calls.append(([self._keys.connection(c) for c in ids], [self.key_prefix, *ids]))
                    where.append(part)
            for part, result in zip(where, self._run_many("conn_remove", calls), strict=True):
                for i, row in zip(part, result, strict=True):
                    rows[i] = removed_row(row)
            found = [r for r in rows if r is not None]
            emptied = iter(self._steps.empty_rooms(found))
        return [None if r is None else next(emptied) for r in rows]

    # bus
    def publish(self, channel: str, data: bytes) -> None:
        name = self._keys.channel(channel)
        with translate_errors("SPUBLISH"):
            self._on_master(name, lambda c: c.spublish(name, data),
                            lambda: self._r.spublish(name, data))

    # recovery: refused (supports_recovery; the manager refuses recovery_window here)
    def suspend_connection(self, connection_id: str, server_id: str, until: float,
                           ttl: float) -> bool:
        raise _no_recovery()

    def remove_suspended(self, connection_id: str, server_id: str) -> RemovedConnection | None:
        raise _no_recovery()

    def resume_connection(self, connection_id: str, secret: str, user_id: str, server_id: str,
                          new_secret: str) -> Resumed | None:
        raise _no_recovery()

    def read_mailbox(self, connection_id: str, after: int, limit: int) -> HistoryPage | None:
        raise _no_recovery()

    def publish_history(self, room_id: str, data: bytes, size: int,
                        ttl: float) -> tuple[str, int]:
        keys = self._history_keys(room_id)
        args = self._history_args(room_id, data, size, ttl)
        sha = self._scripts["history_append"].sha
        with translate_errors("appending to a room's history"):
            return position(self._on_master(
                keys[0], lambda c: evalsha(c, sha, keys, args),
                lambda: self._script("history_append", keys, args)))

    def close_idle(self) -> None:
        try:
            for node in self._r.get_nodes():
                if node.redis_connection is not None:
                    node.redis_connection.connection_pool.disconnect(inuse_connections=False)
        except (redis.RedisError, OSError) as exc:
            logger.debug("closing idle Redis connections: %s", exc)

    def subscription(self) -> ShardedSubscription:
        if self._subscribed_before:  # a rebuild: the slots may have new masters
            with translate_errors("reading the cluster's slot map"):
                self._r.nodes_manager.initialize()
        self._subscribed_before = True
        return ShardedSubscription(self._r.get_node_from_key, self._subscriber, self._keys)

    def close(self) -> None:
        with self._hot_lock:
            held, self._hot = list(self._hot.values()), {}
        for client in held:
            try:
                close(client)
            except (redis.RedisError, OSError) as exc:
                logger.debug("closing a held Redis connection: %s", exc)
        try:
            self._r.close()
        except (redis.RedisError, OSError) as exc:
            logger.debug("closing Redis Cluster client: %s", exc)
