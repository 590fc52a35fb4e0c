"""A subscription to the Redis bus on one connection: a single Redis's (or Sentinel master's), or
one Cluster shard's with sharded pub/sub (``SSUBSCRIBE``; `.redis_sharded` reads those of
every shard together).

Channels given and returned here are logical (``room:<room>``, ``server:<sid>``); the
`KeyLayout` names them in Redis.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import redis

from ..errors import BackendUnavailableError
from .redis_base import as_str, translate_errors
from .redis_keys import KeyLayout
from .redis_typed import pubsub

__all__ = ["RedisSubscription", "BLOCKING_READS", "BOUNDED_WAIT"]

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

#: bytes one `RedisSubscription.fill` reads at most (redis-py's own read size)
FILL_BYTES = 65536

_CLASSIC = ("subscribe", "unsubscribe", "message")
_SHARDED = ("ssubscribe", "sunsubscribe", "smessage")


class _Wire:
    """A subscriber connection's socket and its hiredis reader (what redis-py keeps in
    ``Connection._sock`` and ``_HiredisParser._reader``), read here for what redis-py's
    public calls cannot do cheaply: wait on several connections at once, read one without
    switching its socket's timeout."""

    __slots__ = ("sock", "fd", "has_data", "feed", "tls", "buffer", "_conn")

    def __init__(self, conn: Any, sock: Any) -> None:
        self.sock, self._conn = sock, conn
        self.fd: int = sock.fileno()
        self.tls = hasattr(sock, "pending")  # bytes decrypted above the socket wait in there
        reader = getattr(getattr(conn, "_parser", None), "_reader", None)
        #: hiredis's; None with redis-py's own parser, whose buffer only it can read
        self.has_data: Callable[[], bool] | None = getattr(reader, "has_data", None)
        self.feed: Callable[[bytearray, int, int], None] | None = getattr(reader, "feed", None)
        self.buffer = bytearray(FILL_BYTES if self.feed is not None and not self.tls else 0)

    @classmethod
    def of(cls, pubsub: Any) -> _Wire | None:
        conn = getattr(pubsub, "connection", None)
        sock = getattr(conn, "_sock", None)
        if sock is None:
            return None
        try:
            return cls(conn, sock)
        except OSError:  # closed meanwhile
            return None

    def buffered(self) -> bool:
        if self.has_data is None:  # redis-py's parser: its own buffer, then the socket
            return bool(self._conn.can_read(timeout=0))
        return bool(self.has_data()) or (self.tls and bool(self.sock.pending()))


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
        self._wire_seen: _Wire | None = None
        # redis-py's ``PubSub.subscribed``, without its property's two calls (per message)
        self._subscribed: Callable[[], bool] = getattr(
            getattr(self._pubsub, "subscribed_event", None), "is_set",
            lambda: bool(getattr(self._pubsub, "subscribed", False)))

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
        if timeout is None and not (self._can_block and self.listening):
            timeout = BOUNDED_WAIT
        return self._read(timeout)

    def read_waiting(self, block: bool) -> tuple[str, bytes] | None:
        """``get_message`` for a connection that holds a reply (`buffered`: ``block``, one
        blocking read without asking the socket first, whose poll and peek would cost more
        than the read) or whose socket was readable (not ``block``: redis-py asks it). None
        for a reply that is not a message, or when nothing is subscribed (nothing is read)."""
        return self._read(None if block and self.listening else 0.0)

    def _read(self, timeout: float | None) -> tuple[str, bytes] | None:
        if self._closed:
            raise BackendUnavailableError("the subscription is closed")
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

    @property
    def listening(self) -> bool:
        """Subscribed to something (redis-py's view: from the subscribe command sent until
        the reply to the last unsubscription is read)."""
        return bool(self._subscribed())

    def _wire(self) -> _Wire | None:
        """The connection's socket and hiredis reader (looked up again if redis-py replaced
        them); None before the connection is made, once it is gone, or without hiredis."""
        sock = getattr(getattr(self._pubsub, "connection", None), "_sock", None)
        wire = self._wire_seen
        if wire is None or wire.sock is not sock:
            wire = self._wire_seen = _Wire.of(self._pubsub)
        return wire

    def fileno(self) -> int:
        """The connection's socket, to wait on; `BackendUnavailableError` once it is gone
        (redis-py would otherwise connect again on the next read, quietly, losing what was
        published meanwhile)."""
        wire = self._wire()
        if self._closed or wire is None:
            raise BackendUnavailableError("the subscription's connection is gone")
        return wire.fd

    def buffered(self) -> bool:
        """Whether a reply (or part of one) was read from the socket already: by hiredis, or
        decrypted by TLS and waiting above the socket (where polling the socket cannot see it)."""
        wire = self._wire()
        if wire is None or self._closed:
            return False
        try:
            return wire.buffered()
        except (redis.RedisError, OSError) as exc:  # redis-py's parser found it closed
            raise BackendUnavailableError(f"Redis unreachable during listen: {exc}") from exc

    def fill(self) -> bool:
        """Read what the socket holds into hiredis's buffer, in one system call; then
        `read_waiting` returns its replies without touching the socket. redis-py's own read
        switches the socket's timeout off and on again around each read, two system calls
        more, and under threads each lets the publishing threads take the interpreter lock
        before this one gets it back. False where this cannot be done (TLS decrypts above the
        socket): `read_waiting` then reads the socket itself."""
        wire = self._wire()
        if self._closed or wire is None or wire.feed is None or wire.tls:
            return False
        try:
            size = os.readv(wire.fd, [wire.buffer])
        except BlockingIOError:
            return True  # readable, then not (nothing to read after all)
        except OSError as exc:
            raise BackendUnavailableError(f"Redis unreachable during listen: {exc}") from exc
        if not size:
            raise BackendUnavailableError("Redis closed the subscription's connection")
        wire.feed(wire.buffer, 0, size)
        return True

    def ready(self) -> bool:
        # Only what hiredis has read already: asking the socket costs more than the write
        # it could save (15 µs under gevent). Without hiredis (redis-py's own parser): False.
        wire = self._wire()
        return (wire is not None and not self._closed and wire.has_data is not None
                and bool(wire.has_data()))

    def close(self) -> None:
        self._closed = True
        try:
            self._pubsub.reset()
            self._pool.disconnect()  # the subscription's own pool: nothing reuses its connection
        except (redis.RedisError, OSError) as exc:
            logger.debug("closing subscription: %s", exc)
