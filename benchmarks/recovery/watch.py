"""What faults 7-9 of ``benchmarks.recovery`` measure with while a topology fails over: a
condition watched from a thread of its own (a stats call or a Redis read may block for a while
then, and must not hold back the polling of the sockets), the measurement's calls counted by
outcome, a steady stream of messages, and small reads of one Redis node (role, a hash field,
shard subscribers, what a Sentinel names) that answer False while the node cannot tell.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis

from dcm_sync import BackendUnavailableError
from testkit.recording import RecordingSocket
from testkit.topologies import HOST

from .tools import LIMIT, SEND_EVERY, MeasurementError, Route

__all__ = ["Watch", "Calls", "Stream", "node_client", "is_master", "holds", "topology_errors",
           "names_master", "subscribers"]

WATCH_EVERY = 0.05       # seconds between polls of a condition that may block (stats, Redis)

T = TypeVar("T")


class Watch:
    """Calls ``check`` every ``every`` s in a thread of its own (a check may block while the
    topology fails over, without holding back the rest of the measurement) until it returns
    something true; :attr:`at` is when. An exception from ``check`` ends the watch and
    :meth:`done` raises it (checks that expect errors catch them)."""

    def __init__(self, name: str, check: Callable[[], object], every: float = WATCH_EVERY,
                 timeout: float = LIMIT) -> None:
        self.name = name
        self.at: float | None = None
        self.value: object = None
        self.error: Exception | None = None
        self._check, self._every = check, every
        self._deadline = time.monotonic() + timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"recovery-watch-{name}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                value = self._check()
            except Exception as exc:
                self.error = exc
                return
            if value:
                self.value, self.at = value, time.monotonic()
                return
            self._stop.wait(self._every)

    def done(self) -> bool:
        if self.error is not None:
            raise MeasurementError(f"{self.name}: {self.error}".splitlines()[0]) from self.error
        return self.at is not None

    def since(self, t0: float) -> float:
        assert self.at is not None, f"{self.name} has not happened"
        return self.at - t0

    def close(self, wait: float = 5.0) -> None:
        """Stop polling (a check in progress, e.g. wait_failover, ends on its own timeout)."""
        self._stop.set()
        self._thread.join(wait)


class Calls:
    """Outcomes of the measurement's calls, counted; the messages that sends accepted, to find
    those never delivered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.accepted: set[tuple[str, int]] = set()
        self.first_other: dict[str, str] = {}  # exception type -> its first message

    def _count(self, outcome: str, exc: Exception | None = None) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            if exc is not None:
                self.first_other.setdefault(outcome, str(exc)[:300])

    def call(self, fn: Callable[[], T]) -> T:
        try:
            result = fn()
        except BackendUnavailableError:
            self._count("unavailable")
            raise
        except Exception as exc:
            self._count(type(exc).__name__, exc)
            raise
        self._count("returned_false" if result is False else "ok")
        return result

    def route(self, route: Route) -> Route:
        def send(message: dict[str, Any]) -> object:
            result = self.call(lambda: route.send(message))
            if result is not False:
                with self._lock:
                    self.accepted.add((message["probe"], message["n"]))
            return result
        return Route(route.name, send, route.frames, route.threaded)

    def lost(self, *sockets: RecordingSocket) -> int:
        arrived = {(m["probe"], m["n"]) for ws in sockets for m in ws.messages()
                   if isinstance(m, dict) and "probe" in m}
        with self._lock:
            return len(self.accepted - arrived)

    def report(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self.outcomes)
        return {"calls": sum(out.values()), "unavailable": out.pop("unavailable", 0),
                "returned_false": out.pop("returned_false", 0),
                "other_errors": {k: v for k, v in out.items() if k != "ok"},
                "other_first": dict(self.first_other)}


class Stream:
    """Sends a numbered message on each route every SEND_EVERY s, from a thread, until closed."""

    def __init__(self, routes: list[Route]) -> None:
        self._routes = routes
        self._tag = uuid.uuid4().hex[:12]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="recovery-stream")
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 2 * LIMIT
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            n += 1
            for route in self._routes:
                with contextlib.suppress(Exception):  # counted by Calls; the next one follows
                    route.send({"probe": f"{self._tag}-stream-{route.name}", "n": n})
            self._stop.wait(SEND_EVERY)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)



def node_client(stack: contextlib.ExitStack, port: int) -> redis.Redis:
    r = redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1)
    stack.callback(r.close)
    return r


def is_master(r: redis.Redis) -> bool:
    try:
        return bool(r.info("replication")["role"] == "master")
    except redis.RedisError:
        return False


def holds(r: redis.Redis, key: str, server_id: str) -> bool:
    """The node is a master and answers HGET key serverId with ``server_id`` (a Cluster node that
    does not own the slot answers MOVED)."""
    if not is_master(r):
        return False
    try:
        value = r.hget(key, "serverId")
    except redis.RedisError:
        return False
    return (value.decode() if isinstance(value, bytes) else value) == server_id


@contextlib.contextmanager
def topology_errors() -> Iterator[None]:
    """A topology helper's Redis or lookup error fails the run, not the benchmark."""
    try:
        yield
    except (redis.RedisError, LookupError) as exc:
        raise MeasurementError(f"topology: {type(exc).__name__}: {exc}") from exc


def names_master(r: redis.Redis, service: str, port: int) -> bool:
    try:
        addr = r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service)  # type: ignore[no-untyped-call]
    except redis.RedisError:
        return False
    return bool(addr) and int(addr[1]) == port


def subscribers(r: redis.Redis, channel: str) -> int:
    try:
        return int(r.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1])  # type: ignore[no-untyped-call]
    except redis.RedisError:
        return -1


