"""``python -m benchmarks.wire.hostile [--pings 400000] [--fragments 2000000]``: what three hostile
clients cost the chat example (gevent.pywsgi, the project's handler, a Redis of its own):

1. **Cut slow consumers.** Three clients join a room with tiny receive buffers and never read;
   an ``Emitter`` publishes 300 messages of 32 KB to the room. They are cut (1013) and take
   nothing more. Figure: the server's TCP sockets to them and the bytes the kernel still holds
   for them, 10 s after the cut (the grace period is 5 s).
2. **Ping flood.** ``DCM_RATE_LIMIT=0``; one client sends ``--pings`` pings of 125 bytes and
   never reads. Figure: the server's RSS growth, and whether it still answers its health route.
3. **Empty fragments.** ``DCM_RATE_LIMIT=0``; one client starts a text message and sends up to
   ``--fragments`` empty continuation frames. Figure: RSS growth, and the close code if the
   server closed the socket (and after how many fragments).

Loopback only; every loop is bounded in count and time. Run it on two checkouts to compare.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from dcm_sync import Emitter
from testkit.frames import masked
from testkit.polling import wait_until
from testkit.processes import rss_kb
from testkit.redis_server import RedisServer

from .chat_server import ChatServer

DEADLINE = 120.0  # seconds any one phase may take


def _server_sockets(server_port: int, client_ports: set[int]) -> list[int]:
    """Bytes the kernel holds to send, for each server socket to one of ``client_ports``."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if (int(f[1].split(":")[1], 16) == server_port
                and int(f[2].split(":")[1], 16) in client_ports):
            out.append(int(f[4].split(":")[0], 16))
    return out


class Chat(ChatServer):
    """The chat example, and clients that stall."""

    def stalled(self, room: str | None = None) -> socket.socket:
        """A client that completes the handshake with a 4 KB receive buffer, joins ``room``,
        and never reads again."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(DEADLINE)
        sock.connect(("127.0.0.1", self.port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /ws?token=hostile HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            if not chunk:
                raise RuntimeError("handshake refused")
            head += chunk
        if room is not None:
            sock.sendall(masked(0x1, json.dumps({"op": "join", "room": room}).encode()))
        return sock


def connections(chat: Chat) -> int:
    """The server's own count of its connections."""
    return int(chat.health()["stats"]["local_connections"])


def slow_consumers(redis: RedisServer, prefix: str, log: Path) -> str:
    chat = Chat("slow-consumers", redis.url, prefix, log)
    clients: list[socket.socket] = []
    try:
        clients = [chat.stalled("hall") for _ in range(3)]
        ports = {c.getsockname()[1] for c in clients}
        wait_until(lambda: connections(chat) == 3, DEADLINE, "the three clients joined",
                   interval=0.05)
        time.sleep(0.5)  # their joins are done
        with Emitter(redis.url, key_prefix=prefix) as emitter:
            for i in range(300):
                emitter.broadcast_to_room("hall", f"{i:06d}" + "x" * (32 * 1024))
        try:
            wait_until(lambda: connections(chat) == 0, DEADLINE, "the three cut", interval=0.05)
        except AssertionError:
            return "not cut within the deadline"
        held = _server_sockets(chat.port, ports)
        time.sleep(10.0)
        after = _server_sockets(chat.port, ports)
        return (f"at the cut {len(held)} sockets, {sum(held):,} B queued; "
                f"10 s later {len(after)} sockets, {sum(after):,} B queued")
    finally:
        for c in clients:
            c.close()
        chat.stop()


@contextlib.contextmanager
def _flooder(redis: RedisServer, prefix: str, log: Path) -> Iterator[tuple[Chat, socket.socket, int]]:
    """A chat server with the rate limit off, one client that never reads, and the server's RSS
    (KB) once it has settled after the handshake."""
    chat = Chat("flooded", redis.url, prefix, log, DCM_RATE_LIMIT="0")
    client = None
    try:
        client = chat.stalled()
        time.sleep(0.5)
        yield chat, client, rss_kb(chat.proc.pid)
    finally:
        if client is not None:
            client.close()
        chat.stop()


def ping_flood(redis: RedisServer, prefix: str, log: Path, pings: int) -> str:
    with _flooder(redis, prefix, log) as (chat, client, before):
        ping = masked(0x9, b"p" * 125)
        started = time.monotonic()
        for _ in range(pings // 10_000):
            client.sendall(ping * 10_000)
            if time.monotonic() - started > DEADLINE:
                break
        time.sleep(1.0)  # the server reads what is still in its buffer
        grown = rss_kb(chat.proc.pid) - before
        alive = chat.health() is not None
        return (f"{pings:,} pings in {time.monotonic() - started:.1f} s: RSS {grown / 1024:+.1f} MB, "
                f"server {'answers' if alive else 'does not answer'}")


def empty_fragments(redis: RedisServer, prefix: str, log: Path, fragments: int) -> str:
    with _flooder(redis, prefix, log) as (chat, client, before):
        client.sendall(masked(0x1, b"{", fin=False))
        chunk = masked(0x0, b"", fin=False) * 10_000
        sent, started, closed = 0, time.monotonic(), ""
        try:
            while sent < fragments and time.monotonic() - started < DEADLINE:
                client.sendall(chunk)
                sent += 10_000
        except OSError as exc:
            closed = f" (send failed: {exc.strerror})"
        grown = rss_kb(chat.proc.pid) - before
        client.settimeout(5)
        data = b""
        with contextlib.suppress(OSError):  # reset by the server: what arrived is all there is
            while len(data) < 1 << 20:
                got = client.recv(65536)
                if not got:
                    break
                data += got
        at = data.rfind(b"\x88")
        code = int.from_bytes(data[at + 2:at + 4], "big") if at >= 0 else None
        return (f"{sent:,} empty fragments sent{closed}: RSS {grown / 1024:+.1f} MB, "
                f"close code {code if code is not None else 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wire.hostile", description=__doc__)
    parser.add_argument("--pings", type=int, default=400_000)
    parser.add_argument("--fragments", type=int, default=2_000_000)
    parser.add_argument("--logs", default="/tmp", help="where the servers' logs go")
    args = parser.parse_args(argv)
    redis = RedisServer()
    redis.start()
    try:
        logs = Path(args.logs)
        tag = uuid.uuid4().hex[:8]
        print("1. cut slow consumers:", slow_consumers(redis, f"h1{tag}:", logs / f"hostile-{tag}-1.log"))
        print("2. ping flood:        ", ping_flood(redis, f"h2{tag}:", logs / f"hostile-{tag}-2.log",
                                                  args.pings))
        print("3. empty fragments:   ", empty_fragments(redis, f"h3{tag}:",
                                                        logs / f"hostile-{tag}-3.log", args.fragments))
    finally:
        redis.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
