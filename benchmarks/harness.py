"""The shape every scenario shares: a run context, repeated measurements, and the result table.

A scenario is ``run(ctx: Context) -> Result``. It measures each figure ``ctx.runs`` times (at
least 3) for this project (``dcm``), the peer (python-socketio) and, where there is one, the raw
``ceiling``; ``summarize`` turns the repeats into median/min/max.
"""

from __future__ import annotations

import select
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Context", "Result", "summarize", "ratio", "repeat", "NullSocket", "populate", "read_line"]


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


def summarize(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": vals}


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


def populate(mgr: Any, n: int, rooms_of: Callable[[int], Sequence[str]], threads: int = 2) -> list[str]:
    """Register ``n`` connections on ``mgr`` (from ``threads`` threads), connection ``i`` joining
    ``rooms_of(i)``; return their ids in order. The first error is raised after all threads end."""
    ids = [""] * n
    errors: list[BaseException] = []

    def work(start: int) -> None:
        try:
            for i in range(start, n, threads):
                cid = ids[i] = mgr.register_connection(NullSocket(), f"user-{i}")
                for room in rooms_of(i):
                    mgr.join_room(cid, room)
        except Exception as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,), name=f"populate-{k}") for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
    return ids


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
