"""Background workers for gevent or plain threads, chosen once per manager.

The gevent driver is used when ``gevent.monkey.is_module_patched("socket")`` (gunicorn's gevent
worker, ``gevent.monkey.patch_all()``); otherwise daemon threads. This is the only module that
imports gevent.

Under gevent the manager's operations run on a few greenlets of its own (`Runner`, the
``dcm-io`` greenlets) while the caller, a socket's greenlet, waits. CPython 3.11 and later give
every greenlet a frame stack of its own, and each page of it that a call ever reached stays
resident for the greenlet's life: a Redis round trip through redis-py goes ~3.7 KB deeper than
the view that asks for it, so a socket's greenlet that made one holds a second 4 KiB page for
as long as its client stays connected. Made on a ``dcm-io`` greenlet, that depth is paid once
per greenlet of the pool instead of once per socket.
"""

from __future__ import annotations

import functools
import logging
import select
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

__all__ = ["Driver", "Worker", "get_driver", "StopFlag", "HandOffLock", "Poller", "Runner",
           "on_runner", "INLINE", "IO_GREENLETS"]

P = ParamSpec("P")
R = TypeVar("R")

IO_GREENLETS = 32
"""The most ``dcm-io`` greenlets a manager starts (one per operation in flight, started as
needed and kept): more operations at once wait their turn."""

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


class Runner(Protocol):
    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(*args, **kwargs)``: its result, or its exception raised here."""
        ...

    def stop(self) -> None:
        """End the runner's greenlets once what was asked of them is done."""
        ...


class _HasRunner(Protocol):
    _runner: Runner


S = TypeVar("S", bound=_HasRunner)


def on_runner(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """A method of an object with a ``_runner``, run through it."""
    @functools.wraps(method)
    def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._runner.call(method, self, *args, **kwargs)
    return call


class _InlineRunner:
    """Threads: each thread has its own stack already; the call runs in the caller."""

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return fn(*args, **kwargs)

    def stop(self) -> None:
        pass


INLINE: Runner = _InlineRunner()
"""A runner that runs each call in its caller."""


class _GreenletRunner:
    """Calls run on up to ``size`` greenlets of the runner's own (``dcm-io-N``, started as
    calls come and kept), handed over by a direct switch: the caller switches into an idle one,
    which runs the call until it completes, blocking on I/O through the hub like any greenlet,
    and switches straight back to the caller with the result (about 1 µs a call, where a queue
    and an ``AsyncResult`` cost 7). A call runs in its caller when it comes from one of the
    library's own greenlets (``own``: these, the listener, the outboxes' writers, ...; the
    listener, say, must never wait for a call that may wait for the listener), from the hub,
    from another native thread, after `stop`, or while every ``dcm-io`` greenlet is busy. A
    caller that stops waiting (a ``Timeout``, a kill) leaves its call to finish: the greenlet
    then goes back to the idle ones without switching to it."""

    def __init__(self, size: int, own: weakref.WeakSet[Any]) -> None:
        import gevent
        import gevent.monkey
        import greenlet

        class _IoGreenlet(greenlet.greenlet):  # type: ignore[misc]
            name = "dcm-io"

        self._gevent = gevent
        self._glet_cls = _IoGreenlet
        self._native_id: Callable[[], int] = gevent.monkey.get_original("_thread", "get_ident")
        self._home = self._native_id()
        self._hub: Any = gevent.get_hub()
        self._size = size
        self._own = own
        self._started = 0
        self._idle: list[Any] = []
        self._stopped = False

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        current = self._gevent.getcurrent()
        if (self._stopped or current in self._own or current is self._hub
                or self._native_id() != self._home):
            return fn(*args, **kwargs)
        while self._idle and self._idle[-1].dead:  # ended by a stray throw while idle
            self._idle.pop()
        if self._idle:
            glet = self._idle.pop()
        elif self._started < self._size:
            glet = self._glet_cls(self._work, parent=self._hub)
            glet.name = f"dcm-io-{self._started}"
            self._started += 1
            self._own.add(glet)
        else:
            return fn(*args, **kwargs)
        call = [current, fn, args, kwargs]  # call[0]: None once the caller stopped waiting
        try:
            ok, value = glet.switch(call)
        finally:
            call[0] = None
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def _work(self, call: list[Any]) -> None:
        try:
            self._serve(call)
        finally:  # however it ends: another may start in its place
            self._started -= 1

    def _serve(self, call: list[Any]) -> None:
        me = self._gevent.getcurrent()
        while True:
            _, fn, args, kwargs = call
            try:
                out = (True, fn(*args, **kwargs))
            except Exception as exc:
                out = (False, exc)
            except BaseException as exc:  # killed mid-call: tell the caller, then end
                if call[0] is not None:
                    self._hub.loop.run_callback(call[0].switch, (False, exc))
                raise
            caller = call[0]
            if self._stopped:
                self._hub.loop.run_callback(me.throw)  # ends this greenlet once it is idle
            else:
                self._idle.append(me)
            # idle until a caller switches in with its call
            call = caller.switch(out) if caller is not None else self._hub.switch()

    def stop(self) -> None:
        self._stopped = True
        idle, self._idle = self._idle, []
        for glet in idle:
            self._hub.loop.run_callback(glet.throw)

class Driver(Protocol):
    name: str

    def runner(self) -> Runner:
        """Where the manager's operations run (see the module's docstring)."""
        ...

    def spawn(self, name: str, target: Callable[[], None]) -> Worker: ...

    def event(self) -> StopFlag: ...

    def current_id(self) -> object: ...

    def kill(self, worker: Worker) -> None: ...

    def poller(self) -> Poller:
        """A ``select.poll`` object that waits the driver's way (gevent's in the hub)."""
        ...


class _ThreadDriver:
    name = "threading"

    def runner(self) -> Runner:
        return _InlineRunner()

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
        #: the greenlets this driver started: a call to a runner from one runs in place
        self._own: weakref.WeakSet[Any] = weakref.WeakSet()

    def runner(self) -> Runner:
        return _GreenletRunner(IO_GREENLETS, self._own)

    def spawn(self, name: str, target: Callable[[], None]) -> Worker:
        glet = self._gevent.spawn(target)
        glet.name = name
        self._own.add(glet)
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
