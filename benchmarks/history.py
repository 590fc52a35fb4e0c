"""``python -m benchmarks.history [--messages 5000] [--runs 3] [--bytes 100] [--url URL]
[--quick] [--json]``: what a room history costs a broadcast, against a plain room, in the same run.

Two in-process managers (threads, no WebSockets: counting sockets) on one ``redis-server`` of
their own on a free loopback port (or on ``--url``: ``memory://``, or a loopback Redis), with
``history_rooms=("h-*",)``, ``room_notices="off"`` and pings off. Each manager holds
``SOCKETS`` sockets, every one in room ``h-1`` (with history: one Lua script XADDs the envelope
to a Stream capped at ``history_size`` and PUBLISHes it; every server, the sender too, delivers
it from the bus) and in room ``p-1`` (plain: one PUBLISH; the sender delivers to its own members
directly). So each message is delivered here and on the other server.

For each kind of room, manager A broadcasts ``--messages`` messages of ``--bytes`` bytes; the
figures are broadcasts per second until every socket of both managers has all of them (in
order, checked), and CPU per broadcast in µs: this process's (``time.process_time``: the caller
and both managers' listeners), the calling thread's alone (``time.thread_time``), and
redis-server's (``INFO cpu``). The kinds alternate (the first one swaps each run), ``--runs``
runs each; medians [min-max], and the ratio history / plain. Then what a history holds in
Redis at ``history_size`` 100: ``MEMORY USAGE`` of its two keys (the Stream and its meta
hash), over 200 appends past full, and what ``INFO memory used_memory`` drops by when the two
keys are deleted, for ``--bytes`` and 1 KB messages (not on ``memory://``).

``--quick``: 1,000 messages, 3 runs (well under a minute on 2 cores). ``--json``: the figures
as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import redis

from dcm_sync import Config, DistributedConnectionManager, create_distributed_connection_manager
from dcm_sync.backends.redis_keys import KeyLayout
from testkit.redis_server import RedisServer

SOCKETS = 3                       # per manager; each is in both rooms
ROOMS = {"history": "h-1", "plain": "p-1"}
HISTORY_SIZE = 100
MEMORY_BYTES = 1024               # the second message size of the memory figures
WAIT = 60.0                       # seconds at most for one phase's messages to arrive
WARMUP = 50                       # broadcasts per room before measuring (scripts loaded, caches)
WARMUP_ATTEMPTS = 20              # rounds of warm-up broadcasts before giving up
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class _Counting:
    """A socket that counts what it gets and checks the order: message ``i`` starts with
    ``i`` in 8 digits. ``done`` is set when ``target`` messages have arrived."""

    def __init__(self) -> None:
        self.count = self.target = self.misordered = 0
        self.done = threading.Event()

    def expect(self, target: int) -> None:
        """Start a phase (only when nothing is in flight)."""
        self.count, self.misordered, self.target = 0, 0, target
        self.done.clear()

    def send(self, message: str) -> None:
        if int(message[:8]) != self.count:
            self.misordered += 1
        self.count += 1
        if self.count == self.target:
            self.done.set()

    def close(self) -> None:
        pass


def summarize(values: list[float] | list[int]) -> dict[str, Any]:
    """Median, min, max and every run (as ``benchmarks.harness.summarize``, which is not
    imported: harness.py does not pass ``mypy --strict`` with this redis-py)."""
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": vals}


def span(figure: dict[str, Any], num: str, unit: str = "", width: int = 0) -> str:
    """``"<median><unit> [<min>-<max>]"``, the median right-aligned to ``width``."""
    med, low, high = (format(figure[k], num) for k in ("median", "min", "max"))
    return f"{med:>{width}}{unit} [{low}-{high}]"


def _payloads(n: int, size: int) -> list[str]:
    pad = "x" * max(0, size - 8)
    return [f"{i:08d}{pad}" for i in range(n)]


def _wait_all(sockets: list[_Counting], deadline: float) -> bool:
    return all(s.done.wait(max(0.0, deadline - time.perf_counter())) for s in sockets)


def _redis_cpu(client: redis.Redis | None) -> float:
    if client is None:
        return 0.0
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _phase(sender: DistributedConnectionManager, room: str, payloads: list[str],
           sockets: list[_Counting], stats: redis.Redis | None) -> dict[str, float]:
    """Broadcast every payload to ``room`` from ``sender``; the figures of this one phase."""
    n = len(payloads)
    for s in sockets:
        s.expect(n)
    redis_before = _redis_cpu(stats)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    thread0 = time.thread_time()
    for text in payloads:
        sender.broadcast_to_room(room, text)
    caller = time.thread_time() - thread0
    sent = time.perf_counter() - wall0
    if not _wait_all(sockets, wall0 + WAIT):
        got = sorted(s.count for s in sockets)
        raise RuntimeError(f"{room}: sockets got {got} of {n} within {WAIT:.0f} s")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    redis_cpu = _redis_cpu(stats) - redis_before
    bad = [(s.count, s.misordered) for s in sockets if s.misordered or s.count != n]
    if bad:
        raise RuntimeError(f"{room}: (count, misordered) of sockets {bad}; expected {n}, 0")
    out = {"per_s": n / wall, "send_per_s": n / sent, "cpu_us": cpu / n * 1e6,
           "caller_cpu_us": caller / n * 1e6}
    if stats is not None:
        out["redis_cpu_us"] = redis_cpu / n * 1e6
    return out


def _warm(sender: DistributedConnectionManager, room: str, sockets: list[_Counting]) -> None:
    """Broadcast to ``room`` until a round of ``WARMUP`` reaches every socket (the other
    server's subscription is confirmed when its member joined; this only makes sure)."""
    for _ in range(WARMUP_ATTEMPTS):
        for s in sockets:
            s.expect(WARMUP)
        for text in _payloads(WARMUP, 8):
            sender.broadcast_to_room(room, text)
        if _wait_all(sockets, time.perf_counter() + 5.0):
            # anything of an earlier round still in flight would break the next phase's order
            time.sleep(0.2)
            if all(s.count == WARMUP and not s.misordered for s in sockets):
                return
    raise RuntimeError(f"{room}: warm-up broadcasts did not reach every socket")


def _memory(url: str, prefix: str, sizes: list[int]) -> dict[str, Any]:
    """What a history of ``HISTORY_SIZE`` messages of each size holds in Redis."""
    keys = KeyLayout(prefix)
    cfg = Config(redis_url=url, key_prefix=prefix, history_rooms=("h-*",), room_notices="off",
                 ping_interval=0, history_size=HISTORY_SIZE, server_port=3)
    manager = create_distributed_connection_manager(None, cfg)
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    out: dict[str, Any] = {}
    try:
        manager.broadcast_to_room("h-memory-warm", "00000000")  # the script loaded beforehand
        for size in sizes:
            room = f"h-memory-{size}"
            stream, meta = keys.history(room), keys.history_meta(room)
            texts = _payloads(HISTORY_SIZE, size)
            for text in texts:
                manager.broadcast_to_room(room, text)
            usages: list[int] = []
            for text in texts + texts:  # 200 appends past full: trimmed nodes come and go
                manager.broadcast_to_room(room, text)
                usages.append(int(client.memory_usage(stream, samples=0) or 0)
                              + int(client.memory_usage(meta, samples=0) or 0))
            rows: Any = client.xrevrange(stream, count=1)  # [(id, {b"d": envelope})]
            entry = len(rows[0][1][b"d"]) if rows else 0
            length = int(client.xlen(stream))
            usage = summarize(usages)
            # what deleting frees: steadier than used_memory's growth while filling, which
            # moves with client buffers and the allocator's reuse
            held = int(client.info("memory")["used_memory"])
            client.delete(stream, meta)
            freed = held - int(client.info("memory")["used_memory"])
            out[str(size)] = {
                "message_bytes": size, "entries": length, "envelope_bytes": entry,
                "memory_usage": usage, "per_entry": usage["median"] / max(1, length),
                "used_memory_freed": freed,
                "overhead": usage["median"] / max(1, length * entry),
            }
    finally:
        client.close()
        manager.shutdown()
    return out


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return
    if parts.scheme not in ("redis", "rediss") or parts.hostname not in LOOPBACK:
        raise SystemExit(f"--url must be memory://... or a loopback redis:// URL, not {url!r}")


def _run(url: str, messages: int, runs: int, size: int) -> dict[str, Any]:
    prefix = f"hb{uuid.uuid4().hex[:8]}:"
    cfg = Config(redis_url=url, key_prefix=prefix, history_rooms=("h-*",), room_notices="off",
                 ping_interval=0, history_size=HISTORY_SIZE)
    on_redis = urlsplit(url).scheme != "memory"
    stats = redis.Redis.from_url(url, socket_timeout=5.0) if on_redis else None
    managers = []
    samples: dict[str, dict[str, list[float]]] = {"history": {}, "plain": {}}
    try:
        for port in (1, 2):
            managers.append(create_distributed_connection_manager(None, cfg.replace(server_port=port)))
        sockets = [_Counting() for _ in range(SOCKETS * len(managers))]
        for i, s in enumerate(sockets):
            mgr = managers[i % len(managers)]
            cid = mgr.register_connection(s, f"user-{i}")
            for room in ROOMS.values():
                mgr.join_room(cid, room)
        sender = managers[0]
        for room in ROOMS.values():
            _warm(sender, room, sockets)
        payloads = _payloads(messages, size)
        order = ["history", "plain"]
        for _ in range(runs):
            for kind in order:
                for metric, value in _phase(sender, ROOMS[kind], payloads, sockets, stats).items():
                    samples[kind].setdefault(metric, []).append(value)
            order.reverse()
        version = str(stats.info("server")["redis_version"]) if stats is not None else None
    finally:
        for mgr in managers:
            mgr.shutdown()
        if stats is not None:
            stats.close()
    figures = {kind: {m: summarize(v) for m, v in by.items()} for kind, by in samples.items()}
    ratios = {m: statistics.median(samples["history"][m]) / statistics.median(samples["plain"][m])
              for m in samples["history"] if statistics.median(samples["plain"][m]) > 0}
    result: dict[str, Any] = {
        "backend": "redis" if on_redis else "memory", "redis_version": version,
        "messages": messages, "runs": runs, "bytes": size, "sockets_per_server": SOCKETS,
        "servers": len(managers), "history_size": HISTORY_SIZE,
        "history": figures["history"], "plain": figures["plain"], "ratio": ratios,
    }
    result["memory"] = None
    if on_redis:
        result["memory"] = _memory(url, f"hm{uuid.uuid4().hex[:8]}:",
                                   sorted({size, MEMORY_BYTES}))
    return result


LABELS = {"per_s": ("delivered", ",.0f", " /s"), "send_per_s": ("sent", ",.0f", " /s"),
          "cpu_us": ("process CPU", ",.1f", " µs"), "caller_cpu_us": ("caller CPU", ",.1f", " µs"),
          "redis_cpu_us": ("redis CPU", ",.1f", " µs")}


def _print(result: dict[str, Any]) -> None:
    where = (f"redis-server {result['redis_version']}" if result["backend"] == "redis"
             else "memory://")
    print(f"{where}: {result['messages']:,} broadcasts of {result['bytes']} B per run, "
          f"{result['runs']} runs, {result['servers']} servers x {result['sockets_per_server']}"
          f" sockets, history_size {result['history_size']}; medians [min-max]")
    print(f"  {'per broadcast':<13} {'history room (h-1)':>30} {'plain room (p-1)':>30}"
          f" {'hist/plain':>10}")
    for metric, (label, num, unit) in LABELS.items():
        if metric in result["history"]:
            print(f"  {label:<13} {span(result['history'][metric], num, unit, width=9):>30}"
                  f" {span(result['plain'][metric], num, unit, width=9):>30}"
                  f" {result['ratio'][metric]:>9.2f}x")
    if result["memory"] is None:
        print("  history memory: not measured on memory://")
    for size, mem in (result["memory"] or {}).items():
        usage = mem["memory_usage"]
        print(f"  history of {mem['entries']} x {size} B messages ({mem['envelope_bytes']} B "
              f"stored each): MEMORY USAGE {span(usage, ',.0f', ' B')}, "
              f"{mem['per_entry']:,.0f} B an entry ({mem['overhead']:.2f}x the envelopes); "
              f"used_memory -{mem['used_memory_freed']:,} B when deleted")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.history", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=None, help="broadcasts per run (5000)")
    parser.add_argument("--runs", type=int, default=None, help="runs of each kind (3)")
    parser.add_argument("--bytes", type=int, default=100, help="message size (100, at least 8)")
    parser.add_argument("--url", default=None,
                        help="memory://, or a loopback redis:// (default: a redis-server of its own)")
    parser.add_argument("--quick", action="store_true", help="1,000 messages, 3 runs")
    parser.add_argument("--json", action="store_true", help="the figures as one JSON object")
    args = parser.parse_args(argv)
    messages = args.messages if args.messages is not None else (1000 if args.quick else 5000)
    runs = args.runs if args.runs is not None else 3
    if messages < 1 or runs < 1 or not 8 <= args.bytes <= 1024 * 1024 - 1024:
        parser.error("--messages and --runs must be >= 1, --bytes in 8..1047552")
    server = None
    url = args.url
    if url is not None:
        _check_url(url)
    else:
        server = RedisServer()
        server.start()
        url = server.url
    try:
        result = _run(url, messages, runs, args.bytes)
    finally:
        if server is not None:
            server.cleanup()
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
