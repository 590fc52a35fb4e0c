"""``python -m benchmarks.wire.compression [--listeners 50] [--messages 300] [--window 100]
[--runs 3]``: permessage-deflate on and off, in the same run, for room messages of about 1 KB
of JSON.

Two chat servers (examples/chat/app.py as a script: gevent.pywsgi with ``DCMWebSocketHandler``;
see ``benchmarks/wire/chat_server.py``) on one Redis of the benchmark's own, one with
``DCM_COMPRESSION`` on and one with it off, the rate limit off. Every client offers
permessage-deflate as browsers do (``client_max_window_bits``); only the first server agrees.

A run: ``--listeners`` clients join a new room; one more client says ``--messages`` texts into
it, each a different JSON document of about 1 KB (orders with ids, names, prices), at most
``--window`` in flight; it ends when every listener has every message. Figures, medians of
``--runs`` runs (the servers take turns):

- bytes on the wire per delivered message: what the listeners read, frame headers included;
- server CPU per delivered message: the server process's CPU time over the run (the sum of its
  threads' ``/proc`` schedstat), in microseconds, over listeners x messages (it includes taking
  in and publishing each message once, and compressing it once when on);
- deliveries per second.

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
import zlib
from dataclasses import dataclass

from testkit.frames import masked

from ..harness import process_cpu
from .chat_server import ROOT, ChatServer, bench_setup, take_turns
from .inbound import DEADLINE, Client, drive

OFFER = "permessage-deflate; client_max_window_bits"
RSV1 = 0x40
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa"]


def document(n: int, rng: random.Random) -> str:
    """About 1 KB of JSON, different each time, as an app's messages are."""
    items = [{"sku": f"{rng.choice(WORDS)}-{rng.randrange(10_000):04d}",
              "name": " ".join(rng.choices(WORDS, k=3)),
              "qty": rng.randrange(1, 9), "price": round(rng.uniform(1, 500), 2)}
             for _ in range(13)]
    return json.dumps({"order": n, "customer": {"id": rng.randrange(10**6), "name": rng.choice(WORDS)},
                       "status": rng.choice(["new", "paid", "shipped"]), "items": items},
                      separators=(",", ":"))


def is_message(first: int, payload: bytes) -> bool:
    if first & RSV1:
        payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
    return first & 0x0F == 0x1 and b'"type":"message"' in payload


@dataclass(frozen=True)
class Figures:
    bytes_per_message: float
    cpu_us: float
    per_second: float


def one_run(server: ChatServer, listeners: int, texts: list[str], window: int) -> Figures:
    room = f"r{uuid.uuid4().hex[:8]}"
    opened: list[Client] = []
    try:
        ears = [Client(server.port, f"l{i}{room}", OFFER) for i in range(listeners)]
        opened += ears
        for ear in ears:
            ear.sock.sendall(masked(0x1, json.dumps({"op": "join", "room": room}).encode()))
            while b'"joined"' not in ear.next_text():
                pass
        mouth = Client(server.port, f"s{room}")
        opened.append(mouth)
        time.sleep(0.5)  # the server settles after the connections and joins
        for ear in ears:
            ear.received = 0
        expected = len(texts)
        done: list[float] = []
        heard = [0]  # messages the first listener has

        def listen(ear: Client, first: bool) -> None:
            got = 0
            while got < expected:
                got += sum(1 for f, p in ear.frames() if is_message(f, p))
                if first:
                    heard[0] = got
            done.append(time.monotonic())

        def speak(started: float) -> None:
            for sent, text in enumerate(texts):
                while sent - heard[0] >= window:
                    if time.monotonic() > started + DEADLINE:
                        return
                    time.sleep(0.0002)
                mouth.sock.sendall(masked(0x1, json.dumps({"op": "say", "room": room,
                                                           "text": text}).encode()))

        cpu = process_cpu(server.proc.pid) or 0.0
        started = drive(ears, listen, speak, done)
        used = (process_cpu(server.proc.pid) or 0.0) - cpu
        deliveries = expected * listeners
        return Figures(sum(e.received for e in ears) / deliveries, used / deliveries * 1e6,
                       deliveries / (max(done) - started))
    finally:
        for c in opened:
            c.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wire.compression", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listeners", type=int, default=50)
    parser.add_argument("--messages", type=int, default=300, help="per run")
    parser.add_argument("--window", type=int, default=100, help="messages in flight, at most")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3 (medians of several runs)")
    rng = random.Random(7)
    texts = [document(n, rng) for n in range(args.messages)]
    with bench_setup("dcm-deflate-bench-") as (redis_url, tmp, servers):
        for name, on in (("on", "1"), ("off", "0")):
            servers[name] = ChatServer(name, redis_url, f"{name}{uuid.uuid4().hex[:6]}:",
                                       tmp / f"{name}.log", ROOT, DCM_RATE_LIMIT="0",
                                       DCM_COMPRESSION=on)
        size = statistics.mean(len(t) for t in texts)
        print(f"compression: {args.listeners} listeners x {args.messages} room messages of "
              f"{size:,.0f} B of JSON, {args.runs} runs each, the servers taking turns; "
              f"{os.cpu_count()} cores")
        figures = take_turns(
            servers, args.runs, lambda server: one_run(server, args.listeners, texts, args.window),
            lambda got: f"{got.bytes_per_message:7,.0f} B/msg {got.cpu_us:6.1f} us CPU/msg "
                        f"{got.per_second:9,.0f} deliveries/s")
    print(report(figures))
    return 0


def report(figures: dict[str, list[Figures]]) -> str:
    def med(name: str, attr: str) -> float:
        return statistics.median(getattr(f, attr) for f in figures[name])

    lines = [f"  {'compression':<12} {'B/msg':>9} {'CPU us/msg':>11} {'deliveries/s':>13}  (medians)"]
    for name in figures:
        lines.append(f"  {name:<12} {med(name, 'bytes_per_message'):>9,.0f} {med(name, 'cpu_us'):>11.1f} "
                     f"{med(name, 'per_second'):>13,.0f}")
    def vs(attr: str) -> str:
        return f"{med('on', attr) / med('off', attr):.3f}x"

    lines.append(f"  on vs off: bytes {vs('bytes_per_message')}, CPU per message {vs('cpu_us')}, "
                 f"throughput {vs('per_second')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
