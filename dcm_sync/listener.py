"""The bus listener: one subscription, the set of channels it should hold, and reconnection.

The listener runs in its own thread (a greenlet under gevent). It owns the subscription:
``sync_rooms`` (any thread) subscribes to a room channel while the room has local members and
unsubscribes when it has none; after a failure it rebuilds the subscription with jittered,
capped backoff and calls ``on_reconnect`` so the manager can write its state back.

A connection can also stay open and go deaf (a stalled link, a proxy that stops forwarding).
`Listener.probe` sends a probe to this server's own channel; when it does not come back
in time the subscription is dropped, which makes the listener rebuild it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from .backends.base import Backend, Confirmation, Subscription
from .concurrency import Driver, StopFlag, Worker
from .errors import BackendError
from .outbox import Cork

__all__ = ["Listener"]

logger = logging.getLogger(__name__)

#: bus messages delivered at most before the sockets' held-back frames are written
BATCH_MESSAGES = 64


class Listener:
    def __init__(
        self,
        backend: Backend,
        driver: Driver,
        stop: StopFlag,
        server_channel: str,
        has_local_members: Callable[[str], bool],
        local_rooms: Callable[[], Iterable[str]],
        on_message: Callable[[str, bytes], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._backend = backend
        self._driver = driver
        self._stop = stop
        self._server_channel = server_channel
        self._has_local_members = has_local_members
        self._local_rooms = local_rooms
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        self._lock = threading.Lock()
        self._sub: Subscription | None = None
        self._rooms: set[str] = set()
        self._worker: Worker | None = None
        self._ident: object = None
        self._connected = False
        self._probe_numbers = itertools.count(1)
        self._probes: dict[int, StopFlag] = {}
        self._received = 0  # messages read, a sign of life while a probe waits behind a backlog
        self.reconnects = 0

    @property
    def worker(self) -> Worker | None:
        return self._worker

    def start(self, timeout: float) -> None:
        """Subscribe to the server channel (waiting for the bus to confirm) and start listening."""
        sub = self._backend.subscription()
        try:
            confirmations = sub.subscribe([self._server_channel])
            self._sub = sub
            self._connected = True
            self._worker = self._driver.spawn("dcm-listener", self._run)
            self._wait(confirmations, timeout)
        except BaseException:
            sub.close()
            raise

    def in_listener(self) -> bool:
        return self._ident is not None and self._driver.current_id() == self._ident

    def sync_rooms(self, rooms: Iterable[str], wait: float | None = None) -> None:
        """Make the subscription match local membership for ``rooms``; optionally wait until a
        new subscription is confirmed (never from the listener itself)."""
        confirmations: Sequence[Confirmation] = []
        with self._lock:
            sub = self._sub
            if sub is None:
                return
            add, drop = [], []
            for room in rooms:
                wanted = self._has_local_members(room)
                if wanted and room not in self._rooms:
                    add.append(room)
                elif not wanted and room in self._rooms:
                    drop.append(room)
            try:
                if add:
                    confirmations = sub.subscribe("room:" + r for r in add)
                    self._rooms.update(add)
                if drop:
                    sub.unsubscribe("room:" + r for r in drop)
                    self._rooms.difference_update(drop)
            except BackendError as exc:  # the listener resubscribes everything on reconnect
                logger.warning("subscription change deferred until the bus is back: %s", exc)
                return
        if wait and not self.in_listener():
            self._wait(confirmations, wait)

    @staticmethod
    def _wait(confirmations: Sequence[Confirmation], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for c in confirmations:
            if not c.wait(max(0.0, deadline - time.monotonic())):
                logger.warning("subscription not confirmed within %.1fs", timeout)
                return

    def _run(self) -> None:
        self._ident = self._driver.current_id()
        # the room messages of one read from Redis are delivered as one batch: each socket
        # gets the batch's frames in one write (see Cork), written before the listener waits
        cork = Cork(self._ident)
        cork.install()
        try:
            self._read_loop(cork)
        finally:
            cork.uninstall()

    def _read_loop(self, cork: Cork) -> None:
        batch = 0
        while not self._stop.is_set():
            sub = self._sub
            if sub is None:
                return
            try:
                # until a message arrives or close(); in bounded reads where it must be (see
                # redis_pubsub.BLOCKING_READS)
                item = sub.get_message(None)
            except BackendError as exc:
                cork.flush()
                if self._stop.is_set():
                    return
                logger.warning("bus connection lost (%s); reconnecting", exc)
                self._reconnect()
                continue
            if item is None:
                cork.flush()
                batch = 0
                continue
            self._received += 1
            # another message was read with this one: hold this one's room frames back, to
            # write them with the next one's; the last of a batch writes them all
            batch += 1
            cork.active = batch < BATCH_MESSAGES and sub.ready()
            try:
                self._on_message(*item)
            except Exception:
                logger.exception("error while handling a bus message on %s", item[0])
            if not cork.active:
                cork.flush()
                batch = 0

    def probe(self, send: Callable[[int], None], timeout: float) -> bool | None:
        """Send probe number N with ``send(N)`` and wait for `probe_returned` (N). On
        failure drop the subscription (the listener rebuilds it) and return False; None when
        skipped because the listener is reconnecting already."""
        with self._lock:
            sub = self._sub if self._connected else None
        if sub is None:
            return None
        number = next(self._probe_numbers)
        arrived = self._driver.event()
        self._probes[number] = arrived
        received = self._received
        try:
            send(number)
            ok = arrived.wait(timeout) or self._received != received
            why = f"did not come back within {timeout:.1f}s"
        except BackendError as exc:
            ok, why = False, f"could not be sent ({exc})"
        finally:
            self._probes.pop(number, None)
        if ok or self._stop.is_set():
            return True
        with self._lock:
            if self._sub is not sub or not self._connected:
                return None  # the listener noticed on its own meanwhile
            self._connected = False
            sub.close()  # wakes the listener, which rebuilds the subscription
        logger.warning("subscription probe %s; rebuilding the subscription", why)
        return False

    def probe_returned(self, number: int) -> None:
        arrived = self._probes.get(number)
        if arrived is not None:
            arrived.set()

    def _reconnect(self) -> None:
        with self._lock:
            self._connected = False
            if self._sub is not None:
                self._sub.close()
        failures = 0
        while not self._stop.is_set():
            failures += 1
            if self._stop.wait(self._backend.retry_delay(failures)):
                return
            sub: Subscription | None = None
            try:
                sub = self._backend.subscription()  # in Cluster it reads the slot map: may fail
                with self._lock:
                    rooms = set(self._local_rooms())
                    sub.subscribe([self._server_channel, *("room:" + r for r in rooms)])
                    self._sub, self._rooms = sub, rooms
                self._on_reconnect()
                self._connected = True  # probes resume once the state is written back
            except Exception as exc:
                if isinstance(exc, BackendError):
                    logger.info("reconnect attempt %d failed: %s", failures, exc)
                else:
                    logger.exception("restoring state after reconnect failed; retrying")
                with self._lock:
                    self._connected = False
                    if sub is not None:
                        sub.close()
                continue
            self.reconnects += 1
            logger.info("bus reconnected after %d attempt(s)", failures)
            return

    def close(self) -> None:
        with self._lock:
            self._connected = False
            if self._sub is not None:
                self._sub.close()
                self._sub = None
