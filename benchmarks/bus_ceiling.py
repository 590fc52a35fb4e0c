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

from tests.helpers.redis_server import RedisServer

from .harness import span, summarize

TIMEOUT = 120.0  # seconds per redis-benchmark run


def _listening(port: int, command: str) -> int:
    numsub = "SHARDNUMSUB" if command == "SSUBSCRIBE" else "NUMSUB"
    out = subprocess.run(["redis-cli", "-p", str(port), "PUBSUB", numsub, "bus"],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[-1]) if out else 0


def _drained(port: int) -> bool:
    """No subscriber has output waiting: every message was written out to them."""
    out = subprocess.run(["redis-cli", "-p", str(port), "CLIENT", "LIST", "TYPE", "pubsub"],
                         capture_output=True, text=True, check=True).stdout
    return all(" omem=0 " in line + " " for line in out.splitlines() if line)


def _subscribers(port: int, command: str, count: int) -> list[subprocess.Popen[bytes]]:
    procs = [subprocess.Popen(["redis-cli", "-p", str(port), command, "bus"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(count)]
    deadline = time.monotonic() + 20
    while True:
        if _listening(port, command) == count:
            return procs
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {_listening(port, command)} of {count} subscribers after 20 s")
        time.sleep(0.05)


def _publish_rate(port: int, command: str, size: int, messages: int) -> float:
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", "4", "-P", "16", "-n", str(messages), "-q",
         command, "bus", "x" * size],
        capture_output=True, text=True, check=True, timeout=TIMEOUT).stdout
    # "SPUBLISH bus xxx...: 123456.79 requests per second, p50=..." (last figure line)
    line = [x for x in out.replace("\r", "\n").splitlines() if "requests per second" in x][-1]
    return float(line.split(":")[-1].split("requests")[0].replace(",", "").strip())


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
                try:
                    server.start()
                    procs = _subscribers(server.port, sub, args.subscribers)
                    started = time.monotonic()
                    _publish_rate(server.port, pub, size, args.messages)
                    # until every subscriber has been written everything (none cut for a full
                    # output buffer): deliveries, not a backlog
                    deadline = started + TIMEOUT
                    while not _drained(server.port) and time.monotonic() < deadline:
                        time.sleep(0.01)
                    elapsed = time.monotonic() - started
                    if _listening(server.port, sub) != args.subscribers or not _drained(server.port):
                        raise RuntimeError("a subscriber was cut or did not get every message")
                    rates.append(args.messages * args.subscribers / elapsed)
                finally:
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
