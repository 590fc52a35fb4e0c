"""Process faults with real server processes: a server paused past its heartbeat TTL, a server
SIGKILLed in the middle of heavy join/leave/broadcast traffic."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

from dcm_sync.backends.redis_keys import KeyLayout, unpack_record
from testkit.chat import ChatClient, ChatServer, is_departure, say_until_received
from testkit.keys import index_servers, indexed_rooms, redis_rooms_naming, room_of_key
from testkit.polling import wait_until
from testkit.redis_server import RedisServer

Launch = Callable[..., list[ChatServer]]
Connect = Callable[[ChatServer, str], ChatClient]


def test_paused_server_is_declared_dead_then_restores_its_open_connections(
        redis_server: RedisServer, prefix: str, launch: Launch, connect: Connect) -> None:
    a, b = launch(redis_server.url, count=2)
    alice, bob = connect(a, "alice"), connect(b, "bob")
    alice.join("lobby")
    bob.join("lobby")
    b_id = bob.server_id
    a.wait_stats(lambda s: s["total_connections"] == 2)

    b.proc.send_signal(signal.SIGSTOP)  # longer than heartbeat_ttl (1 s): A declares B dead
    try:
        notice = alice.wait_for(is_departure(bob.cid, "lobby"), timeout=15)
        assert notice["reason"] == "server-failure"
        a.wait_stats(lambda s: s["active_servers"] == 1 and s["total_connections"] == 1)
        # the server index is the cleanup's last step, after the connections it counts
        wait_until(lambda: b_id not in index_servers(redis_server, prefix))
    finally:
        b.proc.send_signal(signal.SIGCONT)

    # B notices at its next heartbeat that its record is gone and writes itself back, with
    # bob's still-open socket and its rooms; nobody had to reconnect
    a.wait_stats(lambda s: s["active_servers"] == 2 and s["total_connections"] == 2, timeout=15)
    assert not bob.closed.is_set()
    say_until_received(alice, bob, "lobby")
    say_until_received(bob, alice, "lobby")
    r, keys = redis_server.client(), KeyLayout(prefix)
    assert r.smembers(keys.room("lobby")) == {alice.cid.encode(), bob.cid.encode()}
    record = unpack_record(r.hget(keys.connection(bob.cid), bob.cid))
    assert record is not None and record[1] == b_id
    assert alice.direct(bob.cid, "welcome back") is True
    assert index_servers(redis_server, prefix) == {alice.server_id, b_id}


def test_sigkill_during_heavy_traffic_leaves_no_trace(
        redis_server: RedisServer, prefix: str, launch: Launch, connect: Connect) -> None:
    a, b, c = launch(redis_server.url, count=3)
    alice, carol = connect(a, "alice"), connect(c, "carol")
    victims = [connect(b, f"b{i}") for i in range(6)]
    for client in (alice, carol):
        client.join("r0")
    rooms = [f"r{i}" for i in range(4)]
    for i, v in enumerate(victims):
        v.join(rooms[i % len(rooms)])
    b_id = victims[0].server_id
    b_cids = {v.cid for v in victims}
    a.wait_stats(lambda s: s["total_connections"] == 8)

    stop = threading.Event()

    def churn(v: ChatClient, n: int) -> None:  # bounded: 2,000 commands or until stopped
        for k in range(2000):
            if stop.is_set():
                return
            room = rooms[(n + k) % len(rooms)]
            try:
                v.send({"op": "join" if k % 3 else "leave", "room": room})
                v.say(room, "churn", seq=k)
            except Exception:  # the server is gone
                return
            time.sleep(0.002)

    threads = [threading.Thread(target=churn, args=(v, i), daemon=True) for i, v in enumerate(victims)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    b.kill()  # SIGKILL in the middle of it
    stop.set()
    for t in threads:
        t.join(10)

    a.wait_stats(lambda s: s["active_servers"] == 2 and s["total_connections"] == 2, timeout=15)
    r, keys = redis_server.client(), KeyLayout(prefix)

    def traces() -> list[object]:
        found: list[object] = [k for k in (keys.server(b_id), *keys.server_connection_sets(b_id))
                               if r.exists(k)]
        found += [cid for cid in b_cids if r.hexists(keys.connection(cid), cid)]
        found += list(redis_rooms_naming(redis_server, prefix, b_cids).items())
        return found + ([b_id] if b_id in index_servers(redis_server, prefix) else [])

    deadline = time.monotonic() + 15
    while traces() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert traces() == []
    # every room in the room index still has members and every room set is indexed
    indexed = indexed_rooms(r, prefix)
    existing = {room_of_key(k, prefix) for k in r.scan_iter(match=f"{prefix}rooms:*")}
    assert indexed == existing
    # the survivors still talk both ways
    say_until_received(alice, carol, "r0")
    say_until_received(carol, alice, "r0")
    # A and C both saw B die; each departure was announced at most once
    for client in (alice, carol):
        for cid in b_cids:
            assert len(client.matching(is_departure(cid, "r0"))) <= 1, client.frames
