"""``python -m benchmarks.script_cost [--compare REV ...] [--connections 5000] [--runs 5]``: what
the core operations cost Redis itself, this checkout against other commits (another key layout,
say), in the same run.

One ``redis-server`` of its own on a free loopback port. Each run is a child process that uses
one checkout's ``dcm_sync`` (``git archive REV`` unpacked in a temporary directory for the
others): one manager, no gevent, registers ``--connections`` connections of one server (users
all different), joins each to one of ``connections / 100`` rooms, leaves it again, and removes
them all. After each phase the child reads ``INFO commandstats``: the figure is the scripts'
time in Redis per call (``usec_per_call`` of ``evalsha``, which includes every command a script
runs). The checkouts take turns, ``--runs`` times each; medians [min-max]. The operations per
second from the same runs are printed too; they include the Python side and the round trip and
move with the load on the machine far more than the Redis figures do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = "this"
PHASES = ("register", "join", "leave", "remove")
DEADLINE = 300.0  # seconds for one child's run


def child(url: str, n: int) -> None:
    """One run against ``url``, with the ``dcm_sync`` that ``sys.path`` finds: a JSON line
    ``{phase: [operations per s, Redis µs per script call]}``."""
    import redis

    from dcm_sync import Config, LocalConnectionManager, create_distributed_connection_manager

    class Quiet:
        def send(self, message: str) -> None:
            pass

        def close(self) -> None:
            pass

    r = redis.Redis.from_url(url)
    mgr = create_distributed_connection_manager(LocalConnectionManager(n + 10), Config(
        redis_url=url, key_prefix=f"cost{os.getpid()}:", server_port=3000))
    rooms = max(1, n // 100)
    ids: list[str] = []
    out: dict[str, list[float]] = {}

    def phase(name: str, count: int, step: object) -> None:
        r.config_resetstat()
        started = time.perf_counter()
        for i in range(count):
            step(i)  # type: ignore[operator]
        elapsed = time.perf_counter() - started
        stats = r.info("commandstats")["cmdstat_evalsha"]
        out[name] = [count / elapsed, float(stats["usec_per_call"])]

    phase("register", n, lambda i: ids.append(mgr.register_connection(Quiet(), f"user-{i}")))
    phase("join", n, lambda i: mgr.join_room(ids[i], f"room-{i % rooms}"))
    phase("leave", n, lambda i: mgr.leave_room(ids[i], f"room-{i % rooms}"))
    phase("remove", n, lambda i: mgr.remove_connection(ids[i]))
    mgr.shutdown()
    print(json.dumps(out))


def one_run(root: Path, url: str, n: int) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "child", url, str(n)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=DEADLINE)
    if done.returncode != 0:
        raise RuntimeError(f"the run with {root} failed:\n{done.stderr[-2000:]}")
    figures: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.script_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", nargs="*", default=[], metavar="REV",
                        help="the commits to compare this checkout with")
    parser.add_argument("--connections", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3 (medians of several runs)")
    if not 100 <= args.connections <= 100_000:
        parser.error("--connections must be between 100 and 100,000")
    from testkit.redis_server import RedisServer

    from .harness import old_checkout, span, summarize

    server = RedisServer()
    server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="dcm-script-cost-") as tmp:
            roots = {HERE: ROOT}
            for rev in args.compare:
                roots[rev] = Path(tmp) / rev
                roots[rev].mkdir()
                old_checkout(rev, roots[rev])
            print(f"script cost: {args.connections} connections, {args.runs} runs each, "
                  f"the checkouts taking turns; {os.cpu_count()} cores")
            runs: dict[str, list[dict[str, list[float]]]] = {name: [] for name in roots}
            for run in range(args.runs):
                for name, root in roots.items():
                    got = one_run(root, server.url, args.connections)
                    runs[name].append(got)
                    print(f"  run {run + 1} {name:>10}: " + ", ".join(
                        f"{p} {got[p][1]:.1f} us" for p in PHASES), flush=True)
    finally:
        server.cleanup()
    print(f"  {'checkout':<10} " + " ".join(f"{p + ' us/call':>22}" for p in PHASES))
    for name, got in runs.items():
        print(f"  {name:<10} " + " ".join(f"{span(summarize([g[p][1] for g in got]), '.1f'):>22}"
                                          for p in PHASES))
    print(f"  {'checkout':<10} " + " ".join(f"{p + ' per s':>22}" for p in PHASES))
    for name, got in runs.items():
        print(f"  {name:<10} " + " ".join(f"{span(summarize([g[p][0] for g in got]), '.0f'):>22}"
                                          for p in PHASES))
    def median(name: str, phase: str, figure: int) -> float:
        return statistics.median([g[phase][figure] for g in runs[name]])

    for name in args.compare:
        print(f"  {HERE} vs {name}, Redis time per call: " + ", ".join(
            f"{p} {median(HERE, p, 1) / median(name, p, 1):.2f}x" for p in PHASES))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(main())
