"""What ``python -m benchmarks.recovery`` builds its faults from: bounded polling of delivery and of Redis
state, failing calls timed, a Redis of its own, in-process managers with recording sockets (a
``Pair``: A and B), and an example server process with WebSocket clients (a ``Victim``) next
to an in-process survivor. Everything made is registered on an ``ExitStack`` and torn down there.

Delivery is measured from outside, the way a user sees it: a *route* sends tagged messages
every 50 ms (each in a thread of its own, so that a call stuck behind a dead link does not hold
back the next attempt) and polls the receiving socket; the route works again at the first
arrival of a message sent after the fault ended. Every wait gives up after ``LIMIT`` seconds
with :class:`MeasurementError`.
"""

from __future__ import annotations

import contextlib
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from dcm_sync import (
    BackendUnavailableError,
    Config,
    DistributedConnectionManager,
    create_distributed_connection_manager,
)
from dcm_sync.backends.redis_keys import KeyLayout, unpack_record
from testkit.chat import EXAMPLE, ChatClient, ChatServer
from testkit.processes import ServerProcess
from testkit.recording import RecordingSocket, connect
from testkit.redis_server import RedisServer

__all__ = ["LIMIT", "DEFAULTS", "MeasurementError", "RunResult", "Route", "measure", "failing_calls",
           "state_present", "state_gone", "ExampleServer", "redis_server", "manager", "new_prefix",
           "Pair", "make_pair", "departures", "told_of", "Victim", "survivor_and_victim", "victim_routes",
           "HEARTBEAT", "SEND_EVERY"]

LIMIT = 60.0          # seconds: the longest any one wait may take
SEND_EVERY = 0.05     # seconds between the tagged messages of a route
POLL = 0.01           # seconds between polls of sockets and Redis
MAX_IN_FLIGHT = 50    # sending threads per route (a stalled call takes up to redis_timeout)

Frames = Callable[[], Sequence[Any]]
Rooms = Mapping[str, set[str]]  # connection id -> the rooms it is in


class MeasurementError(Exception):
    """A measurement did not complete (something did not recover in time, or behaved unexpectedly)."""


@dataclass
class RunResult:
    """One run of one fault: its figures (seconds) and what the user saw."""

    figures: dict[str, float]
    seen: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """``send(message)`` must make ``message`` (a dict) reach the socket whose frames ``frames()``
    returns (JSON text, or already decoded dicts). ``threaded``: send from a thread per attempt."""

    name: str
    send: Callable[[dict[str, Any]], object]
    frames: Frames
    threaded: bool = True


def _carries(frame: Any, key: str) -> bool:
    if isinstance(frame, dict):
        return frame.get("probe") == key
    return isinstance(frame, str) and key in frame


def measure(t0: float, what: str, routes: Sequence[Route] = (),
            conditions: Mapping[str, Callable[[], bool]] | None = None,
            timeout: float = LIMIT) -> dict[str, float]:
    """Seconds from ``t0`` until each route delivers a message sent from now on, and until each
    condition holds (polled, concurrently). MeasurementError naming what did not happen in time."""
    tag = uuid.uuid4().hex[:12]
    pending_routes = {r.name: r for r in routes}
    pending_conds = dict(conditions or {})
    scanned = dict.fromkeys(pending_routes, 0)
    in_flight = dict.fromkeys(pending_routes, 0)
    lock = threading.Lock()
    threads: list[threading.Thread] = []
    done: dict[str, float] = {}

    def attempt(route: Route, message: dict[str, Any]) -> None:
        try:
            route.send(message)
        except Exception:  # noqa: S110 - a failed attempt is what an outage looks like; the next one follows
            pass
        finally:
            with lock:
                in_flight[route.name] -= 1

    deadline = t0 + timeout
    next_send, n = 0.0, 0
    try:
        while pending_routes or pending_conds:
            now = time.monotonic()
            if now >= next_send:
                n += 1
                next_send = now + SEND_EVERY
                for route in list(pending_routes.values()):
                    message = {"probe": f"{tag}-{route.name}", "n": n}
                    if not route.threaded:
                        attempt_inline(route, message)
                        continue
                    with lock:
                        if in_flight[route.name] >= MAX_IN_FLIGHT:
                            continue
                        in_flight[route.name] += 1
                    t = threading.Thread(target=attempt, args=(route, message), daemon=True,
                                         name=f"recovery-send-{route.name}")
                    threads.append(t)
                    t.start()
            for name, route in list(pending_routes.items()):
                frames = route.frames()
                if any(_carries(f, f"{tag}-{name}") for f in frames[scanned[name]:]):
                    done[name] = time.monotonic() - t0
                    del pending_routes[name]
                scanned[name] = len(frames)
            for name, cond in list(pending_conds.items()):
                if cond():
                    done[name] = time.monotonic() - t0
                    del pending_conds[name]
            if time.monotonic() > deadline and (pending_routes or pending_conds):
                missing = sorted([*pending_routes, *pending_conds])
                raise MeasurementError(f"{what}: {', '.join(missing)} not within {timeout:.0f} s")
            time.sleep(POLL)
    finally:
        join_by = time.monotonic() + 10.0
        for t in threads:
            t.join(max(0.0, join_by - time.monotonic()))
    return done


def attempt_inline(route: Route, message: dict[str, Any]) -> None:
    try:
        route.send(message)
    except Exception:  # noqa: S110 - as in measure(): a failed attempt, the next one follows
        pass


def failing_calls(calls: Mapping[str, Callable[[], object]], timeout: float = LIMIT) -> dict[str, float]:
    """Run the calls at once, each in a thread; each must raise BackendUnavailableError. The
    seconds each took; MeasurementError if one returned, raised something else or hung."""
    took: dict[str, float] = {}
    wrong: dict[str, str] = {}

    def run(name: str, call: Callable[[], object]) -> None:
        started = time.monotonic()
        try:
            call()
        except BackendUnavailableError:
            took[name] = time.monotonic() - started
            return
        except Exception as exc:
            wrong[name] = f"raised {exc!r}"
            return
        wrong[name] = "returned without an error"

    threads = [threading.Thread(target=run, args=item, daemon=True, name=f"recovery-call-{item[0]}")
               for item in calls.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = sorted(set(calls) - set(took) - set(wrong))
    if wrong or hung:
        raise MeasurementError("calls during the fault: "
                               + "; ".join([*(f"{k} {v}" for k, v in wrong.items()),
                                            *(f"{k} still running after {timeout:.0f} s" for k in hung)]))
    return took


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def state_present(r: redis.Redis, prefix: str, server_id: str, conns: Rooms) -> bool:
    """Redis holds the server's record (indexed), exactly its connections, each connection's
    record naming it, and each connection in its rooms."""
    keys = KeyLayout(prefix)
    sets = keys.server_connection_sets(server_id)
    try:
        pipe = r.pipeline(transaction=False)
        pipe.exists(keys.server(server_id))
        pipe.sismember(keys.servers_index, server_id)
        for key in sets:
            pipe.smembers(key)
        for cid, rooms in conns.items():
            pipe.hget(keys.connection(cid), cid)
            for room in sorted(rooms):
                pipe.sismember(keys.room(room), cid)
        res = pipe.execute()
    except redis.RedisError:
        return False
    exists, indexed = res[:2]
    members = {_text(m) for held in res[2:2 + len(sets)] for m in held}
    if not (exists and indexed) or members != set(conns):
        return False
    pos = 2 + len(sets)
    for rooms in conns.values():
        record = unpack_record(res[pos])
        if record is None or record[1] != server_id:
            return False
        if not all(res[pos + 1:pos + 1 + len(rooms)]):
            return False
        pos += 1 + len(rooms)
    return True


def state_gone(r: redis.Redis, prefix: str, server_id: str, conns: Rooms) -> bool:
    """No trace of the server in Redis: record, index entry, connection sets, connection
    records, room memberships."""
    keys = KeyLayout(prefix)
    try:
        pipe = r.pipeline(transaction=False)
        pipe.exists(keys.server(server_id), *keys.server_connection_sets(server_id))
        for cid in conns:
            pipe.hexists(keys.connection(cid), cid)
        pipe.sismember(keys.servers_index, server_id)
        for cid, rooms in conns.items():
            for room in sorted(rooms):
                pipe.sismember(keys.room(room), cid)
        res = pipe.execute()
    except redis.RedisError:
        return False
    return not any(res)


class ExampleServer(ChatServer):
    """``examples/gevent_chat_server.py`` as tests.e2e runs it, with ``env`` (DCM_* timings) of
    the benchmark's own instead of the tests' fast ones."""

    def __init__(self, name: str, redis_url: str, prefix: str, log_dir: Path,
                 env: Mapping[str, str]) -> None:
        ServerProcess.__init__(self, name, [sys.executable, str(EXAMPLE)], log_dir,
                               redis_url=redis_url, prefix=prefix, fast=env)


# ----------------------------------------------------------------------------- building blocks
HEARTBEAT = dict(heartbeat_interval=1.0, heartbeat_ttl=3.0)  # faults 5-6 only
HEARTBEAT_ENV = {"DCM_HEARTBEAT_INTERVAL": "1", "DCM_HEARTBEAT_TTL": "3"}
DEFAULTS = Config()


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGCONT)
        server.cleanup()


def manager(stack: contextlib.ExitStack, url: str, prefix: str,
            **overrides: Any) -> DistributedConnectionManager:
    mgr = create_distributed_connection_manager(None, Config(redis_url=url, key_prefix=prefix, **overrides))
    stack.callback(mgr.shutdown)
    return mgr


def new_prefix() -> str:
    return f"rec{uuid.uuid4().hex[:8]}:"


@dataclass
class Pair:
    """Two in-process servers: A (ann in lobby, amy in lobby and side) and B (bob in lobby)."""

    a: DistributedConnectionManager
    b: DistributedConnectionManager
    a1: str
    wa1: RecordingSocket
    wa2: RecordingSocket
    b1: str
    wb1: RecordingSocket
    conns_a: dict[str, set[str]]
    conns_b: dict[str, set[str]]
    started: float  # about when A's probe loop started

    def random_moment(self) -> float:
        """Sleep until a random moment of A's probe cycle; how far into the cycle that is."""
        time.sleep(random.uniform(0.0, DEFAULTS.probe_interval))
        return (time.monotonic() - self.started) % DEFAULTS.probe_interval

    def routes(self, to_a: bool = True, to_b: bool = True) -> list[Route]:
        return routes_between(self.a, self.a1, self.wa1, self.b, self.b1, self.wb1, "lobby",
                              to_a=to_a, to_b=to_b)


def routes_between(a: DistributedConnectionManager, a1: str, wa: RecordingSocket,
                   b: DistributedConnectionManager, b1: str, wb: RecordingSocket, room: str,
                   to_a: bool = True, to_b: bool = True) -> list[Route]:
    """Room broadcasts and direct messages from A to B's ``b1`` and back to A's ``a1``."""
    out = []
    if to_b:
        out += [Route("room_a_to_b", lambda m: a.broadcast_to_room(room, m), lambda: wb.frames),
                Route("direct_a_to_b", lambda m: a.send_to_connection(b1, m), lambda: wb.frames)]
    if to_a:
        out += [Route("room_b_to_a", lambda m: b.broadcast_to_room(room, m), lambda: wa.frames),
                Route("direct_b_to_a", lambda m: b.send_to_connection(a1, m), lambda: wa.frames)]
    return out


def make_pair(stack: contextlib.ExitStack, a_url: str, b_url: str, prefix: str) -> Pair:
    a = manager(stack, a_url, prefix)
    started = time.monotonic()
    b = manager(stack, b_url, prefix)
    a1, wa1 = connect(a, "ann", "lobby")
    a2, wa2 = connect(a, "amy", "lobby", "side")
    b1, wb1 = connect(b, "bob", "lobby")
    pair = Pair(a, b, a1, wa1, wa2, b1, wb1, {a1: {"lobby"}, a2: {"lobby", "side"}}, {b1: {"lobby"}},
                started)
    measure(time.monotonic(), "warm-up (before the fault)", pair.routes(), timeout=15)
    return pair


def departures(ws: RecordingSocket) -> list[dict[str, Any]]:
    return [m for m in ws.messages() if isinstance(m, dict) and m.get("type") == "user-disconnected"]


def told_of(ws: RecordingSocket, cids: set[str], reason: str = "server-failure") -> bool:
    return cids <= {m.get("connectionId") for m in departures(ws) if m.get("reason") == reason}


@dataclass
class Victim:
    server: ExampleServer
    clients: list[ChatClient]
    server_id: str
    conns: dict[str, set[str]]


def start_victim(stack: contextlib.ExitStack, workdir: Path, url: str, prefix: str,
                 rooms: list[list[str]]) -> Victim:
    server = ExampleServer(f"victim-{uuid.uuid4().hex[:6]}", url, prefix, workdir, HEARTBEAT_ENV)
    stack.callback(server.kill)
    stack.callback(lambda: server.proc.poll() is None and server.proc.send_signal(signal.SIGCONT))
    server.wait_stats(timeout=30)
    clients = []
    for i, joined in enumerate(rooms):
        client = ChatClient(server.port, f"user{i}")
        stack.callback(client.close)
        for room in joined:
            client.join(room)
        clients.append(client)
    conns = {c.cid: set(joined) for c, joined in zip(clients, rooms, strict=True)}
    return Victim(server, clients, clients[0].server_id, conns)


def victim_routes(s: DistributedConnectionManager, ws: RecordingSocket, v: Victim) -> list[Route]:
    c0, c1 = v.clients[0], v.clients[1]
    return [Route("room_s_to_v", lambda m: s.broadcast_to_room("lobby", m), lambda: c0.frames),
            Route("direct_s_to_v", lambda m: s.send_to_connection(c0.cid, m), lambda: c0.frames),
            Route("room_v_to_s", lambda m: c1.say("lobby", "probe", **m), lambda: ws.frames, threaded=False)]


Survivor = tuple[DistributedConnectionManager, RecordingSocket, Victim]


def survivor_and_victim(stack: contextlib.ExitStack, workdir: Path, url: str, prefix: str,
                        rooms: list[list[str]]) -> Survivor:
    s = manager(stack, url, prefix, **HEARTBEAT)
    _, ws = connect(s, "sam", "lobby")
    v = start_victim(stack, workdir, url, prefix, rooms)
    measure(time.monotonic(), "warm-up (before the fault)", victim_routes(s, ws, v), timeout=15)
    return s, ws, v
