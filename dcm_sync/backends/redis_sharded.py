"""Sharded pub/sub over a Redis Cluster, read by the listener itself.

A `ShardedSubscription` holds one `RedisSubscription` (``SSUBSCRIBE``) to the master of each
shard that owns one of its channels. The listener's ``get_message`` reads them all in its own
thread (greenlet): first what hiredis already holds of the connection it read last, then the
connections that the last wait found readable (what the socket holds, in one system call);
only when none has anything does it wait for any of their sockets to become readable (poll
under threads, the gevent hub under gevent). A worker per shard handing messages over a
queue cost the listener a thread or greenlet switch and a queue per message, and the Cluster
a fifth of a single Redis's room broadcast rate.

A wake-up pipe is waited on with the sockets: ``subscribe`` writes to it (a new shard, or one
subscribed again, is not among the sockets the listener waits on yet) and so does ``close``.

Each channel lives on one connection, read in order: messages keep their order per channel.
A lost shard connection, or a shard channel that Redis unsubscribed (its slot moved), ends the
whole subscription (``get_message`` raises `BackendUnavailableError`), and the listener builds
a new one from a fresh slot map.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import redis

from ..concurrency import Poller, get_driver
from ..errors import BackendUnavailableError
from .redis_base import translate_errors
from .redis_keys import KeyLayout
from .redis_pubsub import BOUNDED_WAIT, RedisSubscription

__all__ = ["ShardedSubscription"]

logger = logging.getLogger(__name__)


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError as exc:
            logger.debug("closing a wake-up pipe: %s", exc)


class ShardedSubscription:
    """Sharded pub/sub over a Redis Cluster: a `RedisSubscription` to the master of each
    shard that holds a subscribed channel, all read by the caller of ``get_message``."""

    def __init__(self, node_of: Callable[[str], Any], client_for: Callable[[Any], redis.Redis],
                 keys: KeyLayout) -> None:
        self._node_of = node_of          # physical channel -> the ClusterNode of its master
        self._client_for = client_for    # ClusterNode -> a client for subscriptions
        self._keys = keys
        self._driver = get_driver()
        self._shards: dict[str, RedisSubscription] = {}  # node name -> its connection
        self._all: tuple[RedisSubscription, ...] = ()    # the same, for the reader to iterate
        self._where: dict[str, str] = {}  # logical channel -> node name
        self._lock = threading.Lock()
        self._closed = False
        #: why a channel could not be subscribed: the next read raises it
        self._broken: BackendUnavailableError | None = None
        # the reader's own (get_message's caller: one listener)
        self._readable: deque[RedisSubscription] = deque()  # found readable, not read since
        self._last: RedisSubscription | None = None  # read last: drained first
        self._poller: Poller | None = None  # on the sockets of _by_fd and the wake-up pipe
        self._by_fd: dict[int, RedisSubscription] = {}
        self._changed = False  # a subscription or a confirmation since the poller was made
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # closed once nobody can wait on them any more (a reader holds the subscription)
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)

    def subscribe(self, channels: Iterable[str]) -> list[threading.Event]:
        events: list[threading.Event] = []
        try:
            with self._lock:
                if self._closed:
                    raise BackendUnavailableError("the subscription is closed")
                for channel in channels:
                    try:
                        with translate_errors("SSUBSCRIBE"):
                            node = self._node_of(self._keys.channel(channel))
                            events += self._subscribe_on(node, channel)
                    except BackendUnavailableError as exc:
                        # the listener rebuilds the subscription (a fresh slot map, every
                        # channel again), with backoff; else the channel would stay missing
                        self._broken = exc
                        raise
                    self._where[channel] = node.name
        finally:
            self._changed = True  # to wait on a new shard too (or on one that had nothing left)
            self._wake()
        return events

    def _subscribe_on(self, node: Any, channel: str) -> list[threading.Event]:
        sub = self._shards.get(node.name)
        if sub is None:
            sub = self._shards[node.name] = RedisSubscription(self._client_for(node), self._keys,
                                                              sharded=True)
            self._all = (*self._all, sub)
        return sub.subscribe([channel])

    def unsubscribe(self, channels: Iterable[str]) -> None:
        with self._lock:
            for channel in channels:
                name = self._where.pop(channel, None)
                if name is not None and name in self._shards:
                    self._shards[name].unsubscribe([channel])

    def get_message(self, timeout: float | None) -> tuple[str, bytes] | None:
        """The next message of any shard; None for a reply that is not a message, or after
        ``timeout`` (``None``: `BOUNDED_WAIT`) with nothing read."""
        deadline = time.monotonic() + (BOUNDED_WAIT if timeout is None else timeout)
        while True:
            if self._closed:
                raise BackendUnavailableError("the subscription is closed")
            if self._broken is not None:
                raise self._broken
            sub, block = self._next()
            if sub is not None:
                self._last = sub
                item = sub.read_waiting(block)
                if item is None:  # a confirmation: what the connection waits for may change
                    self._changed = True
                return item
            if not self._wait(max(0.0, deadline - time.monotonic())):
                return None

    def _next(self) -> tuple[RedisSubscription | None, bool]:
        """A connection with a reply to read at once, and whether to read it in a blocking
        read (a reply, or part of one, is in hand); (None, False) if there is none. Only the
        one read last can hold replies read already: it is read until it holds none before
        another is."""
        last = self._last_holding()
        if last is not None:
            return last, True  # the rest of the last read: a batch from one shard stays together
        while self._readable:
            sub = self._readable.popleft()
            if not sub.listening:
                continue
            if not sub.fill():
                return sub, False  # redis-py reads it, if it is readable still
            if sub.buffered():
                return sub, True
        return None, False

    def _wait(self, timeout: float) -> bool:
        """Wait for a shard's socket (or the wake-up pipe) to become readable; False after
        ``timeout`` with none."""
        if self._changed or self._poller is None:
            self._changed = False  # before looking: a change from now on is seen next time
            self._poller, self._by_fd = self._poll_listening()
        found = False
        for fd, _ in self._poller.poll(timeout * 1000):
            found = True
            if fd == self._wake_r:
                self._drain()
            else:
                self._readable.append(self._by_fd[fd])
        return found

    def _poll_listening(self) -> tuple[Poller, dict[int, RedisSubscription]]:
        """A poller on the wake-up pipe and on every connection that is subscribed to
        something. Not on the others: redis-py reads nothing there (their sockets, closed
        by Redis, would stay readable, forever)."""
        poller = self._driver.poller()
        poller.register(self._wake_r, select.POLLIN)
        by_fd = {}
        for sub in self._all:
            if sub.listening:
                fd = sub.fileno()
                poller.register(fd, select.POLLIN)
                by_fd[fd] = sub
        return poller, by_fd

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except BlockingIOError:
            pass  # the pipe is full: the reader has wake-ups enough to read

    def _drain(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass  # empty

    def ready(self) -> bool:
        """A reply read already, or a socket found readable and not read since (so room
        frames of several shards' messages that arrived together are written together)."""
        if self._closed:
            return False
        return self._last_holding() is not None or any(sub.listening for sub in self._readable)

    def _last_holding(self) -> RedisSubscription | None:
        """The connection read last, if it holds replies read already."""
        last = self._last
        return last if last is not None and last.listening and last.buffered() else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            shards = self._all
        self._wake()  # a reader waiting on the sockets returns and sees the subscription closed
        for sub in shards:
            sub.close()
