"""A client that stops reading, among 200 that read, on a real gevent server (tests/flask/stream_app.py):
the readers get every message, the slow one is cut with 1013 "slow consumer", memory stays
bounded."""

from __future__ import annotations

import base64
import json
import os
import selectors
import socket
import sys
import threading
import time
from pathlib import Path

import websocket

from testkit.closing import closed_after_test, ws_connect
from testkit.frames import masked, parse
from testkit.polling import wait_until
from testkit.processes import rss_kb
from testkit.redis_server import free_port
from tests.flask.procs import Server, Servers

READERS = 200
MESSAGES = 150
SIZE = 32 * 1024


def stalled_client(server: Server) -> socket.socket:
    """Completes the handshake with a tiny receive buffer, then never reads again."""
    sock = closed_after_test(socket.socket())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws?token=slow HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                  f"Origin: http://127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "handshake refused"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(masked(0x1, json.dumps({"op": "join"}).encode()))
    return sock


def read_close_code(sock: socket.socket, timeout: float = 20.0) -> int:
    """Read (now at last) everything the server sent and return the close frame's code."""
    sock.settimeout(timeout)
    buf = b""
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
    code = None
    frames, used = parse(buf)  # the handshake answer was read already
    for op, payload in frames:
        if op == 8:
            code = int.from_bytes(payload[:2], "big")
            assert payload[2:] == b"slow consumer"
    assert code is not None, (f"no close frame: {len(buf)} bytes, {len(frames)} frames, "
                              f"ends {'mid-frame' if used < len(buf) else 'on a frame boundary'}")
    return code


def after_notices(ws: websocket.WebSocket, until_join_of: str | None = None) -> str:
    """The next frame that is not a room notice (``user-joined`` of the others, in JSON); with
    ``until_join_of``, read up to that user's join notice and return ``""``."""
    for _ in range(10_000):  # up to one notice per other client of the room
        text: str = ws.recv()
        if not text.startswith('{"type":"user-'):
            assert until_join_of is None, f"{text[:40]!r} before {until_join_of}'s join notice"
            return text
        if until_join_of is not None and json.loads(text)["userId"] == until_join_of:
            return ""
    raise AssertionError("only room notices")


def test_a_client_that_stops_reading_is_cut_and_the_others_get_everything(servers: Servers) -> None:
    port = free_port()
    a = servers._start(f"stream-{port}", [sys.executable, "-m", "tests.flask.stream_app", str(port)],
                       port, {"DCM_SEND_QUEUE_MAX_BYTES": str(256 * 1024)})
    readers = [ws_connect(a.ws_url(f"?token=r{i}"), timeout=10,
                                           origin=f"http://127.0.0.1:{a.port}",
                                           skip_utf8_validation=True) for i in range(READERS)]
    for r in readers:
        r.send(json.dumps({"op": "join"}))
    for r in readers:
        assert after_notices(r) == "joined"
    slow = stalled_client(a)
    for r in readers:  # every reader has read the room's join notices, the slow one's last
        assert after_notices(r, until_join_of="slow") == ""
    time.sleep(0.3)
    rss_before = rss_kb(a.proc.pid)
    got = {id(r): 0 for r in readers}
    notices: list[dict[str, str]] = []
    codes: list[int] = []

    def watch_then_read() -> None:
        """Once the server dropped the slow client, read its socket at last (within the
        server's grace period for handing over the close frame)."""
        end = time.monotonic() + 60
        while a.health()["stats"]["local_connections"] > READERS and time.monotonic() < end:
            time.sleep(0.05)
        codes.append(read_close_code(slow))

    slow_reader = threading.Thread(target=watch_then_read, daemon=True)
    readers[0].send(json.dumps({"op": "blast", "n": MESSAGES, "size": SIZE}))
    slow_reader.start()
    sel = selectors.DefaultSelector()
    for r in readers:
        sel.register(r.sock, selectors.EVENT_READ, r)
    deadline = time.monotonic() + 90
    while min(got.values()) < MESSAGES and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            r = key.data
            text = r.recv()
            if text.startswith("{"):  # the room is told the slow one joined, and left
                notice = json.loads(text)
                if notice["type"] != "user-joined":
                    notices.append(notice)
                continue
            assert int(text[:6]) == got[id(r)]  # in order, none lost, none twice
            got[id(r)] += 1
    assert sorted(set(got.values())) == [MESSAGES]  # every reader got every message
    slow_reader.join(30)
    assert codes == [1013]
    assert {(n["type"], n["userId"], n["reason"]) for n in notices} == {
        ("user-disconnected", "slow", "removed")}
    assert a.health()["stats"]["local_connections"] == READERS
    # the slow client's backlog (MESSAGES x SIZE = 4.8 MB) was not kept
    assert rss_kb(a.proc.pid) - rss_before < 3_000


def test_pongs_go_out_between_messages_never_inside_one(servers: Servers) -> None:
    # a client that reads slowly has an outbox with a writer busy on big frames; the pongs to
    # its pings must not land in the middle of one
    port = free_port()
    a = servers._start(f"stream-{port}", [sys.executable, "-m", "tests.flask.stream_app", str(port)],
                       port)
    sender, pinger = (ws_connect(a.ws_url(f"?token={u}"), timeout=10,
                                                  origin=f"http://127.0.0.1:{a.port}",
                                                  skip_utf8_validation=True) for u in ("s", "p"))
    for c in (sender, pinger):
        c.send(json.dumps({"op": "join"}))
        assert after_notices(c) == "joined"
    sender.send(json.dumps({"op": "blast", "n": 60, "size": SIZE}))
    texts: list[bytes] = []
    pongs: list[bytes] = []
    for k in range(20):
        pinger.ping(f"p{k}")
    deadline = time.monotonic() + 30
    while (len(texts) < 60 or pongs[-1:] != [b"p19"]) and time.monotonic() < deadline:
        frame = pinger.recv_data_frame(control_frame=True)[1]
        if frame.opcode == websocket.ABNF.OPCODE_PONG:
            pongs.append(frame.data)
        elif frame.opcode == websocket.ABNF.OPCODE_TEXT:
            texts.append(frame.data[:6])
            time.sleep(0.005)  # read slowly: the server's writer stays busy
    assert texts == [f"{i:06d}".encode() for i in range(60)]
    assert 1 <= len(pongs) <= 20 and pongs[-1] == b"p19"  # the latest ping is answered


def _server_sockets(server_port: int, client_ports: set[int]) -> list[tuple[int, int]]:
    """``(client port, bytes waiting to be sent)`` of each of the server's TCP sockets to
    one of ``client_ports`` (``/proc/net/tcp``: the kernel's view, whatever the server holds)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) in client_ports:
            found.append((int(remote.split(":")[1], 16), int(queues.split(":")[0], 16)))
    return found


def test_cut_clients_that_never_read_leave_nothing_behind_after_the_grace_period(
        servers: Servers) -> None:
    # three clients join and never read; a broadcast stream overflows their outboxes, they are
    # cut (1013). They do not read the close frame either: once the grace period (5 s) is over
    # the server holds neither their sockets nor the megabytes queued in the kernel for them
    port = free_port()
    a = servers._start(f"stream-{port}", [sys.executable, "-m", "tests.flask.stream_app", str(port)],
                       port, {"DCM_SEND_QUEUE_MAX_BYTES": str(256 * 1024)})
    reader = ws_connect(a.ws_url("?token=reader"), timeout=10, origin=f"http://127.0.0.1:{a.port}",
                        skip_utf8_validation=True)
    reader.send(json.dumps({"op": "join"}))
    assert after_notices(reader) == "joined"
    stalled = [stalled_client(a) for _ in range(3)]
    ports = {s.getsockname()[1] for s in stalled}
    wait_until(lambda: a.health()["stats"]["local_connections"] == 4)
    reader.send(json.dumps({"op": "blast", "n": 100, "size": SIZE}))
    got = 0
    while got < 100:  # the reader takes everything (and the notices of the three leaving)
        text = reader.recv()
        if not text.startswith("{"):
            assert int(text[:6]) == got
            got += 1
    wait_until(lambda: a.health()["stats"]["local_connections"] == 1, timeout=30)
    cut_at = time.monotonic()
    assert sum(q for _, q in _server_sockets(a.port, ports)) > 100_000  # what they did not take
    wait_until(lambda: not _server_sockets(a.port, ports), timeout=15)
    assert time.monotonic() - cut_at < 5.0 + 5  # the grace period, and a margin


def test_a_ping_flood_from_a_client_that_never_reads_stays_small(servers: Servers) -> None:
    # the rate limit is off; 200,000 pings (26 MB) from a client that reads nothing: at most
    # one pong waits in its outbox, so the server's memory does not grow with the flood
    port = free_port()
    a = servers._start(f"stream-{port}", [sys.executable, "-m", "tests.flask.stream_app", str(port)],
                       port, {"DCM_RATE_LIMIT": "0"})
    pinger = stalled_client(a)
    time.sleep(0.3)  # the server settles after the handshake (a measurement's baseline)
    before = rss_kb(a.proc.pid)
    ping = masked(0x9, b"p" * 125)
    pinger.settimeout(60)
    for _ in range(20):  # bounded: 200,000 pings
        pinger.sendall(ping * 10_000)
    wait_until(lambda: a.health()["stats"]["local_connections"] == 1)  # still served
    grown = rss_kb(a.proc.pid) - before
    assert grown < 8_000, f"server grew by {grown} KB"
