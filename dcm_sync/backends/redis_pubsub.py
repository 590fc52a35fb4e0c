"""Subscriptions to the Redis bus: one connection (single Redis, Sentinel), or one connection per
Cluster shard with sharded pub/sub (``SSUBSCRIBE``), read by a worker per shard.

Channels given and returned here are logical (``room:<room>``, ``server:<sid>``); the
`KeyLayout` names them in Redis.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import redis

from ..concurrency import get_driver
from ..errors import BackendUnavailableError
from .redis_base import as_str, translate_errors
from .redis_keys import KeyLayout
from .redis_typed import pubsub

__all__ = ["RedisSubscription", "ShardedSubscription"]

logger = logging.getLogger(__name__)

#: redis-py 8 reads a pub/sub message without the socket's timeout when told to wait for ever;
#: older releases end that read after ``socket_timeout`` (``redis_timeout``/2) as if the
#: connection were lost. Where it can, ``get_message(None)`` on a classic subscription waits
#: in one blocking read: a bounded one asks first whether the socket is readable, a poll and a
#: peek per message (a third of the listener's CPU per direct message under gevent:
#: ``delivery_cpu_us`` of ``python -m benchmarks --only direct``). ``close`` wakes either.
BLOCKING_READS = tuple(getattr(redis, "VERSION", (0,)))[:1] >= (8,)
#: seconds of one read of ``get_message(None)`` where it cannot block (it then returns None)
BOUNDED_WAIT = 5.0

_CLASSIC = ("subscribe", "unsubscribe", "message")
_SHARDED = ("ssubscribe", "sunsubscribe", "smessage")


class RedisSubscription:
    """A redis-py PubSub on its own connection, with subscribe confirmations.

    ``sharded``: SSUBSCRIBE/SUNSUBSCRIBE (all channels on this connection's shard). A shard
    channel's unsubscription that nobody asked for (its slot moved to another shard, or the
    node stopped being a master) ends the subscription like a lost connection.
    """

    def __init__(self, client: redis.Redis, keys: KeyLayout, sharded: bool = False) -> None:
        self._pubsub = pubsub(client)
        self._pool = client.connection_pool
        self._keys = keys
        self._sub_type, self._unsub_type, self._msg_type = _SHARDED if sharded else _CLASSIC
        self._sub = self._pubsub.ssubscribe if sharded else self._pubsub.subscribe
        self._unsub = self._pubsub.sunsubscribe if sharded else self._pubsub.unsubscribe
        self._sharded = sharded
        # not a sharded one: its shard's channels may all go (redis-py cannot wait for ever then)
        self._can_block = BLOCKING_READS and not sharded
        self._pending: dict[str, list[threading.Event]] = {}
        self._leaving: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closed = False

    def subscribe(self, channels: Iterable[str]) -> list[threading.Event]:
        names = [self._keys.channel(c) for c in channels]
        if not names:
            return []
        events = []
        with self._lock:
            for name in names:
                ev = threading.Event()
                self._pending.setdefault(name, []).append(ev)
                events.append(ev)
        self._send("SUBSCRIBE", self._sub, names)
        return events

    def unsubscribe(self, channels: Iterable[str]) -> None:
        names = [self._keys.channel(c) for c in channels]
        if not names:
            return
        with self._lock:
            self._leaving.update(names)
        self._send("UNSUBSCRIBE", self._unsub, names)

    def _send(self, what: str, command: Callable[..., Any], names: list[str]) -> None:
        with translate_errors(what):
            if self._sharded:  # a shard channel per command: each may be in another slot
                for name in names:
                    command(name)
            else:
                command(*names)

    def get_message(self, timeout: float | None) -> tuple[str, bytes] | None:
        if self._closed:
            raise BackendUnavailableError("the subscription is closed")
        if timeout is None and not (self._can_block and getattr(self._pubsub, "subscribed", False)):
            timeout = BOUNDED_WAIT
        try:
            with translate_errors("listen"):
                msg = self._pubsub.get_message(timeout=timeout)
        except Exception as exc:
            if not self._closed:
                raise
            # close() from another thread took the connection away mid-read: what redis-py
            # raises then differs between its releases (AttributeError, RuntimeError,
            # ValueError "I/O operation on closed file")
            raise BackendUnavailableError("the subscription is closed") from exc
        if msg is None:
            return None
        kind = msg["type"]
        channel = as_str(msg["channel"])
        if kind == self._msg_type:
            return self._keys.logical(channel), msg["data"]
        with self._lock:
            if kind == self._sub_type:
                for ev in self._pending.pop(channel, ()):
                    ev.set()
            elif kind == self._unsub_type:
                if self._leaving[channel] > 0:
                    self._leaving[channel] -= 1
                    if not self._leaving[channel]:
                        del self._leaving[channel]
                elif self._sharded:
                    raise BackendUnavailableError(
                        f"Redis dropped the subscription to {channel} (its slot moved)")
        return None

    def ready(self) -> bool:
        # Only what hiredis has read already: asking the socket costs more than the write
        # it could save (15 µs under gevent). Without hiredis (redis-py's own parser): False.
        conn = getattr(self._pubsub, "connection", None)
        has_data = getattr(getattr(getattr(conn, "_parser", None), "_reader", None),
                           "has_data", None)
        return not self._closed and has_data is not None and bool(has_data())

    def close(self) -> None:
        self._closed = True
        try:
            self._pubsub.reset()
            self._pool.disconnect()  # the subscription's own pool: nothing reuses its connection
        except (redis.RedisError, OSError) as exc:
            logger.debug("closing subscription: %s", exc)


_STOP = object()
READ_WAIT = 5.0  # seconds a shard reader waits in one read


class ShardedSubscription:
    """Sharded pub/sub over a Redis Cluster: a `RedisSubscription` to the master of each
    shard that holds a subscribed channel, each read by its own worker into one queue. A lost
    shard connection or a moved slot ends the whole subscription (``get_message`` raises), and
    the listener builds a new one from a fresh slot map."""

    def __init__(self, node_of: Callable[[str], Any], client_for: Callable[[Any], redis.Redis],
                 keys: KeyLayout) -> None:
        self._node_of = node_of          # physical channel -> the ClusterNode of its master
        self._client_for = client_for    # ClusterNode -> a client for subscriptions
        self._keys = keys
        self._driver = get_driver()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._shards: dict[str, RedisSubscription] = {}
        self._where: dict[str, str] = {}  # logical channel -> node name
        self._lock = threading.Lock()
        self._closed = False

    def _subscribe_on(self, node: Any, channel: str) -> list[threading.Event]:
        sub = self._shards.get(node.name)
        if sub is not None:
            return sub.subscribe([channel])
        sub = RedisSubscription(self._client_for(node), self._keys, sharded=True)
        self._shards[node.name] = sub
        events = sub.subscribe([channel])
        self._driver.spawn(f"dcm-shard-{node.name}", lambda: self._read(sub))
        return events

    def _read(self, sub: RedisSubscription) -> None:
        try:
            while not self._closed:
                # A bounded wait: a shard whose channels were all unsubscribed has nothing
                # to read until the next subscription (redis-py cannot wait forever there).
                item = sub.get_message(READ_WAIT)
                if item is not None:
                    self._queue.put(item)
        except Exception as exc:  # reported to the listener through the queue
            if self._closed:
                return
            self._queue.put(exc if isinstance(exc, BackendUnavailableError)
                            else BackendUnavailableError(f"shard subscription failed: {exc}"))

    def subscribe(self, channels: Iterable[str]) -> list[threading.Event]:
        events: list[threading.Event] = []
        with self._lock:
            if self._closed:
                raise BackendUnavailableError("the subscription is closed")
            for channel in channels:
                with translate_errors("SSUBSCRIBE"):
                    node = self._node_of(self._keys.channel(channel))
                    events += self._subscribe_on(node, channel)
                self._where[channel] = node.name
        return events

    def unsubscribe(self, channels: Iterable[str]) -> None:
        with self._lock:
            for channel in channels:
                name = self._where.pop(channel, None)
                if name is not None and name in self._shards:
                    self._shards[name].unsubscribe([channel])

    def get_message(self, timeout: float | None) -> tuple[str, bytes] | None:
        if self._closed:
            raise BackendUnavailableError("the subscription is closed")
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _STOP:
            raise BackendUnavailableError("the subscription is closed")
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]

    def ready(self) -> bool:
        return not self._queue.empty()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            shards = list(self._shards.values())
        for sub in shards:
            sub.close()
        self._queue.put(_STOP)
