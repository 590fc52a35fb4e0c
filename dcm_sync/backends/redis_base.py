"""What the Redis backends share: error translation, and the operations that read or write the
same keys the same way on a single Redis, under Sentinel and in Redis Cluster.

The key layout is in `.redis_keys`. Every pipeline here is non-transactional and each of
its commands touches one key (or one slot, for a script), so it runs unchanged in Cluster, where
redis-py splits it by node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from ..errors import BackendAuthenticationError, BackendError, BackendUnavailableError
from ..models import RemovedConnection, RoomMember, ServerInfo
from . import ids
from .base import ConnectionRecord, HistoryPage
from .redis_keys import KeyLayout, room_bucket, server_tag
from .redis_scripts import Scripts
from .redis_typed import equal_jitter_backoff

__all__ = ["translate_errors", "RedisBase", "CHUNK", "TRANSIENT_ERRORS", "as_str", "removed_row",
           "members_of"]

logger = logging.getLogger(__name__)

CHUNK = 500
TRANSIENT_ERRORS = (redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
                    redis.exceptions.MasterDownError, redis.exceptions.BusyLoadingError,
                    redis.exceptions.ReadOnlyError)


def as_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn redis-py's errors into the library's, keeping the cause."""
    try:
        yield
    except redis.AuthenticationError as exc:  # wrong user or password, or none given
        raise BackendAuthenticationError(
            f"Redis authentication failed during {what}: {exc} "
            "(check the user and password in redis_url)") from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        if _caused_by_tls(exc):
            raise BackendUnavailableError(
                f"TLS connection to Redis failed during {what}: {exc} (is the server's "
                "certificate for the host in redis_url, and signed by a CA in redis_ca_file "
                "or the system's?)") from exc
        raise BackendUnavailableError(f"Redis unreachable during {what}: {exc}") from exc
    except TRANSIENT_ERRORS as exc:  # a Cluster shard or a Sentinel master between owners
        raise BackendUnavailableError(f"Redis unavailable during {what}: {exc}") from exc
    except redis.exceptions.RedisClusterException as exc:  # no node answers, or a slot has none
        raise BackendUnavailableError(f"Redis Cluster unavailable during {what}: {exc}") from exc
    except redis.RedisError as exc:
        raise BackendError(f"Redis error during {what}: {exc}") from exc


def _caused_by_tls(exc: BaseException | None) -> bool:
    """Whether ``exc`` or one of its causes is an SSL error."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ssl.SSLError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def removed_row(row: Any) -> RemovedConnection | None:
    """A script's ``{cid, user, server, {rooms}}`` (or false) as a RemovedConnection."""
    if not row:
        return None
    cid, user, sid, rooms = row[:4]
    until = int(row[4]) / 1000 if len(row) > 4 else 0.0  # adopted, suspended until (ms)
    return RemovedConnection(as_str(cid), as_str(user), as_str(sid),
                             tuple(as_str(r) for r in rooms or ()), until)


def history_page(flat: Sequence[Any]) -> HistoryPage:
    """A `HistoryPage` from the history scripts' flat answer."""
    if not flat:
        return HistoryPage(None, 0, [])
    rest = flat[2:]
    return HistoryPage(as_str(flat[0]), int(flat[1]),
                       [(int(rest[i]), bytes(rest[i + 1])) for i in range(0, len(rest), 2)])


def position(answer: Sequence[Any]) -> tuple[str, int]:
    """``(epoch, offset)`` from the append script's answer."""
    return as_str(answer[0]), int(answer[1])


def members_of(flat: Sequence[Any], user: str | None = None) -> list[RoomMember]:
    """A script's flat ``{cid, user, server, ...}`` (or ``{cid, server, ...}`` for ``user``'s
    own connections) as RoomMembers, in connection id order."""
    if user is not None:
        out = [RoomMember(as_str(flat[i]), user, as_str(flat[i + 1]))
               for i in range(0, len(flat), 2)]
    else:
        out = [RoomMember(as_str(flat[i]), as_str(flat[i + 1]), as_str(flat[i + 2]))
               for i in range(0, len(flat), 3)]
    return sorted(out, key=lambda m: m.connection_id)


class RedisBase:
    """Operations written once for every topology. Subclasses set ``_r`` (a ``Redis`` or a
    ``RedisCluster``) and ``_scripts`` (the registered scripts by name) in ``__init__``."""

    url: str
    _r: Any
    PUBLISH = "PUBLISH"  # the bus command (and what the scripts call): SPUBLISH in Cluster
    count_users = False
    mailbox_size = 0
    mailbox_ttl = 0.0
    supports_recovery = True

    @property
    def _counted(self) -> str:
        """The scripts' flag: ``'1'`` to count each room's members by user."""
        return "1" if self.count_users else "0"

    def _room_keys(self, room: str) -> list[str]:
        """A room's set, its index bucket and its user counts (or its set again, when users
        are not counted: the scripts take three keys, all of one slot)."""
        k = self._keys
        return [k.room(room), k.rooms_index(room_bucket(room)),
                k.room_users(room) if self.count_users else k.room(room)]

    def _run_many(self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        """Run one script for each ``(keys, args)`` in pipelines of EVALSHA; a server that lacks
        the script (restarted, new, a promoted replica) gets it loaded and those calls again."""
        results: list[Any] = []
        for start in range(0, len(calls), CHUNK):
            chunk = calls[start:start + CHUNK]
            out = self._pipeline_evalsha(name, chunk)
            missing = [i for i, res in enumerate(out) if isinstance(res, NoScriptError)]
            if missing:
                self._load_on(name, [chunk[i][0][0] for i in missing if chunk[i][0]])
                for i, res in zip(missing, self._pipeline_evalsha(name, [chunk[i] for i in missing]),
                                  strict=True):
                    out[i] = res
            for res in out:
                if isinstance(res, Exception):
                    raise res
            results.extend(out)
        return results

    def _pipeline_evalsha(self, name: str,
                          calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        """One pipeline of EVALSHA; errors returned in place, not raised."""
        sha = self._scripts[name].sha
        pipe = self._r.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        return list(pipe.execute(raise_on_error=False))

    def _load_on(self, name: str, keys: Sequence[str]) -> None:
        """Load a script where ``keys`` live (one Redis here: that one)."""
        self._r.script_load(self._scripts[name].script)

    def __init__(self, key_prefix: str, timeout: float) -> None:
        self.key_prefix = key_prefix
        self._keys = KeyLayout(key_prefix)
        self._timeout = timeout
        self._backoff = equal_jitter_backoff(cap=2.0, base=0.05)
        self._scripts: dict[str, Any] = {}

    def _register_scripts(self, *names: str) -> None:
        """Register the named scripts of `.Scripts` (filled in for ``PUBLISH``) on ``_r``."""
        scripts = Scripts(self.PUBLISH)
        for name in names:
            self._scripts[name] = self._r.register_script(getattr(scripts, name))

    def _script(self, name: str, keys: Sequence[str], args: Sequence[Any],
                client: Any = None) -> Any:
        return self._scripts[name](keys=keys, args=args, client=client)

    # servers
    def register_server(self, info: ServerInfo, ttl: float) -> None:
        key = self._keys.server(info.server_id)
        with translate_errors("server registration"):
            # Indexed first: a record that exists is always indexed, so that its failure is
            # found and its connections cleaned even if the second step never happens.
            self._r.sadd(self._keys.servers_index, info.server_id)
            pipe = self._r.pipeline(transaction=False)
            pipe.hset(key, mapping={
                "serverId": info.server_id, "host": info.host, "port": info.port,
                "pid": info.pid, "lastHeartbeat": repr(info.last_heartbeat),
                "activeConnections": info.active_connections,
            })
            pipe.pexpire(key, int(ttl * 1000))
            pipe.execute()

    def heartbeat(self, server_id: str, active_connections: int, ttl: float) -> bool:
        with translate_errors("heartbeat"):
            alive = bool(self._script("heartbeat", [self._keys.server(server_id)],
                                      [int(ttl * 1000), repr(time.time()), active_connections]))
            if alive:
                self._after_heartbeat(server_id)
            return alive

    def _after_heartbeat(self, server_id: str) -> None:
        """After a heartbeat that found the record: back in the index, if a cleaner of a moment
        ago dropped it."""
        self._r.sadd(self._keys.servers_index, server_id)

    def deregister_server(self, server_id: str, keep_index: bool = False) -> None:
        with translate_errors("server deregistration"):
            self._r.delete(self._keys.server(server_id))
            if not keep_index:
                self._r.srem(self._keys.servers_index, server_id)

    def dead_servers(self) -> list[str]:
        with translate_errors("failure detection"):
            return [sid for sid, alive in self._liveness() if not alive]

    def live_servers(self) -> list[str]:
        with translate_errors("reading the live servers"):
            return [sid for sid, alive in self._liveness() if alive]

    def _liveness(self) -> list[tuple[str, bool]]:
        """Each indexed server id, and whether its record exists (it expires with its heartbeat)."""
        ids = sorted(as_str(x) for x in self._r.smembers(self._keys.servers_index))
        if not ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for sid in ids:
            pipe.exists(self._keys.server(sid))
        return [(sid, bool(alive)) for sid, alive in zip(ids, pipe.execute(), strict=True)]

    def claim_cleanup(self, server_id: str, claimer: str, ttl: float) -> bool:
        with translate_errors("cleanup lock"):
            return bool(self._r.set(self._keys.cleanup_lock(server_id), claimer,
                                    nx=True, px=int(ttl * 1000)))

    def forget_server(self, server_id: str) -> None:
        k = self._keys
        with translate_errors("failure cleanup"):
            if self._script("forget", [k.server(server_id), k.server_connection_sets(server_id)[0]],
                            []):
                self._r.srem(k.servers_index, server_id)

    def server_connection_count(self, server_id: str) -> int:
        with translate_errors("counting a server's connections"):
            return int(self._script("server_count",
                                    [self._keys.server_connection_sets(server_id)[0]], []))

    # connections
    def new_connection_id(self, server_id: str) -> str:
        return ids.new_connection_id(server_id)

    def _add(self, server_id: str, record: ConnectionRecord, max_per_user: int,
             with_user: bool) -> int:
        """The ADD script: 1 added, 0 the id is taken, -1 the user is at the cap."""
        k, cid = self._keys, record.connection_id
        keys = [k.connection(cid), k.server_connections(server_id, cid)]
        if with_user:
            keys.append(k.user(record.user_id))
        return int(self._script("add", keys, [cid, record.user_id, server_id, self.key_prefix,
                                              max_per_user, record.secret or ""]))

    def restore_connections(self, server_id: str, records: Sequence[ConnectionRecord]) -> None:
        k, tag = self._keys, server_tag(server_id)
        with translate_errors("connection restore"):
            self._run_many("restore", [
                ([k.connection(rec.connection_id),
                  k.server_connections(server_id, rec.connection_id)],
                 [self.key_prefix, rec.connection_id, rec.user_id, server_id,
                  json.dumps(list(rec.rooms)), rec.secret or "",
                  # it moved here (resumed, or adopted): its server's tag is not its own
                  tag if tag != rec.connection_id[:4] else ""])
                for rec in records])
            self._run_many("user_add", [([k.user(rec.user_id)], [rec.connection_id, 0, rec.user_id])
                                        for rec in records])
            # through the join's own step: a room's user counts grow only for a new member
            self._run_many("room_add", [
                (self._room_keys(room), [rec.connection_id, room, rec.user_id, self._counted])
                for rec in records for room in rec.rooms])

    # bus
    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        with translate_errors(self.PUBLISH):
            for start in range(0, len(items), CHUNK):
                pipe = self._r.pipeline(transaction=False)
                for channel, data in items[start:start + CHUNK]:
                    pipe.execute_command(self.PUBLISH, self._keys.channel(channel), data)
                pipe.execute()

    def retry_delay(self, failures: int) -> float:
        return self._backoff.compute(failures)

    # reading
    def stats(self) -> tuple[int, int, list[ServerInfo]]:
        k = self._keys
        with translate_errors("stats"):
            ids = sorted(as_str(x) for x in self._r.smembers(k.servers_index))
            pipe = self._r.pipeline(transaction=False)
            for sid in ids:
                pipe.hgetall(k.server(sid))
            for index in k.all_rooms_indexes():
                pipe.scard(index)
            res = pipe.execute()
            counts = self._run_many("server_count", [([k.server_connection_sets(sid)[0]], [])
                                                     for sid in ids])
        servers = []
        for i, sid in enumerate(ids):
            h = {as_str(a): as_str(b) for a, b in res[i].items()}
            if not h:
                continue  # expired, not yet cleaned
            servers.append(ServerInfo(sid, h.get("host", ""), int(h.get("port", 0)),
                                      int(h.get("pid", 0)), float(h.get("lastHeartbeat", 0)),
                                      int(counts[i])))
        rooms = sum(int(n) for n in res[len(ids):])
        return sum(s.active_connections for s in servers), rooms, servers

    def read_history(self, room_id: str, after: int | None, limit: int) -> HistoryPage:
        with translate_errors("reading a room's history"):
            flat = self._script("history_read", self._history_keys(room_id),
                                [-1 if after is None else after, limit])
        return history_page(flat)

    def _route_args(self, connection_id: str, caller: str, data: bytes) -> list[Any]:
        return [self.key_prefix, connection_id, caller, data, self.mailbox_size,
                max(1, int(self.mailbox_ttl * 1000))]

    def history_position(self, room_id: str, ttl: float) -> tuple[str, int]:
        with translate_errors("reading a room's history"):
            return position(self._script("history_start", self._history_keys(room_id),
                                         [max(1, int(ttl * 1000))]))

    def _history_keys(self, room: str) -> list[str]:
        return [self._keys.history_meta(room), self._keys.history(room)]

    def _history_args(self, room: str, data: bytes, size: int, ttl: float) -> list[Any]:
        return [self._keys.channel(f"room:{room}"), data, size, max(1, int(ttl * 1000))]

    def room_sizes(self) -> list[tuple[str, int]]:
        k = self._keys
        with translate_errors("room listing"):
            pipe = self._r.pipeline(transaction=False)
            for index in k.all_rooms_indexes():
                pipe.smembers(index)
            rooms = sorted({as_str(r) for bucket in pipe.execute() for r in bucket})
            sizes: list[int] = []
            for start in range(0, len(rooms), CHUNK):
                pipe = self._r.pipeline(transaction=False)
                for room in rooms[start:start + CHUNK]:
                    pipe.scard(k.room(room))
                sizes.extend(int(n) for n in pipe.execute())
        # a room emptied between the two reads is left out
        return [(room, n) for room, n in zip(rooms, sizes, strict=True) if n]
