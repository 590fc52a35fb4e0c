"""The shape every scenario shares: a run context, repeated measurements, and the result table.

A scenario is ``run(ctx: Context) -> Result``. It measures each figure ``ctx.runs`` times (at
least 3) for this project (``dcm``), the peer (python-socketio) and, where there is one, the raw
``ceiling``; ``summarize`` turns the repeats into median/min/max.
"""

from __future__ import annotations

import contextlib
import select
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Context", "Result", "old_checkout", "process_cpu", "summarize", "span", "ratio",
           "repeat", "NullSocket", "in_threads", "populate", "RedisCounts", "RedisProbe", "read_line"]


@dataclass(frozen=True)
class Context:
    quick: bool
    runs: int
    workdir: Path  # a fresh temporary folder for logs and data of this run

    def scale(self, full: int, quick: int) -> int:
        """A size for this run: ``quick`` with --quick, else ``full``."""
        return quick if self.quick else full


@dataclass
class Result:
    """One scenario's figures. Each side maps a metric name to ``summarize(...)``'s dict
    (or to a plain value where a figure is not repeated, such as a count that must be 0)."""

    headline: str                      # the metric the ratio is taken on
    higher_is_better: bool
    dcm: dict[str, Any] = field(default_factory=dict)
    peer: dict[str, Any] = field(default_factory=dict)
    ceiling: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra_ratios: dict[str, float | None] = field(default_factory=dict)  # e.g. p99_ratio

    def ratio(self) -> float | None:
        return ratio(self.dcm.get(self.headline), self.peer.get(self.headline), self.higher_is_better)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dcm": self.dcm, "peer": self.peer, "ratio": self.ratio(),
                               "headline": self.headline, "higher_is_better": self.higher_is_better}
        if self.ceiling:
            out["ceiling"] = self.ceiling
        out.update(self.extra_ratios)
        if self.notes:
            out["notes"] = self.notes
        return out


def process_cpu(pid: int) -> float | None:
    """A process's CPU time so far, in seconds: the sum over its threads of
    ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds on a CPU; finer than the 10 ms ticks of
    ``/proc/<pid>/stat``); None where /proc does not have it."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that just ended
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        return None
    return total / 1e9


def summarize(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": vals}


def span(figure: Any, num: str | Callable[[float], str] = ".4g", unit: str = "", missing: str = "-",
         collapse: bool = False, width: int = 0) -> str:
    """A figure as text: ``summarize``'s dict as ``"<median><unit> [<min>-<max>]"`` (with
    ``collapse``, the median alone where min and max print alike; the median right-aligned to
    ``width`` characters), None as ``missing``, a plain number as its median would be, anything
    else by ``str``. ``num`` is a format spec (``".2f"``, ``",.0f"``) or a function that prints
    one number."""
    def show(value: float) -> str:
        return num(value) if callable(num) else format(value, num)

    if isinstance(figure, dict) and "median" in figure:
        med, low, high = f"{show(figure['median']):>{width}}", show(figure["min"]), show(figure["max"])
        return f"{med}{unit}" if collapse and low == high else f"{med}{unit} [{low}-{high}]"
    if figure is None:
        return missing
    return (show(figure) if isinstance(figure, float) else str(figure)) + unit


def _median(figure: Any) -> float | None:
    if isinstance(figure, dict):
        return float(figure["median"])
    if isinstance(figure, (int, float)):
        return float(figure)
    return None


def ratio(ours: Any, peer: Any, higher_is_better: bool) -> float | None:
    """Ours over the peer's (throughput), or the peer's over ours (latency, memory, time)."""
    a, b = _median(ours), _median(peer)
    if a is None or b is None or (a == 0 if not higher_is_better else b == 0):
        return None
    return a / b if higher_is_better else b / a


def repeat(ctx: Context, measure: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """Run ``measure`` ``ctx.runs`` times; summarize each metric it returns."""
    samples: dict[str, list[float]] = {}
    for _ in range(ctx.runs):
        for name, value in measure().items():
            samples.setdefault(name, []).append(value)
    return {name: summarize(vals) for name, vals in samples.items()}


class NullSocket:
    """A socket that accepts every frame and keeps nothing: for filling a manager."""

    __slots__ = ()

    def send(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


def in_threads(n: int, work: Callable[[int], object], threads: int = 2) -> None:
    """Call ``work(i)`` for every ``i`` in ``range(n)``, thread ``k`` of ``threads`` taking the
    ``i`` with ``i % threads == k`` in order. A thread stops at its first error; the first error
    is raised after all threads end."""
    errors: list[BaseException] = []

    def run(start: int) -> None:
        try:
            for i in range(start, n, threads):
                work(i)
        except Exception as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(k,), name=f"bench-worker-{k}") for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]


def populate(mgr: Any, n: int, rooms_of: Callable[[int], Sequence[str]], threads: int = 2,
             user_of: Callable[[int], str] = "user-{}".format) -> list[str]:
    """Register ``n`` connections on ``mgr`` (from ``threads`` threads), connection ``i`` of user
    ``user_of(i)`` joining ``rooms_of(i)``; return their ids in order. The first error is raised
    after all threads end."""
    ids = [""] * n

    def one(i: int) -> None:
        cid = ids[i] = mgr.register_connection(NullSocket(), user_of(i))
        for room in rooms_of(i):
            mgr.join_room(cid, room)

    in_threads(n, one, threads)
    return ids


@dataclass(frozen=True)
class RedisCounts:
    """Redis's counters at one :meth:`RedisProbe.snapshot`, or what changed between two
    (``after - before``)."""

    round_trips: int         # requests this process sent (a pipeline or a script call is one)
    calls: dict[str, int]    # commands run, by name (INFO commandstats; inside Lua scripts too)
    net_in: int              # bytes Redis read (INFO stats total_net_input_bytes)
    net_out: int             # bytes Redis wrote (total_net_output_bytes)

    @property
    def commands(self) -> int:
        return sum(self.calls.values())

    def __sub__(self, before: RedisCounts) -> RedisCounts:
        calls = {k: v - before.calls.get(k, 0) for k, v in self.calls.items()}
        return RedisCounts(self.round_trips - before.round_trips, {k: v for k, v in calls.items() if v},
                           self.net_in - before.net_in, self.net_out - before.net_out)

    def per(self, count: float) -> dict[str, float]:
        """Commands, round trips and bytes in and out, each divided by ``count``."""
        return {"commands": self.commands / count, "round_trips": self.round_trips / count,
                "bytes_in": self.net_in / count, "bytes_out": self.net_out / count}

    def breakdown(self, count: float) -> str:
        """``"evalsha 1, hset 1, ..."``: commands by name per ``count``."""
        return ", ".join(f"{k} {v / count:.3g}" for k, v in sorted(self.calls.items()))


_probe_made = False


class RedisProbe:
    """What Redis does for this process: round trips counted on the client side (every redis-py
    connection's ``send_packed_command``, patched once, so at most one probe per process), and
    commands and bytes read from Redis (``INFO commandstats`` and ``INFO stats``).

    ``stats`` is anything with redis-py's ``info(section)``: a ``redis.Redis``, or an object
    that adds up several servers' figures (``benchmarks.redis_stats.RedisNodes``). Its own
    INFO commands are left out of the calls and the round trips, not out of the bytes
    (:meth:`idle` measures those)."""

    def __init__(self, stats: Any) -> None:
        import redis.connection

        global _probe_made
        if _probe_made:
            raise RuntimeError("one RedisProbe per process: a second would count round trips twice")
        _probe_made = True
        self.round_trips = 0
        self._quiet = threading.local()  # .on: this thread's round trips are not counted
        self._stats = stats
        original = redis.connection.AbstractConnection.send_packed_command
        probe = self

        def counting(conn: Any, command: Any, check_health: bool = True) -> Any:
            if not getattr(probe._quiet, "on", False):
                probe.round_trips += 1
            return original(conn, command, check_health)

        redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Round trips this thread sends meanwhile (reading figures) are not counted; other
        threads' still are."""
        was = getattr(self._quiet, "on", False)
        self._quiet.on = True
        try:
            yield
        finally:
            self._quiet.on = was

    def snapshot(self) -> RedisCounts:
        with self.quiet():
            raw = self._stats.info("commandstats")
            net = self._stats.info("stats")
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in raw.items()}
        calls.pop("info", None)
        return RedisCounts(self.round_trips, calls, int(net["total_net_input_bytes"]),
                           int(net["total_net_output_bytes"]))

    def idle(self) -> RedisCounts:
        """What one snapshot costs by itself (the bytes of its INFO commands and replies)."""
        first = self.snapshot()
        return self.snapshot() - first


def read_line(proc: subprocess.Popen[bytes], deadline: float, expect: str) -> str:
    """The child's next stdout line, which must start with ``expect``."""
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], min(0.5, deadline - time.monotonic()))
        if ready:
            line = proc.stdout.readline().decode().strip()
            if not line.startswith(expect):
                raise RuntimeError(f"child said {line!r} (exit code {proc.poll()}), "
                                   f"expected {expect!r}")
            return line
        if proc.poll() is not None:
            raise RuntimeError(f"child exited with {proc.returncode}")
    raise RuntimeError(f"child did not say {expect!r} in time")


def pipe_reply(conn: Any, want: str, timeout: float, who: str,
               error: type[Exception]) -> tuple[Any, ...]:
    """The next message from a worker process's pipe, which must be a ``(want, ...)`` tuple;
    ``error`` (naming ``who``) when it does not come in time, the worker died, or it reported
    ``("error", traceback)``."""
    try:
        if not conn.poll(timeout):
            raise error(f"{who}: no answer within {timeout:.0f} s")
        msg = conn.recv()
    except (EOFError, OSError) as exc:
        raise error(f"{who} died ({exc!r})") from exc
    if msg[0] == "error":
        raise error(f"{who}: {msg[1].strip().splitlines()[-1]}\n{msg[1]}")
    if msg[0] != want:
        raise error(f"{who}: expected {want!r}, got {msg[0]!r}: {str(msg[1:])[-2000:]}")
    return tuple(msg)


def old_checkout(rev: str, into: Path) -> None:
    """``git archive rev`` of this repository unpacked in ``into`` (another commit's code, to
    run beside this checkout's)."""
    archive = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "archive",
                              "--format=tar", rev], check=True, capture_output=True,
                             timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=60)
