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
   as 7. Faults 7-9 are measured in :mod:`benchmarks.recovery_topologies`, whose docstring says
   what each figure is and how it scales with cluster-node-timeout / down-after-milliseconds
   (1000 ms here; Redis defaults 15 s and 30 s).

Faults 1-4 use the library's default timings (redis_timeout 2 s, probe_interval 5 s,
probe_timeout 2 s, heartbeat 30 s / TTL 90 s). Faults 5-6 depend on heartbeat_ttl and use
heartbeat_interval=1, heartbeat_ttl=3; the output gives the formula for the defaults. The
benchmark process is not monkey-patched: in-process managers use the threading driver.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcm_sync import DCMError
from testkit.proxy import TcpProxy

from . import recovery_topologies as topologies
from .harness import summarize
from .recovery_tools import (
    DEFAULTS,
    LIMIT,
    MeasurementError,
    RunResult,
    Seen,
    Summary,
    counts,
    departures,
    failing_calls,
    fmt,
    how_often,
    make_pair,
    measure,
    new_prefix,
    redis_server,
    state_gone,
    state_present,
    survivor_and_victim,
    told_of,
    victim_routes,
)

FAULT_S = 5.0                      # how long a cut, a stall or a pause lasts


# ----------------------------------------------------------------------------- faults 1-4
def redis_restart(workdir: Path) -> RunResult:
    prefix = new_prefix()
    with redis_server() as server, contextlib.ExitStack() as stack:
        p = make_pair(stack, server.url, server.url, prefix)
        killed = time.monotonic()
        server.restart()  # returns at its first PING answer; it is empty
        t0 = time.monotonic()
        r = server.client()
        stack.callback(r.close)
        got = measure(t0, "after the Redis restart", p.routes(), {
            "state_a": lambda: state_present(r, prefix, p.a.server_id, p.conns_a),
            "state_b": lambda: state_present(r, prefix, p.b.server_id, p.conns_b)})
        delivery = max(v for k, v in got.items() if not k.startswith("state"))
        state = max(got["state_a"], got["state_b"])
        seen = {"departures": sum(len(departures(w)) for w in (p.wa1, p.wa2, p.wb1)),
                "sockets_open": not any(w.closed for w in (p.wa1, p.wa2, p.wb1))}
        return RunResult({"down_s": t0 - killed, "delivery_s": delivery, "state_s": state,
                          "recovery_s": max(delivery, state)}, seen)


def link_fault(kind: str) -> Callable[[Path], RunResult]:
    def run(workdir: Path) -> RunResult:
        prefix = new_prefix()
        with redis_server() as server, contextlib.ExitStack() as stack:
            proxy = stack.enter_context(TcpProxy(("127.0.0.1", server.port)))
            p = make_pair(stack, proxy.url, server.url, prefix)
            stack.callback(proxy.resume)  # before the managers shut down
            stack.callback(proxy.restore)
            r = server.client()
            stack.callback(r.close)
            mine, theirs = f"own-{uuid.uuid4().hex}", f"missed-{uuid.uuid4().hex}"
            phase = p.random_moment()
            started = time.monotonic()
            proxy.cut() if kind == "cut" else proxy.stall()
            took = failing_calls({
                "broadcast": lambda: p.a.broadcast_to_room("lobby", {"mark": mine}),
                "direct": lambda: p.a.send_to_connection(p.b1, {"during": kind}),
                "stats": p.a.get_distributed_stats})
            p.b.broadcast_to_room("lobby", {"mark": theirs})  # B -> A while A is cut off
            time.sleep(max(0.0, started + FAULT_S - time.monotonic()))
            local = all(any(mine in f for f in w.frames) for w in (p.wa1, p.wa2))
            proxy.restore() if kind == "cut" else proxy.resume()
            t0 = time.monotonic()
            got = measure(t0, f"after the {kind}", p.routes(), {
                "state_a": lambda: state_present(r, prefix, p.a.server_id, p.conns_a),
                "state_b": lambda: state_present(r, prefix, p.b.server_id, p.conns_b)})
            delivery = max(v for k, v in got.items() if not k.startswith("state"))
            state = max(got["state_a"], got["state_b"])
            time.sleep(0.2)
            seen = {"local_delivery": local, "b_message_arrived_late": any(theirs in f for f in p.wa1.frames),
                    "departures": len(departures(p.wb1)), "calls": took,
                    "reconnects": p.a.metrics()["reconnects"], "probe_phase_s": round(phase, 2)}
            return RunResult({"call_fails_s": max(took.values()), "delivery_s": delivery, "state_s": state,
                              "recovery_s": max(delivery, state)}, seen)
    return run


def deaf_subscription(workdir: Path) -> RunResult:
    prefix = new_prefix()
    with redis_server() as server, contextlib.ExitStack() as stack:
        proxy = stack.enter_context(TcpProxy(("127.0.0.1", server.port)))
        p = make_pair(stack, proxy.url, server.url, prefix)
        stack.callback(proxy.undeafen)
        phase = p.random_moment()
        deaf = proxy.deafen_subscribers()
        t0 = time.monotonic()
        if deaf != 1:
            raise MeasurementError(f"expected A's one subscription to go deaf, got {deaf}")
        missed = f"missed-{uuid.uuid4().hex}"
        p.b.broadcast_to_room("lobby", {"mark": missed})
        got = measure(t0, "after deafening", p.routes())
        time.sleep(0.2)
        metrics = p.a.metrics()
        return RunResult({"delivery_to_a_s": max(got["room_b_to_a"], got["direct_b_to_a"]),
                          "a_to_b_s": max(got["room_a_to_b"], got["direct_a_to_b"])},
                         {"probes_failed": metrics["probes_failed"], "reconnects": metrics["reconnects"],
                          "missed_message_replayed": any(missed in f for f in p.wa1.frames),
                          "probe_phase_s": round(phase, 2)})


# ----------------------------------------------------------------------------- faults 5-6

def server_killed(workdir: Path) -> RunResult:
    prefix = new_prefix()
    with redis_server() as server, contextlib.ExitStack() as stack:
        s, ws, v = survivor_and_victim(stack, workdir, server.url, prefix,
                                       [["lobby"], ["lobby", "side"], ["lobby"]])
        r = server.client()
        stack.callback(r.close)
        measure(time.monotonic(), "victim registered", timeout=15,
                conditions={"registered": lambda: state_present(r, prefix, v.server_id, v.conns)})
        t0 = time.monotonic()
        v.server.proc.kill()
        direct = s.send_to_connection(v.clients[0].cid, {"after": "kill"})
        got = measure(t0, "after the SIGKILL", conditions={
            "notices": lambda: told_of(ws, set(v.conns)),
            "state_gone": lambda: state_gone(r, prefix, v.server_id, v.conns)})
        v.server.proc.wait(10)
        return RunResult({"notices_s": got["notices"], "state_gone_s": got["state_gone"],
                          "recovery_s": max(got.values())},
                         {"direct_to_dead_returned": direct,
                          "clients_closed": all(c.closed.wait(5) for c in v.clients)})


def server_paused(workdir: Path) -> RunResult:
    prefix = new_prefix()
    with redis_server() as server, contextlib.ExitStack() as stack:
        s, ws, v = survivor_and_victim(stack, workdir, server.url, prefix, [["lobby"], ["lobby"]])
        r = server.client()
        stack.callback(r.close)
        measure(time.monotonic(), "victim registered", timeout=15,
                conditions={"registered": lambda: state_present(r, prefix, v.server_id, v.conns)})
        stopped = time.monotonic()
        v.server.proc.send_signal(signal.SIGSTOP)
        try:
            dead = measure(stopped, "during the pause", timeout=FAULT_S, conditions={
                "declared_dead": lambda: told_of(ws, set(v.conns)) and state_gone(r, prefix, v.server_id,
                                                                                 v.conns)})
            time.sleep(max(0.0, stopped + FAULT_S - time.monotonic()))
        finally:
            v.server.proc.send_signal(signal.SIGCONT)
        t0 = time.monotonic()
        got = measure(t0, "after SIGCONT", victim_routes(s, ws, v), {
            "registered": lambda: state_present(r, prefix, v.server_id, v.conns)})
        delivery = max(secs for k, secs in got.items() if k != "registered")
        return RunResult({"declared_dead_s": dead["declared_dead"], "registered_s": got["registered"],
                          "delivery_s": delivery, "recovery_s": max(got.values())},
                         {"clients_open": not any(c.closed.is_set() for c in v.clients)})


# ----------------------------------------------------------------------------- report
def describe_restart(s: Summary, seen: Seen) -> tuple[str, str]:
    still = how_often(seen, "sockets_open", "stay open", "some closed")
    return (f"down {fmt(s, 'down_s')} (kill, start); the servers reconnect and write their state back "
            f"on their own; {counts(seen, 'departures')} departure notices; clients' sockets {still}",
            f"delivery both ways {fmt(s, 'delivery_s')}; records, connections and rooms written back "
            f"{fmt(s, 'state_s')} (from the first PING answer)")


def describe_link(s: Summary, seen: Seen) -> tuple[str, str]:
    late = how_often(seen, "b_message_arrived_late", "reaches A late", "never reaches A (lost)")
    local = how_often(seen, "local_delivery", "yes", "no")
    state = s.get("state_s", {}).get("max", 1.0)
    kept = " (it never left: heartbeat_ttl 90 s)" if state < 0.05 else ""
    return (f"A's calls raise BackendUnavailableError after {fmt(s, 'call_fails_s')}; A's own sockets "
            f"still get A's broadcasts ({local}); a broadcast from B meanwhile {late}; "
            f"{counts(seen, 'departures')} departure notices (heartbeat_ttl 90 s)",
            f"delivery both ways {fmt(s, 'delivery_s')}; A's state in Redis {fmt(s, 'state_s')} "
            f"from the restore{kept}")


def describe_deaf(s: Summary, seen: Seen) -> tuple[str, str]:
    replayed = how_often(seen, "missed_message_replayed", "replayed later", "not replayed")
    return (f"no error anywhere; A's sockets silently miss other servers' messages ({replayed}) while "
            f"A's own calls work (A->B delivery {fmt(s, 'a_to_b_s')}); probes failed: "
            f"{counts(seen, 'probes_failed')}",
            f"B->A delivery {fmt(s, 'delivery_to_a_s')} from deafening (expected: probe_timeout .. "
            "probe_interval + probe_timeout, plus a reconnect: 2-7 s)")


def describe_killed(s: Summary, seen: Seen) -> tuple[str, str]:
    direct = how_often(seen, "direct_to_dead_returned", "True (nothing delivered)", "False")
    return (f"its clients' sockets close; members on the other server get user-disconnected "
            f"(server-failure) after {fmt(s, 'notices_s')}; until then send_to_connection to its users "
            f"returns {direct}",
            f"notices {fmt(s, 'notices_s')}; its state gone from Redis {fmt(s, 'state_gone_s')} "
            "(from the SIGKILL; heartbeat 1 s / TTL 3 s)")


def describe_paused(s: Summary, seen: Seen) -> tuple[str, str]:
    still = how_often(seen, "clients_open", "they stay open", "some closed")
    return (f"{fmt(s, 'declared_dead_s')} into the pause its users are announced gone (server-failure) "
            f"and its state removed; their sockets: {still}; after SIGCONT they are back in Redis "
            "without reconnecting (no announcement)",
            f"registered with its connections {fmt(s, 'registered_s')}; delivery to and from its "
            f"sockets {fmt(s, 'delivery_s')} (from SIGCONT; heartbeat 1 s / TTL 3 s)")


@dataclass(frozen=True)
class Fault:
    title: str
    run: Callable[[Path], RunResult]
    describe: Callable[[Summary, Seen], tuple[str, str]]


FAULTS: dict[str, Fault] = {
    "redis_restart": Fault("1. Redis restart (comes back empty)", redis_restart, describe_restart),
    "link_cut": Fault(f"2. A's link to Redis cut {FAULT_S:.0f} s", link_fault("cut"), describe_link),
    "link_stall": Fault(f"3. A's link to Redis stalled {FAULT_S:.0f} s", link_fault("stall"), describe_link),
    "deaf_subscription": Fault("4. A's subscription deaf", deaf_subscription, describe_deaf),
    "server_killed": Fault("5. Server process SIGKILLed", server_killed, describe_killed),
    "server_paused": Fault(f"6. Server process SIGSTOPped {FAULT_S:.0f} s (> TTL), SIGCONT",
                           server_paused, describe_paused),
    "cluster_master_killed": Fault("7. Redis Cluster: the master of B's slot SIGKILLed",
                                   topologies.cluster_master_killed, topologies.describe_cluster_kill),
    "cluster_slot_moved": Fault("8. Redis Cluster: the room channel's slot moved to another master",
                                topologies.cluster_slot_moved, topologies.describe_slot_moved),
    "sentinel_master_killed": Fault("9. Sentinel: the master SIGKILLed", topologies.sentinel_master_killed,
                                    topologies.describe_sentinel_kill),
}

NOTES = [
    f"Faults 1-4: the library's defaults (redis_timeout {DEFAULTS.redis_timeout:g} s, probe_interval "
    f"{DEFAULTS.probe_interval:g} s, probe_timeout {DEFAULTS.probe_timeout:g} s, heartbeat_interval "
    f"{DEFAULTS.heartbeat_interval:g} s, heartbeat_ttl {DEFAULTS.heartbeat_ttl:g} s); in-process managers, "
    "A behind a TCP fault proxy, B direct. Faults 2-4 start at a random moment of A's probe cycle "
    "(a probe every probe_interval, failed after probe_timeout, then the subscription is rebuilt).",
    "Faults 5-6: heartbeat_interval=1, heartbeat_ttl=3 (example server process + in-process survivor). "
    "A dead server's record expires ttl-interval..ttl after its last heartbeat and a survivor looks "
    "every interval: detection takes heartbeat_ttl +- heartbeat_interval (2-4 s here; "
    f"{DEFAULTS.heartbeat_ttl - DEFAULTS.heartbeat_interval:g}-"
    f"{DEFAULTS.heartbeat_ttl + DEFAULTS.heartbeat_interval:g} s with the defaults). A pause shorter than "
    "that is not noticed; after a longer one the paused server's heartbeat is overdue, so it "
    "re-registers at once whatever the settings.",
    *topologies.NOTES,
]


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
