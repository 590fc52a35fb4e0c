"""The measurements of ``python -m benchmarks.capacity``, each one run's figures.

Every phase drives managers made with ``create_distributed_connection_manager`` (in this
process; heartbeats, probes and idle-connection closing kept out of the measurements unless they
are what is measured) through the public API, with sockets that keep nothing. Keys live under
``dcm:`` (the default prefix, so key sizes are a deployment's) on a Redis of our own, which is
flushed between phases, or under ``cap<pid>:`` with ``--url`` (deleted after each phase).

- **memory**: ``used_memory`` less ``mem_clients_normal`` before and after ``N`` connections
  (50,000; 5,000 with --quick) register, then join rooms of 100, of 10 and of 1,000 members (one
  room of each size per connection): bytes per connection and per membership (up to 512
  members a room's set is an intset, beyond a hash table); from the sizes 10 and 100, the fixed
  cost of a room and of a member; a room channel subscription (N/10 connections of one more
  server each join an existing room, its first local member: SUBSCRIBE; less N/10 more joining
  the same rooms); a server (4 more managers, no connections). Then ``MEMORY USAGE`` of every key
  under the prefix (``SCAN``, classified by the word after the prefix).
- **ops**: Redis commands (``INFO commandstats`` deltas, commands run inside Lua scripts
  included), round trips (requests this process sent; a pipeline or script call is one) and
  bytes in and out (``total_net_input_bytes``/``total_net_output_bytes``) per operation, over
  many repetitions, less what reading those figures costs.
- **bus**: per broadcast of a 100 B and a 1 KB message to a room with a member on each of 2 and
  4 servers: the PUBLISH's bytes in, and bytes out per subscribing server.
- **periodic**: one heartbeat with 2 and 8 registered servers (each heartbeat checks every
  server's record), as it runs at the default 30 s interval (each tick also closes the pool's
  idle connections, so the next one reconnects: ``IDLE_CLOSE_SECONDS`` is set to 0 to get that
  at a 0.1 s interval) and at an interval under 10 s; one subscription probe.
- **cleanup**: per connection of a SIGKILLed server (``benchmarks/scenarios/failover.py``'s
  server: rooms of 100), removed by ``handle_server_failure`` on a manager with a member in each
  of its rooms, so each removal publishes a departure notice.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from dcm_sync import Config, LocalConnectionManager, create_distributed_connection_manager
from dcm_sync.backends.redis_keys import KeyLayout

from ..harness import Context, NullSocket, RedisCounts, RedisProbe, in_threads, populate, read_line
from ..redis_stats import RedisNodes, used_memory
from ..scenarios import failover

THREADS = 2
EXTRA_SERVERS = 4
HEARTBEAT_SERVERS = (2, 8)
BUS_SERVERS = (2, 4)
MESSAGE_SIZES = (100, 1024)
TICK = 0.1  # seconds: heartbeat and probe interval while they are measured
# no heartbeat, probe or idle-connection close inside a measurement, unless it is the one measured
QUIET: dict[str, Any] = {"heartbeat_interval": 600.0, "heartbeat_ttl": 1800.0, "probe_interval": 0.0}


class Bench:
    """One capacity run's Redis, probe and sizes."""

    def __init__(self, url: str, own: bool, quick: bool, workdir: Path) -> None:
        self.url, self.own, self.quick, self.workdir = url, own, quick, workdir
        self.prefix = "dcm:" if own else f"cap{os.getpid()}:"
        self.nodes = RedisNodes(url)
        self.probe = RedisProbe(self.nodes)
        self.n = 5_000 if quick else 50_000
        self.reps = 1_000 if quick else 4_000
        self.broadcasts = 500 if quick else 2_000
        self.dead = 2_000 if quick else 10_000
        self.window_s = 1.5 if quick else 3.0

    def manager(self, capacity: int = 100, **overrides: Any) -> Any:
        cfg = Config(redis_url=self.url, key_prefix=self.prefix, server_port=3000,
                     **{**QUIET, **overrides})
        return create_distributed_connection_manager(LocalConnectionManager(capacity), cfg)

    def clear(self) -> None:
        """Forget a phase's keys: FLUSHALL on our own server (fresh dicts), else UNLINK them."""
        with self.probe.quiet():
            if self.own:
                self.nodes.flushall()
            else:
                self.nodes.delete_prefix(self.prefix)

    def memory(self) -> tuple[int, int]:
        """``(used_memory - mem_clients_normal, mem_clients_normal)`` once settled: Redis updates
        its client figure in a cron job, so right after a burst the two disagree by tens of KB."""
        last = None
        deadline = time.monotonic() + 3.0
        with self.probe.quiet():
            while True:
                time.sleep(0.2)
                info = self.nodes.info("memory")
                now = (used_memory(info), int(info.get("mem_clients_normal", 0)))
                if last is not None and (abs(now[0] - last[0]) < 64 or time.monotonic() > deadline):
                    return now
                last = now

    def used(self) -> int:
        return self.memory()[0]

    def window(self, action: Callable[[], object]) -> RedisCounts:
        """What Redis did during ``action()``, less the probe's own INFO traffic."""
        idle = self.probe.idle()
        before = self.probe.snapshot()
        action()
        done = self.probe.snapshot() - before
        return RedisCounts(done.round_trips, done.calls, done.net_in - idle.net_in,
                           done.net_out - idle.net_out)


def _user(i: int) -> str:
    """User ids of 8 to 23 characters: the hashes' sizes spread over the allocator's size classes,
    so that what a membership adds to them is not all rounded up (or all absorbed)."""
    return f"u{i:07d}" + "x" * (i % 16)


def _shutdown(*managers: Any) -> None:
    for mgr in managers:
        mgr.shutdown()


def _warm_up(mgr: Any) -> None:
    """Load the scripts and open the pool's connections before anything is measured."""
    cid = mgr.register_connection(NullSocket(), "warm-up")
    mgr.join_room(cid, "warm-up")
    mgr.broadcast_to_room("warm-up", "hello")  # connects the publishing connection
    mgr.leave_room(cid, "warm-up")
    mgr.remove_connection(cid)
    mgr.send_to_connection(str(10**18), "hello")  # an id nobody has: loads the routing script


def _record(out: dict[str, float], name: str, counts: RedisCounts, count: float,
            detail: dict[str, Any]) -> None:
    for what, value in counts.per(count).items():
        out[f"ops.{name}.{what}"] = value
    detail[name] = counts.breakdown(count)


class _Counting(NullSocket):
    """A socket that counts the frames it gets."""

    __slots__ = ("frames",)

    def __init__(self) -> None:
        self.frames = 0

    def send(self, message: str) -> None:
        self.frames += 1


# ------------------------------------------------------------------------------- memory
def memory_run(b: Bench, run_no: int, detail: dict[str, Any]) -> dict[str, float]:
    prefix, n = b.prefix, b.n
    b.clear()
    out: dict[str, float] = {}
    mgr = b.manager(n + 10)
    extras: list[Any] = []
    try:
        _warm_up(mgr)
        before = b.used()
        ids = populate(mgr, n, lambda i: (), THREADS, _user)
        out["mem.connection"] = (b.used() - before) / n
        with b.probe.quiet():
            keys = b.nodes.describe(prefix)
        def share(kind: str) -> float:
            """The keys of one class, per connection (records and users are fields of buckets)."""
            return sum(k.bytes for k in keys if k.kind == kind) / n

        out["usage.connection_record"] = share("connections")
        out["usage.server_set_per_connection"] = share("server-connections")
        # each connection here has a user of its own: one id in one user's field
        out["usage.user_per_connection"] = share("users")
        out["usage.connection_other"] = (out["mem.connection"] - out["usage.connection_record"]
                                         - out["usage.server_set_per_connection"]
                                         - out["usage.user_per_connection"])
        for size, name in ((100, "s"), (10, "t"), (1000, "L")):  # names of equal length
            before = b.used()
            in_threads(n, lambda i, s=size, p=name: mgr.join_room(ids[i], f"{p}{i // s:06d}"), THREADS)
            out[f"mem.membership_{size}"] = (b.used() - before) / n
        # per membership = member + room / size, for size 10 and 100
        room = (out["mem.membership_10"] - out["mem.membership_100"]) / (1 / 10 - 1 / 100)
        out["mem.room_fixed"] = room
        out["mem.room_member"] = out["mem.membership_100"] - room / 100

        before = b.memory()
        extras = [b.manager(n) for _ in range(EXTRA_SERVERS)]
        after = b.memory()
        out["mem.server"] = (after[0] - before[0]) / EXTRA_SERVERS
        out["mem.server_clients"] = (after[1] - before[1]) / EXTRA_SERVERS
        # A room channel subscription: rooms A and B (of 10, owned by the first server) get an
        # 11th member, A's from the first server, B's from one more server (which subscribes to
        # B). Then that server's connections join A (its first local member of each: SUBSCRIBE)
        # and B (no SUBSCRIBE): the same hash and set growth, less one subscription each. (Redis
        # counts the subscriber's own table of channels as client memory, left out here: it is
        # lost in the noise of the client buffers.)
        k = n // 20
        rooms_a, rooms_b = [f"t{i:06d}" for i in range(k)], [f"t{i:06d}" for i in range(k, 2 * k)]
        extra = extras[0]
        for i, room in enumerate(rooms_a):
            mgr.join_room(ids[-1 - i], room)
        for i, room in enumerate(rooms_b):
            extra.join_room(extra.register_connection(NullSocket(), _user(n + i)), room)
        joiners = [extra.register_connection(NullSocket(), _user(n + k + i)) for i in range(2 * k)]
        deltas = []
        for conns, rooms in ((joiners[:k], rooms_a), (joiners[k:], rooms_b)):
            before = b.used()
            for cid, room in zip(conns, rooms, strict=True):
                extra.join_room(cid, room)
            deltas.append((b.used() - before) / k)
        out["mem.subscription"] = deltas[0] - deltas[1]

        with b.probe.quiet():
            keys = b.nodes.describe(prefix)
        groups: dict[str, list[Any]] = {}
        for k in keys:
            if k.kind == "rooms":  # by encoding and size: 10, 100 (+2), 1000 members
                group = f"rooms.{k.encoding}.{k.members // 10 * 10 if k.members < 1000 else k.members}"
            else:
                group = k.kind
            groups.setdefault(group, []).append(k)
        for group, ks in groups.items():
            out[f"usage.{group}.bytes_per_key"] = sum(k.bytes for k in ks) / len(ks)
            members = sum(k.members for k in ks)
            if members and group != "servers":
                out[f"usage.{group}.bytes_per_member"] = sum(k.bytes for k in ks) / members
            detail.setdefault("key_classes", {})[group] = {
                "keys": len(ks), "example": ks[0].key, "encoding": ks[0].encoding}
    finally:
        b.clear()  # so that shutdown has nothing to remove
        _shutdown(mgr, *extras)
    return out


# ------------------------------------------------------------------------------- operations
def ops_run(b: Bench, run_no: int, detail: dict[str, Any]) -> dict[str, float]:
    n = b.reps
    b.clear()
    out: dict[str, float] = {}
    a, other = b.manager(n + 10), b.manager(n + 10)
    try:
        _warm_up(a)
        _warm_up(other)
        ids: list[str] = []
        text = "x" * 100

        def measure(name: str, calls: list[Callable[[], object]]) -> None:
            counts = b.window(lambda: [call() for call in calls])
            _record(out, name, counts, len(calls), detail)

        measure("register", [lambda i=i: ids.append(a.register_connection(NullSocket(), f"u-{i}"))
                             for i in range(n)])
        half = range(n // 2)
        measure("join_first", [lambda k=k: a.join_room(ids[2 * k], f"g{k}") for k in half])
        measure("join", [lambda k=k: a.join_room(ids[2 * k + 1], f"g{k}") for k in half])
        measure("broadcast_to_room", [lambda i=i: a.broadcast_to_room(f"g{i % (n // 2)}", text)
                                      for i in range(n)])
        remote = [other.register_connection(NullSocket(), f"v-{i}") for i in range(n)]
        measure("send_to_connection", [lambda c=c: a.send_to_connection(c, text) for c in remote])
        measure("send_to_user", [lambda i=i: a.send_to_user(f"v-{i}", text) for i in range(n)])
        measure("get_user_connections", [lambda i=i: a.get_user_connections(f"v-{i}")
                                         for i in range(n)])
        measure("leave", [lambda k=k: a.leave_room(ids[2 * k + 1], f"g{k}") for k in half])
        measure("leave_last", [lambda k=k: a.leave_room(ids[2 * k], f"g{k}") for k in half])
        measure("remove", [lambda c=c: other.remove_connection(c) for c in remote])
        tenth = max(1, n // 10)  # rooms of 10: each removal leaves members in both rooms
        in_threads(n, lambda i: (a.join_room(ids[i], f"p{i % tenth}"), a.join_room(ids[i], f"q{i % tenth}")),
                   THREADS)
        big = ids[:1000]  # one room of 1,000 members (reps are 1,000 at least)
        in_threads(len(big), lambda i: a.join_room(big[i], "big"), THREADS)
        measure("get_room_members_1000", [lambda: a.get_room_members("big")
                                          for _ in range(max(10, n // 100))])
        measure("remove_2_rooms", [lambda c=c: a.remove_connection(c) for c in ids[: n // 2]])
    finally:
        b.clear()
        _shutdown(a, other)
    return out


# ------------------------------------------------------------------------------- the bus
def _broadcast(sender: Any, sockets: list[_Counting], text: str, count: int) -> None:
    """``count`` broadcasts to room ``bus``; returns once every member got every one."""
    start = [ws.frames for ws in sockets]
    for _ in range(count):
        sender.broadcast_to_room("bus", text)
    deadline = time.monotonic() + 30
    while any(ws.frames - s < count for ws, s in zip(sockets, start, strict=True)):
        if time.monotonic() > deadline:
            raise RuntimeError("broadcasts were not all delivered within 30 s")
        time.sleep(0.01)


def bus_run(b: Bench, run_no: int, detail: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for servers in BUS_SERVERS:
        b.clear()
        mgrs = [b.manager() for _ in range(servers)]
        try:
            sockets = [_Counting() for _ in mgrs]
            for mgr, ws in zip(mgrs, sockets, strict=True):
                mgr.join_room(mgr.register_connection(ws, "member"), "bus")
            for size in MESSAGE_SIZES:
                counts = b.window(partial(_broadcast, mgrs[0], sockets, "x" * size, b.broadcasts))
                key = f"bus.{size}B.{servers}_servers"
                out[f"{key}.publish_bytes_in"] = counts.net_in / b.broadcasts
                out[f"{key}.bytes_out_per_server"] = counts.net_out / b.broadcasts / servers
                out[f"{key}.commands"] = counts.commands / b.broadcasts
        finally:
            b.clear()
            _shutdown(*mgrs)
    return out


# ------------------------------------------------------------------------------- periodic work
def _ticks(obj: Any, name: str) -> list[int]:
    """Count the calls of ``obj.name`` (this instance only) once each returns."""
    inner, count = getattr(obj, name), [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        try:
            return inner(*args, **kwargs)
        finally:
            count[0] += 1

    setattr(obj, name, counted)
    return count


def _per_tick(b: Bench, count: list[int]) -> tuple[RedisCounts, int]:
    """Redis's work over whole ticks: each snapshot is taken just after a tick ended."""
    def after_tick() -> int:
        seen = count[0]
        deadline = time.monotonic() + 10
        while count[0] == seen:
            if time.monotonic() > deadline:
                raise RuntimeError("the periodic task stopped ticking")
            time.sleep(0.002)
        return count[0]

    first = after_tick()
    ticks = [0]

    def wait() -> None:
        time.sleep(b.window_s)
        ticks[0] = after_tick() - first

    return b.window(wait), ticks[0]


def periodic_run(b: Bench, run_no: int, detail: dict[str, Any]) -> dict[str, float]:
    import dcm_sync.maintenance as maintenance

    out: dict[str, float] = {}
    for servers in HEARTBEAT_SERVERS:
        for mode, idle_close in (("default", 0.0), ("fast", maintenance.IDLE_CLOSE_SECONDS)):
            b.clear()
            others = [b.manager() for _ in range(servers - 1)]
            saved = maintenance.IDLE_CLOSE_SECONDS
            # with the default 30 s interval (>= IDLE_CLOSE_SECONDS) every tick closes the idle
            # pooled connections; 0 here does the same at a 0.1 s interval
            maintenance.IDLE_CLOSE_SECONDS = idle_close
            mgr = b.manager(heartbeat_interval=TICK, heartbeat_ttl=10 * TICK)
            try:
                counts, ticks = _per_tick(b, _ticks(mgr._backend, "dead_servers"))
            finally:
                maintenance.IDLE_CLOSE_SECONDS = saved
                b.clear()
                _shutdown(mgr, *others)
            _record(out, f"heartbeat_{mode}_{servers}_servers", counts, ticks, detail)
    b.clear()
    mgr = b.manager(probe_interval=TICK, probe_timeout=TICK)
    try:
        counts, ticks = _per_tick(b, _ticks(mgr._backend, "publish"))
    finally:
        b.clear()
        _shutdown(mgr)
    _record(out, "probe", counts, ticks, detail)
    return out


# ------------------------------------------------------------------------------- failure cleanup
def cleanup_run(b: Bench, run_no: int, detail: dict[str, Any]) -> dict[str, float]:
    from testkit.redis_server import env_for_subprocess

    prefix, n = b.prefix, b.dead
    b.clear()
    ctx = Context(quick=b.quick, runs=1, workdir=b.workdir)
    victim = failover.spawn(ctx, env_for_subprocess(), "server", [b.url, prefix, str(n)],
                             f"capacity-victim-{run_no}.log")
    cleaner = None
    try:
        line = read_line(victim, time.monotonic() + max(60.0, n / 300), "ready")
        sid = line.split()[1]
        rooms = n // failover.ROOM_SIZE  # the victim's rooms: room-<i // ROOM_SIZE>
        cleaner = b.manager(rooms + 10)
        for k in range(rooms):  # a member in each room: every removal is announced
            cleaner.join_room(cleaner.register_connection(NullSocket(), f"stays-{k}"), f"room-{k}")
        record = KeyLayout(prefix).server(sid)
        with b.probe.quiet():
            node = b.nodes.holding(record)
        if node is None:
            raise RuntimeError(f"no servers key of {sid} under {prefix!r}")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        deadline = time.monotonic() + 3 * failover.DEAD_HEARTBEAT[1] + 5
        with b.probe.quiet():
            while node.exists(record):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server record of {sid} did not expire")
                time.sleep(0.05)
        removed, spent = [0], [0.0]

        def clean() -> None:
            t = time.perf_counter()
            removed[0] = cleaner.handle_server_failure(sid)
            spent[0] = time.perf_counter() - t

        counts = b.window(clean)
        if removed[0] != n:
            raise RuntimeError(f"handle_server_failure removed {removed[0]} of {n} connections")
    finally:
        failover.stop(victim)
        b.clear()
        if cleaner is not None:
            _shutdown(cleaner)
    out: dict[str, float] = {"cleanup.connections_per_s": n / spent[0]}
    _record(out, "cleanup_per_dead_connection", counts, n, detail)
    return out


PHASES: dict[str, Callable[[Bench, int, dict[str, Any]], dict[str, float]]] = {
    "memory": memory_run, "ops": ops_run, "bus": bus_run, "periodic": periodic_run,
    "cleanup": cleanup_run,
}
