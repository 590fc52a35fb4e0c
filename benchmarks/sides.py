"""What the message scenarios (room_fanout, direct, many_rooms) share: the three sides (dcm-sync,
python-socketio, the hand-written ceiling), a side's servers on a ``redis-server`` of their own
(:class:`SideServers`), one measured phase, and turning the runs into a
:class:`~benchmarks.harness.Result` whose failed side reports nothing and a note.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testkit.processes import ServerProcess
from testkit.redis_server import RedisServer

from .harness import Context, Result, process_cpu, summarize
from .loadgen import PLAIN, SIO, ClientGroup, LoadError, Records, SendReport, percentile

__all__ = ["SIDES", "SEQ_SPAN", "Side", "SideServers", "Phase", "groups", "join_all", "run_phase",
           "rate_and_latency", "best_of_windows", "measure_sides", "latency_ms", "completions"]

SEQ_SPAN = 10_000_000  # each phase gets its own range of sequence numbers
BURST_NAP = 0.005  # seconds a receiving group sleeps between reads under a burst ...
NAP_MIN_CLIENTS = 10  # ... if it holds at least this many clients (each read then finds several frames)


@dataclass(frozen=True)
class Side:
    name: str          # "dcm", "peer" or "ceiling": the Result attribute it fills
    script: str        # the server app, relative to the repository root
    proto: str         # the load generator's dialect
    ws_path: str
    bus_channels: tuple[str, ...] = ()  # channels every server subscribes to when ready


SIDES = {
    "dcm": Side("dcm", "benchmarks/servers/dcm_app.py", PLAIN, "/ws"),
    "peer": Side("peer", "benchmarks/servers/peer_app.py", SIO, "/socket.io/?EIO=4&transport=websocket",
                 bus_channels=("flask-socketio",)),
    "ceiling": Side("ceiling", "benchmarks/servers/ceiling_app.py", PLAIN, "/ws"),
}


class SideServers:
    """``n`` servers of one side on a fresh ``redis-server``, all on loopback; logs in
    ``workdir``. A context manager: everything it started is stopped on exit."""

    def __init__(self, side: Side, n: int, workdir: Path, tag: str) -> None:
        self.side = side
        self.n = n
        self.workdir = workdir
        self.tag = tag
        self.redis: RedisServer | None = None
        self.servers: list[ServerProcess] = []

    def __enter__(self) -> SideServers:
        try:
            self.redis = RedisServer()
            self.redis.start()
            for i in range(self.n):
                self.servers.append(ServerProcess(
                    f"{self.tag}-{self.side.name}-{i}", [sys.executable, self.side.script],
                    self.workdir, redis_url=self.redis.url, prefix="bench:", fast={}))
            for s in self.servers:
                s.wait_ready("/bench-stats", lambda answer: answer.get("ready") is True, timeout=30)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.servers:
            with contextlib.suppress(Exception):
                s.stop(timeout=2)
        if self.redis is not None:
            self.redis.cleanup()

    def url(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.servers[i].port}{self.side.ws_path}"

    def stats(self, reset: bool = False) -> list[dict[str, Any]]:
        out = []
        for s in self.servers:
            answer = s.get_json("/bench-stats?reset=1" if reset else "/bench-stats", timeout=10)
            if answer is None:
                raise LoadError(f"{s.name} does not answer /bench-stats")
            out.append(answer)
        return out

    def cpu_each(self) -> list[float] | None:
        """Each server's CPU time so far, in server order, in seconds: the sum over its threads
        of ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds on a CPU; finer than the 10 ms
        ticks of ``/proc/<pid>/stat``); None where /proc does not have it."""
        out: list[float] = []
        for s in self.servers:
            seconds = process_cpu(s.proc.pid)
            if seconds is None:
                return None
            out.append(seconds)
        return out

    def wait_bus(self, timeout: float = 15.0) -> None:
        """Wait until every server listens on the side's shared channels (the peer subscribes
        in the background once its first client connects)."""
        assert self.redis is not None
        client = self.redis.client()
        deadline = time.monotonic() + timeout
        for channel in self.side.bus_channels:
            while dict(client.pubsub_numsub(channel)).get(channel.encode(), 0) < self.n:
                if time.monotonic() > deadline:
                    raise LoadError(f"{self.side.name}: not every server subscribed to {channel}")
                time.sleep(0.02)


@contextlib.contextmanager
def groups(*specs: tuple[str, str, Sequence[str]]) -> Iterator[list[ClientGroup]]:
    """Client groups (name, dialect, urls) started in parallel, ready, closed at exit."""
    made: list[ClientGroup] = []
    try:
        for name, proto, urls in specs:
            made.append(ClientGroup(name, proto, urls))
        for g in made:
            g.wait_ready()
        yield made
    finally:
        for g in made:
            g.close()


def join_all(pairs: Sequence[tuple[ClientGroup, Sequence[Sequence[str]]]], timeout: float = 120.0) -> None:
    """Every group's clients join their rooms, in parallel; returns when every join is acknowledged."""
    for g, rooms in pairs:
        g.start_join(rooms, timeout)
    for g, _ in pairs:
        g.wait_joined()


@dataclass
class Phase:
    sent: SendReport
    records: list[Records]  # one per receiving group, in the order given
    server_cpus: list[float] | None = None  # CPU seconds each server used during the phase

    @property
    def server_cpu(self) -> float | None:
        """CPU seconds the servers used during the phase, together."""
        return None if self.server_cpus is None else sum(self.server_cpus)

    def delivery_cpu_us(self, frames: int, servers: Sequence[int]) -> dict[str, float]:
        """``delivery_cpu_us``: the CPU time of the receiving ``servers`` per frame they
        delivered (``frames`` in all), in µs; {} if it was not measured."""
        if self.server_cpus is None or frames <= 0:
            return {}
        return {"delivery_cpu_us": sum(self.server_cpus[i] for i in servers) / frames * 1e6}


def run_phase(receivers: Sequence[tuple[ClientGroup, int]], sender: ClientGroup,
              items: Sequence[Sequence[tuple[str, str, int]]], rate: float | None, lo: int, hi: int,
              limit: float, flow: tuple[Sequence[ClientGroup], int, int] | None = None,
              idle: float = 5.0, servers: SideServers | None = None) -> Phase:
    """Arm every receiving group (with the number of payloads it expects), let ``sender`` send
    ``items`` (paced at ``rate``, or as fast as the ``flow`` window allows: see
    :meth:`ClientGroup.send`), and collect what was received. Bounded by ``limit`` seconds per
    group. Under a burst (no ``rate``) groups of many clients read in batches
    (:data:`BURST_NAP`). With ``servers``, the CPU time they used from the first send to
    the last receipt."""
    for g, expected in receivers:
        g.start_record(lo, hi, expected, limit, idle,
                       BURST_NAP if rate is None and g.size >= NAP_MIN_CLIENTS else 0.0)
    cpu = servers.cpu_each() if servers is not None else None
    report = sender.send(items, rate, timeout=limit + 10, flow=flow)
    if report.errors:
        raise LoadError(f"sender: {report.errors[0]}")
    records = [g.finish_record() for g, _ in receivers]
    after = servers.cpu_each() if servers is not None and cpu is not None else None
    if cpu is None or after is None:
        return Phase(report, records)
    return Phase(report, records, [b - a for a, b in zip(cpu, after, strict=True)])


def latency_ms(records: Sequence[Records]) -> list[float]:
    """Every receipt's latency in milliseconds, sorted."""
    out: list[float] = []
    for r in records:
        out.extend((b - a) * 1000.0 for a, b in zip(r.sent, r.received, strict=True))
    out.sort()
    return out


def completions(records: Sequence[Records], expected: Callable[[int], int]) -> dict[int, float]:
    """For each sequence number received by ``expected(seq)`` clients: when the last one got it."""
    counts: dict[int, int] = {}
    last: dict[int, float] = {}
    for r in records:
        for seq, t in zip(r.seqs, r.received, strict=True):
            counts[seq] = counts.get(seq, 0) + 1
            if t > last.get(seq, 0.0):
                last[seq] = t
    return {seq: last[seq] for seq, n in counts.items() if n >= expected(seq)}


def rate_and_latency(phase: Phase, records: Sequence[Records], expected: Callable[[int], int],
                     total: int, prefix: str, rate_name: str) -> dict[str, float]:
    """``rate_name``: complete deliveries per second from the first send to the last completion;
    ``{prefix}p50_ms``/``p99_ms`` over every receipt in ``records``; ``{prefix}complete_pct``;
    ``{prefix}server_cpu_us``: the servers' CPU time per message sent, if it was measured."""
    done = completions(records, expected)
    lat = latency_ms(records)
    out: dict[str, float] = {f"{prefix}complete_pct": 100.0 * len(done) / total}
    if phase.server_cpu is not None:
        out[f"{prefix}server_cpu_us"] = phase.server_cpu / total * 1e6
    if done:
        span = max(done.values()) - phase.sent.first
        if rate_name:
            out[rate_name] = len(done) / span if span > 0 else 0.0
    if lat:
        out[f"{prefix}p50_ms"] = percentile(lat, 0.50)
        out[f"{prefix}p99_ms"] = percentile(lat, 0.99)
    return out


def best_of_windows(per_window: dict[int, dict[str, float]], rate_name: str) -> dict[str, float]:
    """Combine bursts run at several windows (messages in flight): ``rate_name`` is the best
    rate (each side at its best window: "as fast as it can"), ``{rate_name}_w{W}`` each one;
    latency (``burst_p50_ms``/``burst_p99_ms``) is the smallest window's, the shortest queue;
    ``burst_server_cpu_us`` and ``delivery_cpu_us`` the best window's; ``burst_complete_pct``
    the lowest."""
    small = min(per_window)
    best = max(per_window, key=lambda w: per_window[w].get(rate_name, 0.0))
    out: dict[str, float] = {rate_name: per_window[best].get(rate_name, 0.0)}
    for w in sorted(per_window):
        out[f"{rate_name}_w{w}"] = per_window[w].get(rate_name, 0.0)
    for key, source in (("burst_p50_ms", small), ("burst_p99_ms", small),
                        ("burst_server_cpu_us", best), ("delivery_cpu_us", best)):
        if key in per_window[source]:
            out[key] = per_window[source][key]
    out["burst_complete_pct"] = min(f.get("burst_complete_pct", 0.0) for f in per_window.values())
    return out


def measure_sides(ctx: Context, result: Result, sides: Sequence[str],
                  setup: Callable[[Side, contextlib.ExitStack], Any],
                  one_run: Callable[[Side, Any, int], dict[str, float]]) -> None:
    """Measure every side ``ctx.runs`` times, interleaved (run 0 of each side, then run 1 ...,
    the order rotating) so that a change in the machine's load falls on every side alike.

    ``setup(side, stack)`` starts a side's servers and clients (entering them on ``stack``) and
    returns its state; ``one_run(side, state, i)`` measures run ``i`` and returns its figures.
    A side that raises stops there (its processes are stopped at once): it keeps the runs it
    completed and a note says what failed; the traceback goes to ``errors.log`` in the workdir.
    The figures become ``summarize`` dicts on ``result.dcm`` / ``.peer`` / ``.ceiling``.
    """
    only = os.environ.get("BENCH_SIDES")  # a debugging aid: BENCH_SIDES=dcm,ceiling
    names = [n for n in sides if not only or n in only.split(",")]
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    stacks: dict[str, contextlib.ExitStack] = {}
    states: dict[str, Any] = {}

    def fail(name: str, exc: BaseException) -> None:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        what = " ... ".join(dict.fromkeys([lines[0][:160], lines[-1][:160]])) if lines else repr(exc)
        result.notes.append(f"{name}: failed after {len(runs[name])} of {ctx.runs} run(s): {what}")
        with open(ctx.workdir / "errors.log", "a") as log:
            log.write(f"--- {name}\n{traceback.format_exc()}\n")
        states.pop(name, None)
        stack = stacks.pop(name, None)
        if stack is not None:
            with contextlib.suppress(Exception):
                stack.close()

    try:
        for name in names:
            stacks[name] = contextlib.ExitStack()
            try:
                states[name] = setup(SIDES[name], stacks[name])
            except Exception as exc:
                fail(name, exc)
        for i in range(ctx.runs):
            order = names[i % len(names):] + names[:i % len(names)] if names else []
            for name in order:
                if name in states:
                    try:
                        runs[name].append(one_run(SIDES[name], states[name], i))
                    except Exception as exc:
                        fail(name, exc)
    finally:
        for stack in stacks.values():
            with contextlib.suppress(Exception):
                stack.close()
    for name in names:
        figures: dict[str, Any] = {}
        for metric in dict.fromkeys(m for run in runs[name] for m in run):
            values = [run[metric] for run in runs[name] if run.get(metric) is not None]
            if values:
                figures[metric] = summarize(values)
        setattr(result, name, figures)
        for m, f in figures.items():
            if m.endswith("complete_pct") and f["min"] < 100.0:
                result.notes.append(f"{name}: {m} min {f['min']:.1f}% (some deliveries missing)")

