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

import websocket

from tests.flask.procs import Server, Servers
from tests.helpers.closing import closed_after_test, ws_connect
from tests.helpers.processes import rss_kb
from tests.helpers.redis_server import free_port

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
    mask = b"\0\0\0\0"
    payload = json.dumps({"op": "join"}).encode()
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + payload)  # masked, zero mask
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
    frames = 0
    i = 0  # the handshake answer was read already
    while i + 2 <= len(buf):
        op, n, at = buf[i] & 0x0F, buf[i + 1] & 0x7F, i + 2
        if n == 126:
            n, at = int.from_bytes(buf[i + 2:i + 4], "big"), i + 4
        elif n == 127:
            n, at = int.from_bytes(buf[i + 2:i + 10], "big"), i + 10
        if op == 8:
            code = int.from_bytes(buf[at:at + 2], "big")
            assert buf[at + 2:at + n] == b"slow consumer"
        i = at + n
        frames += 1
    assert code is not None, (f"no close frame: {len(buf)} bytes, {frames} frames, "
                              f"ends {'mid-frame' if i > len(buf) else 'on a frame boundary'}")
    return code


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
        assert r.recv() == "joined"
    slow = stalled_client(a)
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
            if text.startswith("{"):  # the room is told the slow one left
                notices.append(json.loads(text))
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
        assert c.recv() == "joined"
    sender.send(json.dumps({"op": "blast", "n": 60, "size": SIZE}))
    texts, pongs = [], 0
    for k in range(20):
        pinger.ping(f"p{k}")
    deadline = time.monotonic() + 30
    while len(texts) < 60 and time.monotonic() < deadline:
        frame = pinger.recv_data_frame(control_frame=True)[1]
        if frame.opcode == websocket.ABNF.OPCODE_PONG:
            pongs += 1
        elif frame.opcode == websocket.ABNF.OPCODE_TEXT:
            texts.append(frame.data[:6])
            time.sleep(0.005)  # read slowly: the server's writer stays busy
    assert texts == [f"{i:06d}".encode() for i in range(60)]
    assert pongs == 20
