"""``python -m benchmarks.recovery [--runs 3] [--json PATH] [--only FAULT ...] [-v]``: for each
fault, what a user sees and how long recovery takes, as medians [min-max] of ``--runs`` runs.

Every run starts its own ``redis-server`` on a free loopback port and fresh servers:

1. ``redis_restart``: Redis is killed and started again empty; from its first PING answer until
   room broadcasts and direct messages work both ways between two in-process managers, and until
   both have written their records, connections and rooms back.
2. ``link_cut``: server A reaches Redis through a TCP proxy that resets every connection for 5 s:
   how long A's calls take to raise BackendUnavailableError, then from the restore until delivery
   works both ways and A's state is in Redis.
3. ``link_stall``: the same with a proxy that forwards nothing for 5 s but keeps connections open.
4. ``deaf_subscription``: the proxy drops whatever Redis sends on A's subscription: from then
   until messages from B reach A's sockets again (found by the subscription probes).
5. ``server_killed``: an example server process (examples/gevent_chat_server.py) with three
   WebSocket clients is SIGKILLed: until the members of its rooms on the other server are told
   (``user-disconnected``) and its state is gone from Redis.
6. ``server_paused``: the same server SIGSTOPped for 5 s (past its TTL), then SIGCONT: until it
   is registered again with its open connections and delivery to its sockets works.
7. ``cluster_master_killed``: Redis Cluster (3 masters + 3 replicas): the master of B's server slot
   is SIGKILLed: until its replica is master, delivery works both ways and the state is whole.
8. ``cluster_slot_moved``: the slot of the room's channel migrated to another master: until
   delivery works again.
9. ``sentinel_master_killed``: Sentinel (master, replica, 3 Sentinels): the master is SIGKILLed;
   as 7. Faults 7-9 are measured in ``benchmarks/recovery/topology_faults.py``, whose docstring says
   what each figure is and how it scales with cluster-node-timeout / down-after-milliseconds
   (1000 ms here; Redis defaults 15 s and 30 s).

Faults 1-4 use the library's default timings (redis_timeout 2 s, probe_interval 5 s,
probe_timeout 2 s, heartbeat 30 s / TTL 90 s). Faults 5-6 depend on heartbeat_ttl and use
heartbeat_interval=1, heartbeat_ttl=3; the output gives the formula for the defaults. The
benchmark process is not monkey-patched: in-process managers use the threading driver.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcm_sync import DCMError

from ..harness import summarize
from . import report
from . import topology_faults as topologies
from .faults import FAULT_S, deaf_subscription, link_fault, redis_restart, server_killed, server_paused
from .report import NOTES, Seen, Summary
from .tools import LIMIT, MeasurementError, RunResult


@dataclass(frozen=True)
class Fault:
    title: str
    run: Callable[[Path], RunResult]
    describe: Callable[[Summary, Seen], tuple[str, str]]


FAULTS: dict[str, Fault] = {
    "redis_restart": Fault("1. Redis restart (comes back empty)", redis_restart, report.describe_restart),
    "link_cut": Fault(f"2. A's link to Redis cut {FAULT_S:.0f} s", link_fault("cut"), report.describe_link),
    "link_stall": Fault(f"3. A's link to Redis stalled {FAULT_S:.0f} s", link_fault("stall"),
                        report.describe_link),
    "deaf_subscription": Fault("4. A's subscription deaf", deaf_subscription, report.describe_deaf),
    "server_killed": Fault("5. Server process SIGKILLed", server_killed, report.describe_killed),
    "server_paused": Fault(f"6. Server process SIGSTOPped {FAULT_S:.0f} s (> TTL), SIGCONT",
                           server_paused, report.describe_paused),
    "cluster_master_killed": Fault("7. Redis Cluster: the master of B's slot SIGKILLed",
                                   topologies.cluster_master_killed, report.describe_cluster_kill),
    "cluster_slot_moved": Fault("8. Redis Cluster: the room channel's slot moved to another master",
                                topologies.cluster_slot_moved, report.describe_slot_moved),
    "sentinel_master_killed": Fault("9. Sentinel: the master SIGKILLed", topologies.sentinel_master_killed,
                                    report.describe_sentinel_kill),
}

def print_table(results: dict[str, dict[str, Any]], runs: int) -> None:
    print(f"\n| fault | what the user sees | recovery, median [min-max] of {runs} runs |")
    print("|---|---|---|")
    for name, res in results.items():
        fault = FAULTS[name]
        if res["failures"] and not res["seen"]:
            print(f"| {fault.title} | FAILED | {'; '.join(res['failures'])} |")
            continue
        sees, recovery = fault.describe(res["figures"], res["seen"])
        if res["failures"]:
            recovery += f" ({len(res['failures'])} run(s) FAILED: {'; '.join(res['failures'])})"
        print(f"| {fault.title} | {sees} | {recovery} |")
    print()
    for note in NOTES:
        print(f"- {note}")


def run_fault(name: str, runs: int, workdir: Path) -> dict[str, Any]:
    samples: dict[str, list[float]] = {}
    seen: Seen = []
    failures: list[str] = []
    for i in range(1, runs + 1):
        started = time.monotonic()
        try:
            result = FAULTS[name].run(workdir)
        except (MeasurementError, AssertionError, RuntimeError, DCMError, OSError) as exc:
            failures.append(f"run {i}: {exc}".splitlines()[0])
            print(f"  {name} run {i}: FAILED after {time.monotonic() - started:.1f} s: {exc}", flush=True)
            continue
        for key, value in result.figures.items():
            samples.setdefault(key, []).append(value)
        seen.append(result.seen)
        figures = ", ".join(f"{k} {v:.2f}" for k, v in result.figures.items())
        print(f"  {name} run {i} ({time.monotonic() - started:.1f} s): {figures}; "
              f"{json.dumps(result.seen, default=str)}", flush=True)
    return {"figures": {k: summarize(v) for k, v in samples.items()}, "seen": seen, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per fault (default 3)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--only", nargs="+", choices=list(FAULTS), help="run only these faults")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the library's warnings")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.CRITICAL,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # clean up on the way out
    names = args.only or list(FAULTS)
    print(f"dcm-sync recovery benchmark: Python {platform.python_version()}, {os.cpu_count()} cores, "
          f"{args.runs} run(s) per fault, every wait bounded by {LIMIT:.0f} s", flush=True)
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="dcm-recovery-") as tmp:
        for name in names:
            print(f"{FAULTS[name].title}", flush=True)
            results[name] = run_fault(name, args.runs, Path(tmp))
    total = time.monotonic() - started
    print_table(results, args.runs)
    print(f"\ntotal {total:.0f} s")
    if args.json:
        out = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "platform": platform.platform()},
               "runs": args.runs, "total_s": total, "notes": NOTES,
               "faults": {name: {"title": FAULTS[name].title,
                                 "user_sees": FAULTS[name].describe(r["figures"], r["seen"])[0]
                                 if r["seen"] else None, **r}
                          for name, r in results.items()}}
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 1 if any(r["failures"] for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
