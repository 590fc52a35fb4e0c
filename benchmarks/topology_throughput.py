"""``python -m benchmarks.topology_throughput [--messages 5000] [--runs 3]``: what Redis Cluster
costs dcm-sync against a single Redis, in the same run.

Two in-process managers (threads, no WebSockets: recording sockets) on a single ``redis-server``
and on a 3-master Redis Cluster of their own, both on loopback. Server A sends ``--messages``
direct messages to a connection on server B, then as many room broadcasts to a room both hold
members of; figures are messages per second until B's socket has them all, and the publisher's
own cost per ``publish`` call (the backend alone). Medians [min-max] of ``--runs`` runs; the
single Redis is the peer, the ratio is Cluster / single.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid

from dcm_sync import create_distributed_connection_manager
from dcm_sync.backends import open_backend
from testkit.redis_server import RedisServer
from testkit.topologies import ClusterTopology

from .harness import span, summarize

WAIT = 60.0  # seconds at most for one phase's messages to arrive


class _Counting:
    def __init__(self) -> None:
        self.count, self.target, self.done = 0, 0, threading.Event()

    def send(self, message: str) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()

    def close(self, *args: object, **kwargs: object) -> None:
        pass


def _delivery(url: str, n: int) -> dict[str, float]:
    settings = dict(redis_url=url, key_prefix=f"tp{uuid.uuid4().hex[:8]}:")
    a = create_distributed_connection_manager(server_port=1, **settings)
    b = create_distributed_connection_manager(server_port=2, **settings)
    try:
        sb = _Counting()
        cb = b.register_connection(sb, "bob")
        b.join_room(cb, "r")
        ca = a.register_connection(_Counting(), "ann")
        a.join_room(ca, "r")
        out = {}
        for kind in ("direct", "room"):
            sb.count, sb.target = 0, n
            sb.done.clear()
            start = time.perf_counter()
            for _ in range(n):
                if kind == "direct":
                    a.send_to_connection(cb, "x")
                else:
                    a.broadcast_to_room("r", "x", exclude=[ca])
            if not sb.done.wait(WAIT):
                raise RuntimeError(f"{kind}: {sb.count} of {n} arrived within {WAIT:.0f}s")
            out[f"{kind}_per_s"] = n / (time.perf_counter() - start)
        return out
    finally:
        a.shutdown()
        b.shutdown()


def _publish_us(url: str, n: int) -> float:
    backend = open_backend(url, f"tp{uuid.uuid4().hex[:8]}:")
    try:
        for _ in range(200):
            backend.publish("room:r", b"x" * 100)
        start = time.perf_counter()
        for _ in range(n):
            backend.publish("room:r", b"x" * 100)
        return (time.perf_counter() - start) / n * 1e6
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.topology_throughput",
                                     description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    single, cluster = RedisServer(), ClusterTopology(masters=3, replicas_per_master=0)
    figures: dict[str, dict[str, list[float]]] = {"single": {}, "cluster": {}}
    try:
        single.start()
        cluster.start()
        for _ in range(args.runs):  # interleaved: both sides see the same machine
            for side, url in (("single", single.url), ("cluster", cluster.url)):
                got = _delivery(url, args.messages)
                got["publish_us"] = _publish_us(url, args.messages)
                for metric, value in got.items():
                    figures[side].setdefault(metric, []).append(value)
    finally:
        single.cleanup()
        cluster.cleanup()
    print(f"{args.messages:,} messages per phase, {args.runs} runs, medians [min-max]")
    print(f"  {'metric':<14} {'single Redis':>28} {'Cluster (3 masters)':>28} {'ratio':>7}")
    for metric in figures["single"]:
        s, c = summarize(figures["single"][metric]), summarize(figures["cluster"][metric])
        print(f"  {metric:<14} {span(s, ',.1f', width=10)} {span(c, ',.1f', width=10)}"
              f" {c['median'] / s['median']:>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
