"""``python -m benchmarks.capacity [--url REDIS_URL] [--runs N] [--json PATH] [--quick] [--only PHASE ...]``

What one connection, room membership, server and operation costs Redis: the figures a capacity
model needs (docs/capacity.md does the arithmetic with them). Each figure is the median of
``--runs`` runs (default 3), measured through the public API against a ``redis-server`` of its
own on a free loopback port, or against ``--url`` (then only keys under its own prefix
``cap<pid>:`` are touched, and other clients' traffic shows in the figures). How each figure is
measured: ``benchmarks/capacity/phases.py``; reading Redis (one server, or every master of a
``redis+cluster://`` URL): ``benchmarks/redis_stats.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dcm_sync.config import redact_url

from ..harness import span, summarize
from ..redis_stats import is_cluster_url
from .phases import BUS_SERVERS, HEARTBEAT_SERVERS, MESSAGE_SIZES, PHASES, Bench

SEED_BYTES_PER_CONNECTION = 500  # the seed design's estimate, "about 500 bytes per connection"


# ------------------------------------------------------------------------------- the report
OPS = (("register", "register_connection"), ("join", "join_room, room has members here"),
       ("join_first", "join_room, first member (SUBSCRIBE)"), ("leave", "leave_room, members stay"),
       ("leave_last", "leave_room, last member (UNSUBSCRIBE)"),
       ("broadcast_to_room", "broadcast_to_room, 100 B"),
       ("send_to_connection", "send_to_connection, other server, 100 B"),
       ("remove", "remove_connection, in no room"),
       ("remove_2_rooms", "remove_connection, 2 rooms with members left"),
       ("send_to_user", "send_to_user, one connection on another server"),
       ("get_user_connections", "get_user_connections, one connection"),
       ("get_room_members_1000", "get_room_members, a room of 1,000"))
MEMORY = (("mem.connection", "per connection, in no room"),
          ("usage.connection_record", "  its record in connections:{T}:XX (MEMORY USAGE)"),
          ("usage.server_set_per_connection", "  its member of server-connections:<sid>:XX"),
          ("usage.user_per_connection", "  its user's field of users:{uXX} (one user each)"),
          ("usage.connection_other", "  the rest (dict buckets, rounding)"),
          ("mem.membership_10", "per membership, rooms of 10 (intset)"),
          ("mem.membership_100", "per membership, rooms of 100 (intset)"),
          ("mem.membership_1000", "per membership, rooms of 1,000 (hashtable)"),
          ("mem.room_member", "  intset rooms: per member (from 10 and 100)"),
          ("mem.room_fixed", "  intset rooms: per room (from 10 and 100)"),
          ("mem.subscription", "per room channel subscription of one more server"),
          ("mem.server", "per server, no connections"),
          ("mem.server_clients", "  and its idle client connections (mem_clients_normal)"))
COLUMNS = ("commands", "round_trips", "bytes_in", "bytes_out")


def _num(value: float) -> str:
    size = abs(value)
    return f"{value:,.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}"


def _fmt(figure: dict[str, Any] | None) -> str:
    """The median, and [min-max] where the runs differ at the precision shown."""
    return span(figure, _num, collapse=True)


def report(figures: dict[str, dict[str, Any]], b: Bench) -> list[str]:
    lines: list[str] = []
    if "mem.connection" in figures:
        lines.append(f"Redis memory: used_memory - mem_clients_normal deltas over {b.n:,} connections "
                     "(bytes)")
        lines += [f"  {label:<52} {_fmt(figures.get(key)):>24}" for key, label in MEMORY]
        lines.append("  MEMORY USAGE by key class (SCAN of the prefix, after all joins)")
        for key in sorted(k for k in figures if k.startswith("usage.") and k.count(".") >= 2):
            lines.append(f"    {key.removeprefix('usage.'):<50} {_fmt(figures[key]):>24}")
    head = f"  {'':<44}" + "".join(f"{c:>22}" for c in ("commands incl. Lua", "round trips",
                                                         "bytes in", "bytes out"))

    def table(title: str, rows: list[tuple[str, str]]) -> None:
        rows = [(name, label) for name, label in rows if f"ops.{name}.commands" in figures]
        if rows:
            lines.extend(["", title, head])
        for name, label in rows:
            lines.append(f"  {label:<44}" + "".join(
                f"{_fmt(figures.get(f'ops.{name}.{c}')):>22}" for c in COLUMNS))

    table(f"Redis per operation (INFO commandstats and stats deltas over {b.reps:,} repetitions)",
          list(OPS))
    periodic = [(f"heartbeat_{mode}_{s}_servers", f"heartbeat, {s} servers, {what}")
                for s in HEARTBEAT_SERVERS
                for mode, what in (("default", "30 s interval"), ("fast", "interval < 10 s"))]
    table("Redis per periodic task, per server", periodic + [("probe", "subscription probe")])
    table("Redis per connection of a dead server (handle_server_failure, 1 room each)",
          [("cleanup_per_dead_connection", f"{b.dead:,} connections")])
    if "cleanup.connections_per_s" in figures:
        lines.append(f"  {'cleanup rate (connections/s)':<44}"
                     f"{_fmt(figures['cleanup.connections_per_s']):>22}")
    if not any(k.startswith("bus.") for k in figures):
        return lines
    lines += ["", f"Bus bytes per broadcast ({b.broadcasts:,} broadcasts; PUBLISH in, delivery out)",
              f"  {'message, subscribing servers':<44}{'PUBLISH bytes in':>22}{'out per server':>22}"]
    for size in MESSAGE_SIZES:
        for s in BUS_SERVERS:
            key = f"bus.{size}B.{s}_servers"
            lines.append(f"  {f'{size} B, {s} servers':<44}{_fmt(figures.get(key + '.publish_bytes_in')):>22}"
                         f"{_fmt(figures.get(key + '.bytes_out_per_server')):>22}")
    return lines


def comparison(figures: dict[str, dict[str, Any]]) -> list[str]:
    conn, member = figures.get("mem.connection"), figures.get("mem.membership_100")
    if conn is None or member is None:
        return []
    two_rooms = conn["median"] + 2 * member["median"]
    return [
        f"the seed's estimate: about {SEED_BYTES_PER_CONNECTION} bytes of Redis per connection; measured "
        f"{conn['median']:.0f} B in no room, {two_rooms:.0f} B in 2 rooms of 100 "
        f"({two_rooms / SEED_BYTES_PER_CONNECTION:.0%} of the estimate), before the room channel "
        "subscriptions of the servers that hold members (per room, so they depend on how rooms "
        "spread over servers: docs/capacity.md)",
        "python-socketio (the peer) keeps no per-connection state in Redis: 0 B per connection and "
        "per room membership (its rooms live in each server's memory, and every server receives "
        "every broadcast); `python -m benchmarks --only memory` measures that",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity",
                                     description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--url", help="a redis:// or redis+cluster:// URL (a cluster: figures added "
                        "up over every master); "
                        "default: a redis-server of its own on a free loopback port")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (the median is shown)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--quick", action="store_true", help="5,000 connections instead of 50,000")
    parser.add_argument("--only", nargs="+", choices=list(PHASES), help="run only these phases")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    command = "python -m benchmarks.capacity " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.monotonic()
    server = None
    url = args.url
    if url is None:
        from testkit.redis_server import RedisServer

        server = RedisServer()
        server.start()
        url = server.url
    samples: dict[str, list[float]] = {}
    detail: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="dcm-capacity-") as tmp:
            b = Bench(url, own=server is not None, quick=args.quick, workdir=Path(tmp))
            with b.probe.quiet():
                version = b.nodes.version()
            print(f"{command}\nRedis {version} at {redact_url(url)}"
                  f"{' (cluster: figures added up over every master)' if b.nodes.cluster else ''}; "
                  f"Python {platform.python_version()}, {os.cpu_count()} cores; {args.runs} run(s)",
                  flush=True)
            for run_no in range(args.runs):
                for name, phase in PHASES.items():
                    if args.only and name not in args.only:
                        continue
                    t = time.monotonic()
                    for metric, value in phase(b, run_no, detail if run_no == 0 else {}).items():
                        samples.setdefault(metric, []).append(value)
                    seconds[name] = seconds.get(name, 0.0) + time.monotonic() - t
                    print(f"  run {run_no + 1}: {name} {time.monotonic() - t:.1f} s", flush=True)
            b.nodes.close()
    finally:
        if server is not None:
            server.cleanup()
    figures = {metric: summarize(values) for metric, values in samples.items()}
    lines = report(figures, b) + [""] + [f"note: {line}" for line in comparison(figures)]
    total = time.monotonic() - started
    print("\n" + "\n".join(lines) + f"\n\n({total:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({
            "command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "redis": version, "url": redact_url(url), "cluster": is_cluster_url(url),
            "python": platform.python_version(), "cpus": os.cpu_count(), "quick": args.quick,
            "runs": args.runs, "connections": b.n, "repetitions": b.reps, "broadcasts": b.broadcasts,
            "dead_connections": b.dead, "figures": figures, "commands_by_name": detail,
            "notes": comparison(figures), "phase_seconds": seconds, "total_seconds": total,
        }, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
