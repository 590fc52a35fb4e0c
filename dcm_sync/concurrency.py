"""Background workers for gevent or plain threads, chosen once per manager.

The gevent driver is used when ``gevent.monkey.is_module_patched("socket")`` (gunicorn's gevent
worker, ``gevent.monkey.patch_all()``); otherwise daemon threads. This is the only module that
imports gevent.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Protocol

__all__ = ["Driver", "Worker", "get_driver", "StopFlag"]

logger = logging.getLogger(__name__)


class Worker(Protocol):
    name: str

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


class StopFlag(Protocol):
    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class Driver(Protocol):
    name: str

    def spawn(self, name: str, target: Callable[[], None]) -> Worker: ...

    def event(self) -> StopFlag: ...

    def current_id(self) -> object: ...

    def kill(self, worker: Worker) -> None: ...


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

        self._gevent = gevent
        self._event_cls = gevent.event.Event

    def spawn(self, name: str, target: Callable[[], None]) -> Worker:
        glet = self._gevent.spawn(target)
        glet.name = name
        return _GreenletWorker(glet, name)

    def event(self) -> StopFlag:
        return self._event_cls()  # type: ignore[no-any-return]

    def current_id(self) -> object:
        return id(self._gevent.getcurrent())

    def kill(self, worker: Worker) -> None:
        self._gevent.kill(worker._glet, block=True, timeout=1.0)  # type: ignore[attr-defined]


def _socket_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


def get_driver() -> Driver:
    """The driver for the current process: gevent if sockets are monkey-patched, else threads."""
    return _GeventDriver() if _socket_patched() else _ThreadDriver()
