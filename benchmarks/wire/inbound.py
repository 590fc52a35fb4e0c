"""``python -m benchmarks.wire.inbound [--compare REV ...] [--clients 20] [--messages 500]
[--listeners 1] [--window 400] [--runs 5]``: what reading clients' messages costs a server,
with this checkout's WebSocket wire and with older commits', in the same run.

Chat servers (examples/chat/app.py run as a script: gevent.pywsgi with ``DCMWebSocketHandler``;
see ``benchmarks/wire/chat_server.py``), one run from this checkout and one from each
``git archive REV`` unpacked in a temporary folder (default ``10e574e``: the frame reader that
read off gevent-websocket's WebSocket), each with its own key prefix on one Redis of the
benchmark's own, the rate limit off.

A run: ``--listeners`` clients join a new room; ``--clients`` other clients write
``--messages`` "say" messages each into it (masked text frames of about 120 bytes), in turn,
10 at a time, at most ``--window`` in flight; it ends when every listener has every message.
(All at once, a server greenlet whose socket holds many messages goes on without yielding and
keeps the Redis connection's lock from the others past its 2 s timeout.) Figures, medians of
``--runs`` runs (the servers take turns):

- inbound messages per second: messages over the time from the first write to the last
  delivery (each message is also published to Redis and delivered: the work a chat message
  really costs);
- server CPU per inbound message: the server process's user + system time over the run
  (``/proc/<pid>/stat``), in microseconds.

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from socket import create_connection, socket

from testkit.frames import masked, parse, split

from ..harness import old_checkout
from .chat_server import ROOT, ChatServer, bench_setup, take_turns

DEADLINE = 120.0  # seconds any one run may take
TEXT = "x" * 80
CHUNK = 10  # messages a client writes at once
HERE = "this checkout"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Client:
    """A raw WebSocket client: handshake, welcome read, then frames as the benchmark says."""

    def __init__(self, port: int, token: str, offer: str | None = None) -> None:
        self.sock: socket = create_connection(("127.0.0.1", port), timeout=DEADLINE)
        key = base64.b64encode(os.urandom(16)).decode()
        extensions = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
        self.sock.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"{extensions}\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("handshake refused")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {head[:80]!r}")
        self.head = head.decode("latin-1")
        self.buf = bytearray(rest)
        self.received = 0  # bytes read after the welcome
        self.next_text()  # the welcome

    def texts(self) -> list[bytes]:
        """The text frames one read completes (at least one read)."""
        return [payload for first, payload in self.frames() if first & 0x0F == 0x1]

    def frames(self) -> list[tuple[int, bytes]]:
        """The frames one read completes (at least one read): (first byte, payload) each."""
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            raise RuntimeError("the server closed the socket")
        self.received += len(chunk)
        self.buf += chunk
        frames, used = split(self.buf)
        del self.buf[:used]
        return frames

    def next_text(self) -> bytes:
        frames, used = parse(self.buf)
        while not frames:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise RuntimeError("the server closed the socket")
            self.buf += chunk
            frames, used = parse(self.buf)
        del self.buf[:used]  # one frame at a time is all the setup needs
        return frames[0][1]

    def say(self, room: str, count: int) -> bytes:
        """``count`` "say" messages into ``room``, as one client writes them."""
        frame = masked(0x1, json.dumps({"op": "say", "room": room, "text": TEXT}).encode())
        return frame * count

    def close(self) -> None:
        self.sock.close()


def drive(ears: list[Client], listen: Callable[[Client, bool], None],
          speak: Callable[[float], None], done: list[float]) -> float:
    """One thread per listener (``listen(ear, first)``: the first one tells how far it got;
    each appends to ``done`` when it has everything), then the writer (``speak(started)``);
    the time the writer started. ``RuntimeError`` if not every listener is done within
    `DEADLINE`."""
    readers = [threading.Thread(target=listen, args=(e, i == 0), daemon=True)
               for i, e in enumerate(ears)]
    for t in readers:
        t.start()
    started = time.monotonic()
    writer = threading.Thread(target=speak, args=(started,), daemon=True)
    writer.start()
    for t in [writer, *readers]:
        t.join(max(0.0, started + DEADLINE - time.monotonic()))
    if len(done) != len(ears):
        raise RuntimeError(f"not every message arrived within {DEADLINE:.0f} s")
    return started


@dataclass(frozen=True)
class Figures:
    per_second: float
    cpu_us: float


def one_run(port: int, pid: int, clients: int, messages: int, listeners: int,
            window: int) -> Figures:
    room = f"r{uuid.uuid4().hex[:8]}"
    opened: list[Client] = []
    try:
        ears = [Client(port, f"l{i}{room}") for i in range(listeners)]
        opened += ears
        for ear in ears:
            ear.sock.sendall(masked(0x1, json.dumps({"op": "join", "room": room}).encode()))
            while b'"joined"' not in ear.next_text():
                pass
        mouths = [Client(port, f"s{i}{room}") for i in range(clients)]
        opened += mouths
        time.sleep(0.5)  # the server settles after the connections and joins
        expected = clients * messages
        done: list[float] = []
        heard = [0]  # messages the first listener has

        def listen(ear: Client, first: bool) -> None:
            got = 0
            while got < expected:
                got += sum(1 for text in ear.texts() if b'"type":"message"' in text)
                if first:
                    heard[0] = got
            done.append(time.monotonic())

        def speak(started: float) -> None:
            """Round robin: each client in turn writes ``CHUNK`` messages, at most ``window``
            in flight (written, not yet heard). A greenlet's socket then never holds many: a
            server greenlet that has messages waiting goes on without yielding, and would keep
            the Redis connection's lock from the others for as long."""
            chunks = [m.say(room, CHUNK) for m in mouths]
            sent = 0
            while sent < expected:
                for mouth, chunk in zip(mouths, chunks, strict=True):
                    while sent - heard[0] >= window:
                        if time.monotonic() > started + DEADLINE:
                            return
                        time.sleep(0.0002)
                    mouth.sock.sendall(chunk)
                    sent += CHUNK

        cpu = cpu_seconds(pid)
        started = drive(ears, listen, speak, done)
        used = cpu_seconds(pid) - cpu
        return Figures(expected / (max(done) - started), used / expected * 1e6)
    finally:
        for c in opened:
            c.close()


def start_server(name: str, redis_url: str, logs: Path, root: Path) -> ChatServer:
    """The chat example of ``root`` with its own key prefix and the rate limit off."""
    return ChatServer(name, redis_url, f"{name}{uuid.uuid4().hex[:6]}:", logs / f"{name}.log", root,
                      DCM_RATE_LIMIT="0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wire.inbound", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", nargs="+", default=["10e574e"], metavar="REV",
                        help="the commits to compare this checkout with")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500, help="per client and run")
    parser.add_argument("--listeners", type=int, default=1)
    parser.add_argument("--window", type=int, default=400, help="messages in flight, at most")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3 (medians of several runs)")
    if args.messages % CHUNK:
        parser.error(f"--messages must be a multiple of {CHUNK}")
    with bench_setup("dcm-wire-bench-") as (redis_url, tmp, servers):
        for rev in args.compare:
            root = tmp / rev
            root.mkdir()
            old_checkout(rev, root)
            servers[rev] = start_server(rev, redis_url, tmp, root)
        servers[HERE] = start_server("this", redis_url, tmp, ROOT)
        print(f"wire inbound: {args.clients} clients x {args.messages} messages into a room with "
              f"{args.listeners} listener(s), {args.runs} runs each, the servers taking turns; "
              f"{os.cpu_count()} cores")
        figures = take_turns(
            servers, args.runs,
            lambda server: one_run(server.port, server.proc.pid, args.clients, args.messages,
                                   args.listeners, args.window),
            lambda got: f"{got.per_second:8,.0f} msg/s, {got.cpu_us:6.1f} us CPU/msg")
    print(report(figures))
    return 0


def report(figures: dict[str, list[Figures]]) -> str:
    rate = {k: statistics.median([f.per_second for f in v]) for k, v in figures.items()}
    cpu = {k: statistics.median([f.cpu_us for f in v]) for k, v in figures.items()}
    lines = [f"  {'server':<16} {'msg/s (median)':>16} {'CPU us/msg (median)':>22}"]
    for name in figures:
        lines.append(f"  {name:<16} {rate[name]:>16,.0f} {cpu[name]:>22.1f}")
    for name in figures:
        if name != HERE:
            lines.append(f"  {HERE} vs {name}: throughput {rate[HERE] / rate[name]:.3f}x, "
                         f"CPU per message {cpu[HERE] / cpu[name]:.3f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
