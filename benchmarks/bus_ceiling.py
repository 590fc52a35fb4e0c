"""``python -m benchmarks.bus_ceiling [--subscribers 63] [--runs 3]``: how many pub/sub
deliveries one Redis (one shard) makes per second, for the capacity model (docs/capacity.md).

One ``redis-server`` of its own; ``--subscribers`` ``redis-cli`` processes subscribed to one
channel (the servers of a room), reading into /dev/null; ``redis-benchmark`` publishes 100-byte
and 1 KB messages to it with 4 connections and pipelines of 16, ``--messages`` per run, bounded
by a timeout. Deliveries/s = publishes x subscribers / the time from the first publish until
Redis has written every message to every subscriber (none may be cut for its output buffer).
Sharded (``SSUBSCRIBE``/``SPUBLISH``) and classic (``SUBSCRIBE``/``PUBLISH``) pub/sub run in the
same run, one after the other, as each other's peer. Medians [min-max] of ``--runs`` runs. The
machine's other processes (and the subscribers themselves, which share its cores) are in the
figure: a lower bound for a shard on its own host.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

import redis

from testkit.redis_server import RedisServer

from .harness import span, summarize

TIMEOUT = 120.0  # seconds per redis-benchmark run


def _listening(r: redis.Redis, command: str) -> int:
    """How many clients are subscribed to ``bus`` (PUBSUB SHARDNUMSUB or NUMSUB)."""
    reply = r.pubsub_shardnumsub("bus") if command == "SSUBSCRIBE" else r.pubsub_numsub("bus")
    return int(reply[0][1]) if reply else 0


def _drained(r: redis.Redis) -> bool:
    """No subscriber has output waiting: every message was written out to them."""
    return all(client["omem"] == "0" for client in r.client_list(_type="pubsub"))


def _subscribers(port: int, r: redis.Redis, command: str, count: int) -> list[subprocess.Popen[bytes]]:
    procs = [subprocess.Popen(["redis-cli", "-p", str(port), command, "bus"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(count)]
    deadline = time.monotonic() + 20
    while True:
        if _listening(r, command) == count:
            return procs
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {_listening(r, command)} of {count} subscribers after 20 s")
        time.sleep(0.05)


def _publish(port: int, command: str, size: int, messages: int) -> None:
    """``messages`` publishes of ``size`` bytes to ``bus`` (its own rate is not the figure)."""
    subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", "4", "-P", "16", "-n", str(messages), "-q",
         command, "bus", "x" * size],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True, timeout=TIMEOUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bus_ceiling", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=63, help="servers subscribed (63: a "
                        "room of 100 members spread at random over 100 servers)")
    parser.add_argument("--messages", type=int, default=100_000, help="publishes per run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    for tool in ("redis-cli", "redis-benchmark"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is needed (Debian: apt-get install redis-tools)")
    print(f"{args.subscribers} subscribers, {args.messages:,} publishes per run, "
          f"{args.runs} runs; deliveries/s until every subscriber has every message")
    for sub, pub in (("SSUBSCRIBE", "SPUBLISH"), ("SUBSCRIBE", "PUBLISH")):
        for size in (100, 1024):
            rates = []
            for _ in range(args.runs):
                server = RedisServer(extra_args=("--client-output-buffer-limit",
                                                 "pubsub 256mb 128mb 60"))
                procs: list[subprocess.Popen[bytes]] = []
                r = None
                try:
                    server.start()
                    r = server.client()  # one connection polls the whole run
                    procs = _subscribers(server.port, r, sub, args.subscribers)
                    started = time.monotonic()
                    _publish(server.port, pub, size, args.messages)
                    # until every subscriber has been written everything (none cut for a full
                    # output buffer): deliveries, not a backlog
                    deadline = started + TIMEOUT
                    while not _drained(r) and time.monotonic() < deadline:
                        time.sleep(0.01)
                    elapsed = time.monotonic() - started
                    if _listening(r, sub) != args.subscribers or not _drained(r):
                        raise RuntimeError("a subscriber was cut or did not get every message")
                    rates.append(args.messages * args.subscribers / elapsed)
                finally:
                    if r is not None:
                        r.close()
                    for p in procs:
                        p.kill()
                        p.wait(10)
                    server.cleanup()
            s = summarize(rates)
            print(f"  {pub:<9} {size:>5} B: {span(s, ',.0f', ' deliveries/s', width=12)}  "
                  f"({s['median'] * (size + 40) / 1e6:,.0f} MB/s of payload and framing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
