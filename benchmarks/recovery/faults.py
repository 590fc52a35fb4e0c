"""Faults 1-6 of ``python -m benchmarks.recovery`` on a single ``redis-server``: Redis restarted
empty; server A's link to Redis cut, stalled, or its subscription deafened (a TCP fault proxy
from ``testkit/proxy.py``); an example server process SIGKILLed or SIGSTOPped. Each function
is one run of its fault and returns its figures and what the user saw (see the docstring of
``benchmarks/recovery/__main__.py`` for what each figure times).
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from testkit.proxy import TcpProxy

from .tools import (
    MeasurementError,
    RunResult,
    departures,
    failing_calls,
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

__all__ = ["FAULT_S", "redis_restart", "link_fault", "deaf_subscription", "server_killed", "server_paused"]

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
