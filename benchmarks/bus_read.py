"""``python -m benchmarks.bus_read [--messages 100000] [--runs 5]``: what a subscriber's read
costs the listener, bounded (``get_message(timeout=5.0)``, what the listener does with
redis-py before 8) against blocking (``get_message(timeout=None)``, what it does with redis-py
8), in the same run, without gevent and with messages arriving in pipelined bursts (under
gevent, with messages one at a time, the bounded read costs more: ``delivery_cpu_us`` of
``python -m benchmarks --only direct``).

One ``redis-server`` of its own on a free loopback port; one redis-py PubSub on a connection
with the listener's ``socket_timeout`` (1 s); a thread publishes ``--messages`` 100-byte
messages in pipelines of 1,000 while the main thread reads them all. The figure is messages
received per second; the two styles alternate, ``--runs`` times each. Medians [min-max].
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import redis

from testkit.redis_server import RedisServer

from .harness import span, summarize

BATCH = 1000
DEADLINE = 120.0  # seconds: a run that has not received everything by then fails


def _receive_rate(port: int, messages: int, timeout: float | None) -> float:
    pool = redis.ConnectionPool(host="127.0.0.1", port=port, socket_timeout=1.0, max_connections=1)
    sub = redis.Redis(connection_pool=pool).pubsub()
    publisher = redis.Redis(host="127.0.0.1", port=port)
    try:
        sub.subscribe("bus")
        while sub.get_message(timeout=1.0) is None:  # the subscribe confirmation
            pass

        def publish() -> None:
            for _ in range(messages // BATCH):
                pipe = publisher.pipeline(transaction=False)
                for _ in range(BATCH):
                    pipe.publish("bus", b"x" * 100)
                pipe.execute()

        thread = threading.Thread(target=publish, name="bus-read-publisher")
        received, started = 0, time.perf_counter()
        thread.start()
        while received < messages // BATCH * BATCH:
            if time.perf_counter() - started > DEADLINE:
                raise RuntimeError(f"only {received} of {messages} received in {DEADLINE:.0f} s")
            if sub.get_message(timeout=timeout) is not None:
                received += 1
        elapsed = time.perf_counter() - started
        thread.join(DEADLINE)
        return received / elapsed
    finally:
        sub.close()
        publisher.close()
        pool.disconnect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bus_read", description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    server = RedisServer()
    server.start()
    try:
        rates: dict[str, list[float]] = {"bounded": [], "blocking": []}
        for _ in range(args.runs):
            rates["blocking"].append(_receive_rate(server.port, args.messages, None))
            rates["bounded"].append(_receive_rate(server.port, args.messages, 5.0))
    finally:
        server.cleanup()
    bounded, blocking = summarize(rates["bounded"]), summarize(rates["blocking"])
    print(f"redis-py {redis.__version__}, {args.messages:,} messages of 100 B, {args.runs} runs")
    print(f"  bounded read (timeout=5.0):  {span(bounded, ',.0f', ' msg/s')}")
    print(f"  blocking read (timeout=None): {span(blocking, ',.0f', ' msg/s')}")
    print(f"  bounded / blocking: {bounded['median'] / blocking['median']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
