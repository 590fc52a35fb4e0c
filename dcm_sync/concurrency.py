"""Background workers for gevent or plain threads, chosen once per manager.

The gevent driver is used when ``gevent.monkey.is_module_patched("socket")`` (gunicorn's gevent
worker, ``gevent.monkey.patch_all()``); otherwise daemon threads. This is the only module that
imports gevent.
"""

from __future__ import annotations

import logging
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Driver", "Worker", "get_driver", "StopFlag", "HandOffLock", "Poller"]

logger = logging.getLogger(__name__)


class HandOffLock:
    """A lock that, released while others wait for it, lets one of them have it before the
    releaser can take it again. Under gevent a greenlet that releases a lock and takes it again
    without blocking in between (a view whose socket holds many messages, each published in
    turn) would keep it from every other greenlet for as long as it has work, and their waits
    would time out. ``time.sleep(0)`` is gevent's yield when gevent patched it, a thread yield
    otherwise; it is only paid when someone waits."""

    __slots__ = ("_lock", "_waiting")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting = 0  # callers inside acquire(); only read to decide whether to yield

    def acquire(self, timeout: float = -1) -> bool:
        self._waiting += 1
        try:
            return self._lock.acquire(timeout=timeout)
        finally:
            self._waiting -= 1

    def release(self) -> None:
        self._lock.release()
        if self._waiting:
            time.sleep(0)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Worker(Protocol):
    name: str

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


class StopFlag(Protocol):
    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class Poller(Protocol):
    """What the library asks of a ``select.poll`` object (``register(fd, select.POLLIN)``;
    ``poll`` takes milliseconds, ``None`` to wait until a descriptor is ready, and returns
    ``(fd, events)`` pairs, a closed or failed descriptor among them)."""

    def register(self, fd: int, eventmask: int = ...) -> None: ...

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]: ...


class Driver(Protocol):
    name: str

    def spawn(self, name: str, target: Callable[[], None]) -> Worker: ...

    def event(self) -> StopFlag: ...

    def current_id(self) -> object: ...

    def kill(self, worker: Worker) -> None: ...

    def poller(self) -> Poller:
        """A ``select.poll`` object that waits the driver's way (gevent's in the hub)."""
        ...


class _ThreadDriver:
    name = "threading"

    def spawn(self, name: str, target: Callable[[], None]) -> Worker:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def event(self) -> StopFlag:
        return threading.Event()

    def current_id(self) -> object:
        return threading.get_ident()

    def kill(self, worker: Worker) -> None:
        logger.warning("thread %s did not stop in time; it is a daemon and is left to exit", worker.name)

    def poller(self) -> Poller:
        made: Poller = select.poll()
        return made


class _GreenletWorker:
    def __init__(self, glet: object, name: str) -> None:
        self._glet = glet
        self.name = name

    def join(self, timeout: float | None = None) -> None:
        self._glet.join(timeout)  # type: ignore[attr-defined]

    def is_alive(self) -> bool:
        return not self._glet.dead  # type: ignore[attr-defined]


class _GeventDriver:
    name = "gevent"

    def __init__(self) -> None:
        import gevent
        import gevent.event
        import gevent.select

        self._gevent = gevent
        self._event_cls = gevent.event.Event
        self._poll = gevent.select.poll

    def spawn(self, name: str, target: Callable[[], None]) -> Worker:
        glet = self._gevent.spawn(target)
        glet.name = name
        return _GreenletWorker(glet, name)

    def event(self) -> StopFlag:
        return self._event_cls()  # type: ignore[no-any-return]

    def current_id(self) -> object:
        return id(self._gevent.getcurrent())

    def kill(self, worker: Worker) -> None:
        """Raise ``GreenletExit`` in it and wait up to 1 s for it to end (``gevent.kill``
        itself takes no ``block``: the greenlet's own ``kill`` does)."""
        glet = worker._glet  # type: ignore[attr-defined]
        glet.kill(block=True, timeout=1.0)
        if not glet.dead:
            logger.warning("greenlet %s did not end within 1 s of being killed", worker.name)

    def poller(self) -> Poller:
        made: Poller = self._poll()
        return made


def _socket_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


def get_driver() -> Driver:
    """The driver for the current process: gevent if sockets are monkey-patched, else threads."""
    return _GeventDriver() if _socket_patched() else _ThreadDriver()
