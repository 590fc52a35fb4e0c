"""The table ``python -m benchmarks.recovery`` prints: per fault, what the user sees and the
recovery figures (medians [min-max] of the runs), and the notes under it that say which timings
the figures scale with.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from ..harness import span
from .tools import DEFAULTS
from .topology_faults import DOWN_AFTER_MS, NODE_TIMEOUT_MS

Summary = dict[str, dict[str, Any]]  # figure -> summarize(...) of its runs
Seen = list[dict[str, Any]]          # what the user saw, one dict per run


def fmt(summary: Summary, key: str) -> str:
    return span(summary.get(key), ".2f", " s", missing="n/a")


def how_often(seen: Seen, key: str, yes: str, no: str) -> str:
    hits = sum(1 for s in seen if s.get(key))
    if hits == len(seen):
        return yes
    return no if hits == 0 else f"{yes} in {hits} of {len(seen)} runs"


def counts(seen: Seen, key: str) -> str:
    values = sorted({s.get(key, 0) for s in seen})
    return "/".join(str(v) for v in values)


# ----------------------------------------------------------------------------- faults 1-6
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


# ----------------------------------------------------------------------------- faults 7-9
def _calls(seen: Seen, key: str) -> str:
    """Per run: calls that raised BackendUnavailableError / all calls; then other exceptions,
    each with its first message."""
    runs = ", ".join(f"{s[key]['unavailable']}/{s[key]['calls']}" for s in seen)
    other: Counter[str] = Counter()
    first: dict[str, str] = {}
    for s in seen:
        other.update(s[key]["other_errors"])
        for kind, text in s[key]["other_first"].items():
            first.setdefault(kind, text)
    false = sum(s[key]["returned_false"] for s in seen)
    return (runs + "".join(f"; {n} {kind} ({json.dumps(first.get(kind, '')[:120])})"
                           for kind, n in sorted(other.items()))
            + (f"; {false} returned False" if false else ""))


def _user_sees(seen: Seen) -> str:
    still = how_often(seen, "sockets_open", "stay open", "some closed")
    dup = sum(x["duplicate_departures"] for x in seen)
    stats = (f"; A's stats {_calls(seen, 'stats_reads')}"
             if any(x["stats_reads"]["calls"] for x in seen) else "")
    return (f"calls raising BackendUnavailableError / calls, per run: sends {_calls(seen, 'sends')}{stats}; "
            f"sends accepted and never delivered {counts(seen, 'accepted_lost')}; departure notices of "
            f"users still connected {counts(seen, 'departures')}{f' ({dup} duplicated)' if dup else ''}; "
            f"sockets {still}")


def _after(s: Summary, moment: str) -> str:
    return (f"delivery both ways {fmt(s, 'delivery_s')}, stats whole and B's connection on the new master "
            f"{fmt(s, 'state_s')}; the library's share after {moment}: {fmt(s, 'delivery_lag_s')} / "
            f"{fmt(s, 'state_lag_s')}")


def describe_cluster_kill(s: Summary, seen: Seen) -> tuple[str, str]:
    held = sorted({what for x in seen for what in x.get("victim_also_held", [])})
    return (f"{_user_sees(seen)}; A/B reconnects {counts(seen, 'reconnects')}; the killed master also "
            f"held, in some run: {', '.join(held) or 'nothing else'}",
            f"replica promoted {fmt(s, 'promoted_s')} (every node agrees {fmt(s, 'failover_s')}); "
            f"{_after(s, 'the promotion')} (from the SIGKILL; cluster-node-timeout {NODE_TIMEOUT_MS} ms)")


def describe_slot_moved(s: Summary, seen: Seen) -> tuple[str, str]:
    fresh = how_often(seen, "target_was_subscribed", "one a server had", "one neither server had")
    return (f"{_user_sees(seen)}; target shard: {fresh}; A/B reconnects {counts(seen, 'reconnects')}",
            f"migration {fmt(s, 'move_s')}; then delivery both ways {fmt(s, 'delivery_s')}, both "
            f"subscribed on the new shard {fmt(s, 'resubscribed_s')} (from the end of the migration)")


def describe_sentinel_kill(s: Summary, seen: Seen) -> tuple[str, str]:
    return (f"{_user_sees(seen)}; A/B reconnects {counts(seen, 'reconnects')}",
            f"replica promoted {fmt(s, 'promoted_s')}, first named by a Sentinel {fmt(s, 'named_s')} "
            f"(by all {fmt(s, 'failover_s')}); {_after(s, 'the naming')} (from the SIGKILL; "
            f"down-after-milliseconds {DOWN_AFTER_MS} ms)")


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
    "Faults 7-9: a fresh topology per run, two in-process managers (heartbeat_interval=1, "
    "heartbeat_ttl=3; default probes and redis_timeout), the fault at least 1.5 s after their start. "
    f"cluster-node-timeout {NODE_TIMEOUT_MS} ms: promotion ~ node_timeout x (1 to 1.5) + 1-1.5 s, so "
    f"about 16-24 s with the 15 s default; down-after-milliseconds {DOWN_AFTER_MS} ms: the first Sentinel "
    "names the new master ~ down_after + 1-1.5 s, so about 31-32 s with the 30 s default. Delivery and "
    "state come back 'the library's share' later, which those settings do not scale. With "
    "heartbeat_ttl 3 s a server's record can expire during the failover: the other server then "
    "announces its users gone though they are connected, until it writes itself back.",
]
