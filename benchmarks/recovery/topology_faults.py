"""Faults 7-9 of ``benchmarks.recovery``: Redis Cluster and Sentinel, a fresh topology from
``testkit/topologies.py`` per run (loopback only).

Each run makes two in-process managers, A and B (``heartbeat_interval=1``, ``heartbeat_ttl=3``
as in faults 5-6; otherwise the library's defaults: ``redis_timeout`` 2 s, ``probe_interval``
5 s, ``probe_timeout`` 2 s), each with one connection in ``lobby``; checks that room broadcasts
and direct messages work both ways; and brings the fault 1.5 s after the managers started, past
their first heartbeat, so that it hits servers in their steady state (registered, subscribed,
their first heartbeat done and the scripts they use loaded on their masters), the same in every
run: the figures time the recovery, not a start-up still under way.

7. ``cluster_master_killed``: 3 masters + 3 replicas, ``cluster-node-timeout`` 1000 ms; the
   master of B's server slot (``KeyLayout(prefix).server(B)``: B's record, connections and
   channel) is SIGKILLed. From the kill: until its replica reports ``role:master``
   (``promoted_s``), until the topology's ``wait_failover`` returns (every node agrees on the
   slot map: ``failover_s``), until room broadcasts and direct messages work both ways
   (``delivery_s``: messages every 50 ms, as the other faults), until A's stats are whole (2
   servers, 2 connections, 1 room) and B's connection hash is readable on the new master
   (``state_s``).
8. ``cluster_slot_moved``: the same cluster; the slot of the room's channel (``P room:lobby``)
   is migrated to another master (``ClusterTopology.move_slot_of``, the way ``redis-cli --cluster
   reshard`` does: IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE everywhere), preferably one neither
   server is subscribed to yet. ``move_s``: the migration; from its end until delivery works both
   ways (``delivery_s``) and both managers are subscribed on the new shard (``resubscribed_s``).
   Messages are sent every 50 ms from before the move, to count those lost.
9. ``sentinel_master_killed``: a master, a replica and 3 Sentinels (quorum 2,
   ``down-after-milliseconds`` 1000 ms); the master is SIGKILLed. The figures of 7, plus
   ``named_s``: when the first Sentinel names the replica as master (the library's Sentinel
   client can reach it from then on); ``failover_s``: when all of them do, with no failover in
   progress.

``delivery_lag_s`` and ``state_lag_s`` are the library's share: the time from the moment a
client could find the new master (Cluster: promoted; Sentinel: named) until delivery and state
are back (the listener's reconnect backoff, capped at 2 s; a fresh slot map or master address;
scripts loaded on the new master; the state written back). Every fault also counts the calls
made meanwhile by outcome: ``BackendUnavailableError``, any other exception (which the README
does not promise), ``send_to_connection`` returning False, and sends accepted whose message
never arrived; and departure notices, here all about users who are still connected.

Timings. A master is flagged failing once it has not answered a ping for
``cluster-node-timeout`` (a node pings each other node at least every half node-timeout), the
flag spreads by gossip, and the replica waits 0.5-1 s (+1 s per rank) before its election:
promotion ~ node_timeout x (1 to 1.5) + 1-1.5 s, 2-3 s here, about 16-24 s with the 15 s
default. A Sentinel flags the master down after ``down-after-milliseconds`` without a valid
reply, the quorum agrees, a leader promotes the replica and names it once the replica reports
its new role: named ~ down_after + 1-1.5 s, about 31-32 s with the 30 s default. Add the
library's share to either. A slot move depends on neither setting. With heartbeat_ttl 3 s a
server's record can expire during a 2-3 s failover (the new master enforces expiry at once):
the other server then announces its users gone (``server-failure``) though they are connected,
and ``send_to_connection`` to them returns False until the server writes itself back; with the
default 90 s TTL that needs the server's heartbeats to fail for about 60 s.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcm_sync import DistributedConnectionManager
from dcm_sync.backends.redis_keys import KeyLayout
from testkit.recording import RecordingSocket, connect
from testkit.topologies import ClusterTopology, SentinelTopology

from .tools import (
    HEARTBEAT,
    LIMIT,
    Route,
    RunResult,
    departures,
    manager,
    measure,
    new_prefix,
    routes_between,
)
from .watch import (
    Calls,
    Stream,
    Watch,
    holds,
    is_master,
    names_master,
    node_client,
    subscribers,
    topology_errors,
)

__all__ = ["cluster_master_killed", "cluster_slot_moved", "sentinel_master_killed", "NODE_TIMEOUT_MS",
           "DOWN_AFTER_MS"]

NODE_TIMEOUT_MS = 1000   # cluster-node-timeout (Redis default 15000)
DOWN_AFTER_MS = 1000     # sentinel down-after-milliseconds (Redis default 30000)
SETTLE = 1.5 * HEARTBEAT["heartbeat_interval"]  # seconds from start to the fault (see make_duo)
GRACE = 0.5              # seconds given to late messages before counting the lost ones
ROOM = "lobby"
WHOLE = (2, 2, 1)        # active servers, connections, rooms


# ----------------------------------------------------------------------------- building blocks
@dataclass
class Duo:
    """Two in-process servers, each with one connection in ``lobby``: ann on A, bob on B."""

    a: DistributedConnectionManager
    b: DistributedConnectionManager
    a1: str
    wa: RecordingSocket
    b1: str
    wb: RecordingSocket

    def routes(self) -> list[Route]:
        return routes_between(self.a, self.a1, self.wa, self.b, self.b1, self.wb, ROOM)

    def whole(self, calls: Calls) -> bool:
        """A's stats count both servers, both connections and the room."""
        try:
            stats = calls.call(self.a.get_distributed_stats)
        except Exception:
            return False
        return (stats.active_servers, stats.total_connections, stats.total_rooms) == WHOLE

    def metrics(self) -> dict[str, Any]:
        keys = ("reconnects", "restores", "connections_cleaned", "probes_failed")
        ma, mb = self.a.metrics(), self.b.metrics()
        return {k: f"{ma[k]}/{mb[k]}" for k in keys}


def make_duo(stack: contextlib.ExitStack, url: str, prefix: str) -> Duo:
    """Started, delivering both ways, and past their first heartbeat (SETTLE): a fault then hits
    servers in their steady state, whose scripts are in their masters' script caches."""
    a = manager(stack, url, prefix, **HEARTBEAT)
    b = manager(stack, url, prefix, **HEARTBEAT)
    settled_at = time.monotonic() + SETTLE
    a1, wa = connect(a, "ann", ROOM)
    b1, wb = connect(b, "bob", ROOM)
    duo = Duo(a, b, a1, wa, b1, wb)
    measure(time.monotonic(), "warm-up (before the fault)", duo.routes(), timeout=15)
    time.sleep(max(0.0, settled_at - time.monotonic()))
    return duo


def settled(duo: Duo, *calls: Calls) -> dict[str, Any]:
    """What the user saw, once the measurement ended (late messages given GRACE)."""
    time.sleep(GRACE)
    sends, stats = calls
    told = [(who, str(m.get("connectionId")), str(m.get("reason")))
            for who, ws in (("ann", duo.wa), ("bob", duo.wb)) for m in departures(ws)]
    return {"sends": sends.report(), "stats_reads": stats.report(),
            "accepted_lost": sends.lost(duo.wa, duo.wb),
            "departures": len(told), "duplicate_departures": len(told) - len(set(told)),
            "departures_seen": [f"{who} told {cid[-4:]} left ({reason})" for who, cid, reason in told],
            "sockets_open": not (duo.wa.closed or duo.wb.closed), **duo.metrics()}


# ----------------------------------------------------------------------------- faults 7 and 9
def master_killed(stack: contextlib.ExitStack, duo: Duo, prefix: str, kill: Callable[[], object],
                  wait_failover: Callable[[], object], heir_port: int,
                  named: Callable[[], bool] | None = None) -> RunResult:
    """``kill()``, then time the failover to ``heir_port``, delivery, and the state on the heir.
    ``named``: when clients can find the heir (Sentinel: a Sentinel names it); else when it is
    promoted (Cluster: the nodes redirect to it from then on)."""
    heir = node_client(stack, heir_port)
    conn_key = KeyLayout(prefix).connection(duo.b1)
    sends, stats = Calls(), Calls()
    kill()
    t0 = time.monotonic()
    watches = {"failover": Watch("failover", wait_failover),
               "promoted": Watch("promoted", lambda: is_master(heir)),
               "state": Watch("state", lambda: duo.whole(stats) and holds(heir, conn_key, duo.b.server_id))}
    if named is not None:
        watches["named"] = Watch("named", named)
    try:
        got = measure(t0, "after the kill", [sends.route(r) for r in duo.routes()],
                      {name: w.done for name, w in watches.items()})
    finally:
        for w in watches.values():
            w.close()
    at = {name: w.since(t0) for name, w in watches.items()}
    found = at.get("named", at["promoted"])
    delivery = max(v for k, v in got.items() if k not in watches)
    figures = {"promoted_s": at["promoted"], "named_s": at.get("named"), "failover_s": at["failover"],
               "delivery_s": delivery, "state_s": at["state"], "delivery_lag_s": delivery - found,
               "state_lag_s": at["state"] - found, "recovery_s": max(delivery, at["state"])}
    return RunResult({k: v for k, v in figures.items() if v is not None}, settled(duo, sends, stats))


def cluster_master_killed(workdir: Path) -> RunResult:
    prefix = new_prefix()
    keys = KeyLayout(prefix)
    with contextlib.ExitStack() as stack, topology_errors():
        cluster = stack.enter_context(ClusterTopology(3, 1, node_timeout_ms=NODE_TIMEOUT_MS))
        duo = make_duo(stack, cluster.url, prefix)
        victim = cluster.master_for_key(keys.server(duo.b.server_id))
        heir = cluster.replica_of(victim)
        also = {"A's slot": keys.server(duo.a.server_id), "room channel": keys.channel(f"room:{ROOM}"),
                "room set": keys.room(ROOM), "server index": keys.servers_index}
        also_held = [what for what, key in also.items() if cluster.master_for_key(key).port == victim.port]
        result = master_killed(stack, duo, prefix, lambda: cluster.kill(victim),
                               lambda: cluster.wait_failover(victim, timeout=LIMIT), heir.port)
        result.seen["victim_also_held"] = also_held
        return result


def sentinel_master_killed(workdir: Path) -> RunResult:
    prefix = new_prefix()
    with contextlib.ExitStack() as stack, topology_errors():
        sentinel = stack.enter_context(SentinelTopology(down_after_ms=DOWN_AFTER_MS))
        duo = make_duo(stack, sentinel.url, prefix)
        (heir_port,) = set(sentinel.data_servers) - {sentinel.master().port}
        asked = [node_client(stack, port) for port in sentinel.sentinel_ports]
        return master_killed(stack, duo, prefix, sentinel.kill_master,
                             lambda: sentinel.wait_failover(timeout=LIMIT), heir_port,
                             named=lambda: any(names_master(r, sentinel.service, heir_port) for r in asked))


# ----------------------------------------------------------------------------- fault 8
def cluster_slot_moved(workdir: Path) -> RunResult:
    prefix = new_prefix()
    keys = KeyLayout(prefix)
    channel = keys.channel(f"room:{ROOM}")
    with contextlib.ExitStack() as stack, topology_errors():
        cluster = stack.enter_context(ClusterTopology(3, 1, node_timeout_ms=NODE_TIMEOUT_MS))
        duo = make_duo(stack, cluster.url, prefix)
        source = cluster.master_for_key(channel)
        # prefer a shard neither server is subscribed to yet: then each must open a connection to it
        homes = {cluster.master_for_key(keys.server(m.server_id)).port for m in (duo.a, duo.b)}
        others = sorted((m for m in cluster.masters() if m.port != source.port),
                        key=lambda m: (m.port in homes, m.port))
        target = others[0]
        sends, stats = Calls(), Calls()
        routes = [sends.route(r) for r in duo.routes()]
        stream = Stream(routes)
        try:
            time.sleep(0.2)  # a few messages before the move
            started = time.monotonic()
            cluster.move_slot_of(channel, target)
            t0 = time.monotonic()
            on_target = node_client(stack, target.port)
            resubscribed = Watch("resubscribed", lambda: subscribers(on_target, channel) == 2)
            try:
                got = measure(t0, "after the slot move", routes, {"resubscribed": resubscribed.done})
            finally:
                resubscribed.close()
        finally:
            stream.close()
        delivery = max(v for k, v in got.items() if k != "resubscribed")
        seen = settled(duo, sends, stats)
        seen.update(target_was_subscribed=target.port in homes, source_holds_a_server=source.port in homes,
                    stats_whole=duo.whole(stats))
        return RunResult({"move_s": t0 - started, "delivery_s": delivery,
                          "resubscribed_s": resubscribed.since(t0), "recovery_s": delivery}, seen)
