"""The Flask chat example as real server processes with real WebSocket clients."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request

import pytest
import websocket

from dcm_sync.backends.redis_keys import KeyLayout
from testkit.closing import ws_connect
from testkit.frames import masked
from testkit.polling import wait_until
from testkit.redis_server import RedisServer
from tests.flask.procs import Client, Server, Servers

DCM_WORKER = "flask_ext.gunicorn_worker.DCMGeventWebSocketWorker"
STOCK_WORKER = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"


def open_raw(url: str, token: str | None, origin: str | None = None) -> websocket.WebSocket:
    query = f"?token={token}" if token else ""
    return ws_connect(url + query, timeout=10, origin=origin)


def test_pywsgi_two_processes(servers: Servers) -> None:
    a = servers.chat("dcm")
    b = servers.chat("dcm")
    alice, bob = Client(a.ws_url(), "alice"), Client(b.ws_url(), "bob")
    assert alice.server_id != bob.server_id
    alice.join("lobby")
    bob.join("lobby")
    alice.send(op="say", room="lobby", text="hello from A")
    got = bob.recv_until(lambda m: m.get("type") == "message")
    assert (got["from"], got["text"]) == ("alice", "hello from A")
    # an HTTP view on A reaches bob's socket on B
    req = urllib.request.Request(a.url(f"/notify/{bob.id}"), method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.read() == b'{"sent":true}\n'
    assert bob.recv_until(lambda m: m.get("type") == "notification")["text"] == "ping"
    req = urllib.request.Request(a.url("/notify/" + "0" * 32), method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.read() == b'{"sent":false}\n'
    stats = a.health()["stats"]
    assert (stats["active_servers"], stats["total_connections"]) == (2, 2)
    # bob goes away: alice is told, reason "removed"
    bob.close()
    left = alice.recv_until(lambda m: m.get("type") == "user-disconnected")
    assert (left["userId"], left["reason"]) == ("bob", "removed")


def test_pywsgi_refuses_before_the_handshake(servers: Servers) -> None:
    a = servers.chat("dcm")
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        open_raw(a.ws_url(), None)
    assert err.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        open_raw(a.ws_url(), "bad%21token")
    assert err.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        open_raw(a.ws_url(), "alice", origin="http://evil.example")
    assert err.value.status_code == 403
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(a.url("/ws"), timeout=5)
    assert http_err.value.code == 400
    assert b"WebSocket connections only" in http_err.value.read()
    assert a.health()["stats"]["total_connections"] == 0  # nothing was ever registered


def test_stock_handler_refuses_with_close_codes(servers: Servers) -> None:
    a = servers.chat("stock")
    ws = open_raw(a.ws_url(), None)
    assert _close_code(ws) == 4401
    ws = open_raw(a.ws_url(), "alice", origin="http://evil.example")
    assert _close_code(ws) == 4403
    alice = Client(a.ws_url(), "alice")  # the same app still serves
    alice.join("lobby")
    assert a.health()["stats"]["total_connections"] == 1


def _close_code(ws: websocket.WebSocket) -> int:
    for _ in range(20):
        opcode, frame = ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(frame.data[:2], "big")
    raise AssertionError("no close frame")


def test_sigkill_cleans_up_and_tells_rooms(redis_server: RedisServer, prefix: str, servers: Servers) -> None:
    a = servers.chat("dcm")
    b = servers.chat("dcm")
    alice = Client(a.ws_url(), "alice")
    alice.join("lobby")
    victims = [Client(b.ws_url(), f"bob{i}") for i in range(3)]
    for v in victims:
        v.join("lobby")
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(5)
    seen: set[str] = set()
    while len(seen) < 3:
        msg = alice.recv_until(lambda m: m.get("type") == "user-disconnected")
        assert msg["reason"] == "server-failure"
        seen.add(msg["connectionId"])
    assert seen == {v.id for v in victims}
    wait_until(lambda: a.health()["stats"]["active_servers"] == 1, timeout=10)
    assert a.health()["stats"]["total_connections"] == 1
    r, keys = redis_server.client(), KeyLayout(prefix)
    assert not any(r.hexists(keys.connection(v.id), v.id) for v in victims)
    assert r.smembers(keys.room("lobby")) == {alice.id.encode()}


def test_werkzeug_threaded_server(servers: Servers) -> None:
    a = servers.chat("werkzeug")
    b = servers.chat("dcm")
    alice, bob = Client(a.ws_url(), "alice"), Client(b.ws_url(), "bob")
    alice.join("lobby")
    bob.join("lobby")
    bob.send(op="say", room="lobby", text="to werkzeug")
    assert alice.recv_until(lambda m: m.get("type") == "message")["text"] == "to werkzeug"
    alice.send(op="say", room="lobby", text="from werkzeug")
    assert bob.recv_until(lambda m: m.get("type") == "message"
                          and m["from"] == "alice")["text"] == "from werkzeug"
    ws = open_raw(a.ws_url(), None)
    assert _close_code(ws) == 4401  # Werkzeug's server has no pre-handshake hook
    alice.close()
    assert bob.recv_until(lambda m: m.get("type") == "user-disconnected")["userId"] == "alice"


def test_gunicorn_gthread_worker(servers: Servers) -> None:
    # gunicorn's threaded worker: the extension does the handshake, the view's thread reads
    g = servers.gunicorn("gthread", 1, "--threads", "8")
    alice, bob = Client(g.ws_url(), "alice"), Client(g.ws_url(), "bob")
    alice.join("lobby")
    bob.join("lobby")
    alice.send(op="say", room="lobby", text="from a thread")
    assert bob.recv_until(lambda m: m.get("type") == "message")["text"] == "from a thread"
    bob.ws.send_close(1001, b"page hidden")
    assert _close_code(bob.ws) == 1001
    assert alice.recv_until(lambda m: m.get("type") == "user-disconnected")["userId"] == "bob"
    ws = open_raw(g.ws_url(), None)
    assert _close_code(ws) == 4401  # no pre-handshake hook either


def _clients_on_distinct_workers(server: Server, count: int = 2) -> list[Client]:
    """Connect until ``count`` clients sit on different worker processes (bounded tries)."""
    by_server: dict[str, Client] = {}
    extra: list[Client] = []
    for i in range(100):
        c = Client(server.ws_url(), f"user{i}")
        if c.server_id in by_server:
            extra.append(c)
            time.sleep(0.02)  # a busy machine may keep the other worker from accepting first
        else:
            by_server[c.server_id] = c
        if len(by_server) == count:
            break
    for c in extra:
        c.close()
    assert len(by_server) == count, "all connections landed on one worker"
    return list(by_server.values())


def test_gunicorn_workers(servers: Servers) -> None:
    g = servers.gunicorn(DCM_WORKER)
    a = servers.chat("dcm")
    one, two = _clients_on_distinct_workers(g)
    one.join("lobby")
    two.join("lobby")
    one.send(op="say", room="lobby", text="across workers")
    assert two.recv_until(lambda m: m.get("type") == "message")["text"] == "across workers"
    wait_until(lambda: g.health()["stats"]["active_servers"] == 3, timeout=10)
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        open_raw(g.ws_url(), None)
    assert err.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        open_raw(g.ws_url(), "alice", origin="http://evil.example")
    assert err.value.status_code == 403
    # SIGTERM: the workers close their sockets, the room is told, gunicorn exits 0 in time
    watcher = Client(a.ws_url(), "watcher")
    watcher.join("lobby")
    g.proc.send_signal(signal.SIGTERM)
    assert g.proc.wait(10) == 0
    gone: set[str] = set()
    while len(gone) < 2:
        msg = watcher.recv_until(lambda m: m.get("type") == "user-disconnected")
        assert msg["reason"] == "shutdown"
        gone.add(msg["connectionId"])
    assert gone == {one.id, two.id}
    assert a.health()["stats"]["active_servers"] == 1


def test_client_close_with_reason_gets_a_valid_close_reply(servers: Servers) -> None:
    a = servers.chat("dcm")
    alice = Client(a.ws_url(), "alice")
    alice.ws.send_close(1001, b"page hidden")
    assert _close_code(alice.ws) == 1001
    wait_until(lambda: a.health()["stats"]["total_connections"] == 0)


def test_gunicorn_stock_worker_refuses_with_close_codes(servers: Servers) -> None:
    g = servers.gunicorn(STOCK_WORKER, workers=1)
    assert _close_code(open_raw(g.ws_url(), None)) == 4401
    assert _close_code(open_raw(g.ws_url(), "alice", origin="http://evil.example")) == 4403
    Client(g.ws_url(), "alice").join("lobby")


def test_room_broadcast_to_several_local_sockets(servers: Servers) -> None:
    # three members on one gevent server: the broadcast frame is built once and written to each
    a = servers.chat("dcm")
    members = [Client(a.ws_url(), name) for name in ("ann", "ben", "cid")]
    outsider = Client(a.ws_url(), "dan")
    for c in members:
        c.join("hall")
    texts = ["hi", "é" * 120, "ü" * 2000]  # the three frame header sizes (7-bit, 16-bit)
    for text in texts:
        members[0].send(op="say", room="hall", text=text)
    for c in members:
        got = [c.recv_until(lambda m: m.get("type") == "message")["text"] for _ in texts]
        assert got == texts
    members[1].send(op="say", room="hall", text="after")  # sockets still in step
    assert members[2].recv_until(lambda m: m.get("type") == "message")["text"] == "after"
    outsider.ws.settimeout(0.5)
    with pytest.raises(websocket.WebSocketTimeoutException):
        outsider.recv()


PER_WRITER = 1000


def test_a_burst_from_many_clients_leaves_none_of_them_waiting_for_redis(servers: Servers) -> None:
    # 30 clients each write 100 messages at once (the rate limit off): every view publishes
    # one after another through the server's one Redis connection for messages, and none may
    # keep it from the others (a greenlet with buffered messages takes it again at once)
    a = servers.chat("dcm", DCM_RATE_LIMIT="0", DCM_SEND_QUEUE_MAX_MESSAGES="100000",
                     DCM_SEND_QUEUE_MAX_BYTES=str(64 << 20))
    listener = Client(a.ws_url(), "listener")
    listener.join("burst")
    writers = [Client(a.ws_url(), f"w{i}") for i in range(30)]
    for w in writers:
        w.join("burst")
    listener_joins = 0
    while listener_joins < 30:  # the writers' joins, as the listener sees them
        listener_joins += listener.recv()["type"] == "joined"
    for i, w in enumerate(writers):
        w.ws.sock.sendall(b"".join(masked(0x1, json.dumps(
            {"op": "say", "room": "burst", "text": f"{i}:{k}"}).encode()) for k in range(PER_WRITER)))
    got = 0
    while got < 30 * PER_WRITER:  # every message arrives: no view was closed for want of Redis
        msg = listener.recv()
        assert msg["type"] == "message", msg
        got += 1
    assert a.health()["stats"]["local_connections"] == 31
