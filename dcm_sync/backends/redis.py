"""``redis://``, ``rediss://`` and ``unix://``: the Redis backend (the only module importing redis).

Key layout under the prefix ``P`` (default ``dcm:``); the README lists the same table:

    P servers:<sid>              hash  serverId host port pid lastHeartbeat activeConnections;
                                       PEXPIRE heartbeat_ttl, refreshed by every heartbeat
    P index:servers              set   every registered server id (dead ones until cleaned)
    P server-connections:<sid>   set   the server's connection ids (cleanup is O(its connections))
    P connections:<cid>          hash  userId serverId timestamp rooms(JSON array); PEXPIRE connection_ttl
    P rooms:<room>               set   connection ids in the room; gone when empty
    P index:rooms                set   room ids with members (counts rooms without KEYS/SCAN)
    P lock:cleanup:<sid>         str   who cleans a dead server; PX heartbeat_ttl
    channels  P room:<room>, P server:<sid>
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.retry import Retry

from ..config import redact_url
from ..errors import BackendAuthenticationError, BackendError, BackendUnavailableError, ConfigError
from ..models import RemovedConnection, ServerInfo
from . import redis_scripts as lua
from .base import ConnectionRecord

__all__ = ["RedisBackend"]

logger = logging.getLogger(__name__)

_CHUNK = 500
POOL_SIZE = 64  # Redis connections per process for commands (the subscriber has its own)


def _s(value: Any) -> str:
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
        if isinstance(exc.__context__, ssl.SSLError) or isinstance(exc, ssl.SSLError):
            raise BackendUnavailableError(
                f"TLS connection to Redis failed during {what}: {exc} (is the server's "
                "certificate for the host in redis_url, and signed by a CA in redis_ca_file "
                "or the system's?)") from exc
        raise BackendUnavailableError(f"Redis unreachable during {what}: {exc}") from exc
    except redis.RedisError as exc:
        raise BackendError(f"Redis error during {what}: {exc}") from exc


def _removed(row: Any) -> RemovedConnection | None:
    if not row:
        return None
    cid, user, sid, left = row
    return RemovedConnection(_s(cid), _s(user), _s(sid), tuple(_s(r) for r in left or ()))


class _RedisSubscription:
    """A redis-py PubSub on its own connection, with subscribe confirmations."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._pubsub = client.pubsub()  # type: ignore[no-untyped-call]
        self._prefix = prefix
        self._cut = len(prefix)
        self._pending: dict[str, list[threading.Event]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def subscribe(self, channels: Iterable[str]) -> list[threading.Event]:
        names = [self._prefix + c for c in channels]
        if not names:
            return []
        events = []
        with self._lock:
            for name in names:
                ev = threading.Event()
                self._pending.setdefault(name, []).append(ev)
                events.append(ev)
        with translate_errors("SUBSCRIBE"):
            self._pubsub.subscribe(*names)
        return events

    def unsubscribe(self, channels: Iterable[str]) -> None:
        names = [self._prefix + c for c in channels]
        if names:
            with translate_errors("UNSUBSCRIBE"):
                self._pubsub.unsubscribe(*names)

    def get_message(self, timeout: float | None) -> tuple[str, bytes] | None:
        if self._closed:
            raise BackendUnavailableError("the subscription is closed")
        try:
            with translate_errors("listen"):
                msg = self._pubsub.get_message(timeout=timeout)
        except (AttributeError, RuntimeError) as exc:
            if not self._closed:
                raise
            # close() from another thread took the connection away mid-read
            raise BackendUnavailableError("the subscription is closed") from exc
        if msg is None:
            return None
        channel = _s(msg["channel"])
        if msg["type"] == "message":
            return channel[self._cut:], msg["data"]
        if msg["type"] == "subscribe":
            with self._lock:
                for ev in self._pending.pop(channel, ()):
                    ev.set()
        return None

    def close(self) -> None:
        self._closed = True
        try:
            self._pubsub.reset()
        except (redis.RedisError, OSError) as exc:
            logger.debug("closing subscription: %s", exc)


class RedisBackend:
    def __init__(self, url: str, key_prefix: str, timeout: float = 2.0,
                 ca_file: str | None = None) -> None:
        self.url = redact_url(url)  # for messages: never the password
        self.key_prefix = key_prefix
        # A command gets two attempts (the second on a fresh connection, so that a connection
        # left stale by a Redis restart costs no error) of timeout/2 each: an unreachable or
        # stalled Redis fails the call with BackendUnavailableError within about ``timeout``.
        attempt = timeout / 2
        retry = Retry(EqualJitterBackoff(cap=0.05, base=0.01), 1)  # policy only: shareable
        common: dict[str, Any] = {"socket_timeout": attempt, "socket_connect_timeout": attempt}
        if url.startswith("rediss://"):
            # Verify the server's certificate and name; only ?ssl_cert_reqs=none in the URL
            # (whose query wins over these) turns that off.
            common.update(ssl_cert_reqs="required", ssl_check_hostname=True)
            if ca_file is not None:
                common["ssl_ca_certs"] = ca_file
        try:
            # A burst of calls must wait for a pooled connection (up to ``timeout``/2), not
            # fail with "Too many connections" as redis-py's default pool does when full.
            pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=POOL_SIZE, timeout=attempt, retry=retry, **common,
            )
            self._r = redis.Redis(connection_pool=pool)
            # PUBLISH and routing (the per-message commands) go over one dedicated connection:
            # a pool checkout polls the socket first, which costs more than the command itself
            # under gevent. Connected on first use.
            self._hot_pool = redis.ConnectionPool.from_url(
                url, max_connections=1, retry=retry, **common,
            )
            # The subscriber reports every failure at once and never reconnects by itself
            # (no error is retryable): the listener owns reconnection.
            self._sub_client = redis.Redis.from_url(
                url, retry=Retry(NoBackoff(), 0, supported_errors=()), **common)
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {self.url!r}: {exc}") from exc
        self._backoff = EqualJitterBackoff(cap=2.0, base=0.05)
        self._timeout = timeout
        self._hot_client: redis.Redis | None = None
        self._hot_lock = threading.Lock()
        self._hot_failed_at = 0.0  # monotonic time the hot connection last found Redis unreachable
        p = key_prefix
        self._k_servers_index = p + "index:servers"
        self._k_rooms_index = p + "index:rooms"
        self._add = self._r.register_script(lua.ADD)
        self._remove = self._r.register_script(lua.REMOVE)
        self._pop_server = self._r.register_script(lua.POP_SERVER)
        self._join = self._r.register_script(lua.JOIN)
        self._leave = self._r.register_script(lua.LEAVE)
        self._route = self._r.register_script(lua.ROUTE)
        self._heartbeat = self._r.register_script(lua.HEARTBEAT)
        self._to_server = self._r.register_script(lua.TO_LIVE_SERVER)

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
                    self._hot_client = redis.Redis(connection_pool=self._hot_pool,
                                                   single_connection_client=True)
                yield self._hot_client
        except BackendUnavailableError:
            self._hot_failed_at = time.monotonic()
            raise
        finally:
            self._hot_lock.release()

    def _k_server(self, sid: str) -> str:
        return f"{self.key_prefix}servers:{sid}"

    def _k_conn(self, cid: str) -> str:
        return f"{self.key_prefix}connections:{cid}"

    def _k_room(self, room: str) -> str:
        return f"{self.key_prefix}rooms:{room}"

    def _k_server_conns(self, sid: str) -> str:
        return f"{self.key_prefix}server-connections:{sid}"

    # servers
    def register_server(self, info: ServerInfo, ttl: float) -> None:
        key = self._k_server(info.server_id)
        with translate_errors("server registration"):
            pipe = self._r.pipeline(transaction=True)
            pipe.hset(key, mapping={
                "serverId": info.server_id, "host": info.host, "port": info.port,
                "pid": info.pid, "lastHeartbeat": repr(info.last_heartbeat),
                "activeConnections": info.active_connections,
            })
            pipe.pexpire(key, int(ttl * 1000))
            pipe.sadd(self._k_servers_index, info.server_id)
            pipe.execute()

    def heartbeat(self, server_id: str, active_connections: int, ttl: float) -> bool:
        with translate_errors("heartbeat"):
            return bool(self._heartbeat(keys=[self._k_server(server_id)],
                                        args=[int(ttl * 1000), repr(time.time()), active_connections]))

    def deregister_server(self, server_id: str) -> None:
        with translate_errors("server deregistration"):
            pipe = self._r.pipeline(transaction=True)
            pipe.delete(self._k_server(server_id))
            pipe.srem(self._k_servers_index, server_id)
            pipe.execute()

    def publish_to_server(self, server_id: str, data: bytes) -> bool:
        with self._hot("publishing to a server") as hot:
            return bool(self._to_server(keys=[self._k_server(server_id)],
                                        args=[f"{self.key_prefix}server:{server_id}", data],
                                        client=hot))

    def rooms_with_listeners(self, rooms: Iterable[str]) -> set[str]:
        names = sorted(rooms)
        heard: set[str] = set()
        with translate_errors("PUBSUB NUMSUB"):
            for start in range(0, len(names), _CHUNK):
                chunk = names[start:start + _CHUNK]
                counts = self._r.pubsub_numsub(*(f"{self.key_prefix}room:{r}" for r in chunk))
                heard.update(room for room, (_, n) in zip(chunk, counts, strict=True) if n)
        return heard

    def dead_servers(self) -> list[str]:
        with translate_errors("failure detection"):
            ids = sorted(_s(x) for x in self._r.smembers(self._k_servers_index))
            if not ids:
                return []
            pipe = self._r.pipeline(transaction=False)
            for sid in ids:
                pipe.exists(self._k_server(sid))
            return [sid for sid, alive in zip(ids, pipe.execute(), strict=True) if not alive]

    def claim_cleanup(self, server_id: str, claimer: str, ttl: float) -> bool:
        with translate_errors("cleanup lock"):
            return bool(self._r.set(f"{self.key_prefix}lock:cleanup:{server_id}", claimer,
                                    nx=True, px=int(ttl * 1000)))

    def pop_server_connections(self, server_id: str, count: int) -> list[RemovedConnection]:
        with translate_errors("failure cleanup"):
            rows = self._pop_server(keys=[self._k_server_conns(server_id)],
                                    args=[self.key_prefix, count])
        return [r for r in map(_removed, rows) if r is not None]

    def forget_server(self, server_id: str) -> None:
        with translate_errors("failure cleanup"):
            pipe = self._r.pipeline(transaction=True)
            pipe.srem(self._k_servers_index, server_id)
            pipe.delete(self._k_server(server_id))
            pipe.delete(self._k_server_conns(server_id))
            pipe.execute()

    # connections and rooms
    def add_connection(self, server_id: str, record: ConnectionRecord, ttl: float) -> bool:
        cid = record.connection_id
        with translate_errors("connection registration"):
            return bool(self._add(keys=[self._k_conn(cid), self._k_server_conns(server_id)],
                                  args=[cid, record.user_id, server_id,
                                        repr(record.connected_at), int(ttl * 1000)]))

    def _write_connection(self, pipe: Any, server_id: str, rec: ConnectionRecord, ttl: float) -> None:
        key = self._k_conn(rec.connection_id)
        pipe.hset(key, mapping={"userId": rec.user_id, "serverId": server_id,
                                "timestamp": repr(rec.connected_at),
                                "rooms": json.dumps(list(rec.rooms))})
        pipe.pexpire(key, int(ttl * 1000))
        pipe.sadd(self._k_server_conns(server_id), rec.connection_id)
        for room in rec.rooms:
            pipe.sadd(self._k_room(room), rec.connection_id)
        if rec.rooms:
            pipe.sadd(self._k_rooms_index, *rec.rooms)

    def restore_connections(
        self, server_id: str, records: Sequence[ConnectionRecord], ttl: float
    ) -> None:
        with translate_errors("connection restore"):
            for start in range(0, len(records), _CHUNK):
                pipe = self._r.pipeline(transaction=False)
                for rec in records[start:start + _CHUNK]:
                    self._write_connection(pipe, server_id, rec, ttl)
                pipe.execute()

    def refresh_connections(self, connection_ids: Sequence[str], ttl: float) -> None:
        with translate_errors("connection refresh"):
            for start in range(0, len(connection_ids), _CHUNK):
                pipe = self._r.pipeline(transaction=False)
                for cid in connection_ids[start:start + _CHUNK]:
                    pipe.pexpire(self._k_conn(cid), int(ttl * 1000))
                pipe.execute()

    def _room_op(self, script: Any, cid: str, room: str, caller: str, route: bytes) -> str | None:
        with translate_errors("room membership change"):
            owner = script(keys=[self._k_conn(cid), self._k_room(room), self._k_rooms_index],
                           args=[self.key_prefix, cid, caller, route, room])
        return None if owner is None else _s(owner)

    def join_room(self, connection_id: str, room_id: str, caller: str, route: bytes) -> str | None:
        return self._room_op(self._join, connection_id, room_id, caller, route)

    def leave_room(self, connection_id: str, room_id: str, caller: str, route: bytes) -> str | None:
        return self._room_op(self._leave, connection_id, room_id, caller, route)

    def route(self, connection_id: str, caller: str, data: bytes) -> str | None:
        with self._hot("routing to a connection's server") as hot:
            owner = self._route(keys=[self._k_conn(connection_id)],
                                args=[self.key_prefix, "", caller, data], client=hot)
        return None if owner is None else _s(owner)

    def remove_connections(self, connection_ids: Sequence[str]) -> list[RemovedConnection | None]:
        out: list[RemovedConnection | None] = []
        with translate_errors("connection removal"):
            for start in range(0, len(connection_ids), _CHUNK):
                rows = self._remove(args=[self.key_prefix, *connection_ids[start:start + _CHUNK]])
                out.extend(_removed(row) for row in rows)
        return out

    # bus
    def publish(self, channel: str, data: bytes) -> None:
        with self._hot("PUBLISH") as hot:
            hot.publish(self.key_prefix + channel, data)

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        with translate_errors("PUBLISH"):
            for start in range(0, len(items), _CHUNK):
                pipe = self._r.pipeline(transaction=False)
                for channel, data in items[start:start + _CHUNK]:
                    pipe.publish(self.key_prefix + channel, data)
                pipe.execute()

    def retry_delay(self, failures: int) -> float:
        return self._backoff.compute(failures)

    def close_idle(self) -> None:
        try:
            self._r.connection_pool.disconnect(inuse_connections=False)
        except (redis.RedisError, OSError) as exc:
            logger.debug("closing idle Redis connections: %s", exc)

    def subscription(self) -> _RedisSubscription:
        return _RedisSubscription(self._sub_client, self.key_prefix)

    # reading
    def stats(self) -> tuple[int, int, list[ServerInfo]]:
        with translate_errors("stats"):
            ids = sorted(_s(x) for x in self._r.smembers(self._k_servers_index))
            pipe = self._r.pipeline(transaction=False)
            for sid in ids:
                pipe.hgetall(self._k_server(sid))
                pipe.scard(self._k_server_conns(sid))
            pipe.scard(self._k_rooms_index)
            res = pipe.execute()
        servers = []
        for i, sid in enumerate(ids):
            h = {_s(k): _s(v) for k, v in res[2 * i].items()}
            if not h:
                continue  # expired, not yet cleaned
            servers.append(ServerInfo(sid, h.get("host", ""), int(h.get("port", 0)),
                                      int(h.get("pid", 0)), float(h.get("lastHeartbeat", 0)),
                                      int(res[2 * i + 1])))
        return sum(s.active_connections for s in servers), int(res[-1]), servers

    def close(self) -> None:
        hot = [self._hot_client] if self._hot_client is not None else []
        for client in (self._r, self._sub_client, *hot):
            try:
                client.close()
                client.connection_pool.disconnect()
            except (redis.RedisError, OSError) as exc:
                logger.debug("closing Redis client: %s", exc)
