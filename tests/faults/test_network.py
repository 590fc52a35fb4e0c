"""Network faults between one server and Redis: manager A talks to Redis through a TCP proxy,
manager B directly. A cut link, a slow link, a link that stalls without closing, a pub/sub
connection gone deaf, and Redis killing the pub/sub connections. While A cannot reach Redis its
calls fail fast with BackendUnavailableError and its own sockets still get its own broadcasts;
afterwards it is registered again, its state is back in Redis and delivery works both ways."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from dcm_sync import BackendUnavailableError, DCMError, DistributedConnectionManager
from dcm_sync.backends.redis_keys import KeyLayout, unpack_record
from testkit.keys import server_connection_ids
from testkit.polling import wait_until
from testkit.proxy import TcpProxy
from testkit.recording import RecordingSocket, connect, deliver_until, json_frames, settle, until_reached
from testkit.redis_server import RedisServer
from tests.faults.conftest import Make

REDIS_TIMEOUT = 1.0
BOUND = REDIS_TIMEOUT + 1.5  # "within about redis_timeout", with room for scheduling
PROBES = dict(probe_interval=0.5, probe_timeout=0.5)


def timed_failure(what: str, call: Callable[[], object]) -> float:
    """Run ``call``, which must raise BackendUnavailableError; how long it took."""
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as info:
        call()
    assert isinstance(info.value, DCMError)
    took = time.monotonic() - started
    print(f"{what} failed in {took:.2f}s")
    return took


def departures(ws: RecordingSocket) -> list[dict[str, Any]]:
    return [m for m in json_frames(ws) if m.get("type") == "user-disconnected"]


def server_ids(mgr: DistributedConnectionManager) -> list[str]:
    return [s.server_id for s in mgr.get_active_servers()]


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def assert_registered(r: Any, prefix: str, mgr: DistributedConnectionManager,
                      rooms: dict[str, set[str]]) -> None:
    """Redis holds ``mgr`` and its connections with ``rooms`` ({connection id: rooms})."""
    keys = KeyLayout(prefix)
    assert r.exists(keys.server(mgr.server_id))
    assert server_connection_ids(r, prefix, mgr.server_id) == set(rooms)
    for cid, joined in rooms.items():
        record = unpack_record(r.hget(keys.connection(cid), cid))
        assert record is not None and record[1] == mgr.server_id
        for room in joined:
            assert r.sismember(keys.room(room), cid)


def wait_registered(a: DistributedConnectionManager, b: DistributedConnectionManager,
                    connections: int, timeout: float = 10.0) -> None:
    """Until B sees both servers (each once) and ``connections`` connections."""
    def ok() -> bool:
        stats = b.get_distributed_stats()
        return (sorted(server_ids(b)) == sorted([a.server_id, b.server_id])
                and stats.total_connections == connections)
    wait_until(ok, timeout=timeout, interval=0.05)


# ---------------------------------------------------------------------------------------- tests
def test_cut_mid_stream_fails_fast_then_everything_comes_back(own_redis: RedisServer, proxy: TcpProxy,
                                                              make: Make, prefix: str) -> None:
    a = make(proxy.url, redis_timeout=REDIS_TIMEOUT)
    b = make(own_redis.url, redis_timeout=REDIS_TIMEOUT)
    a1, wa1 = connect(a, "ann", "stream")
    a2, wa2 = connect(a, "amy", "stream", "side")
    b1, wb1 = connect(b, "bob", "stream")
    errors: list[BaseException] = []
    sent_at: dict[int, float] = {}
    stop = threading.Event()

    def stream() -> None:  # B: a numbered message every 50 ms, at most 400 of them (20 s)
        for seq in range(400):
            if stop.is_set():
                return
            sent_at[seq] = time.monotonic()
            try:
                b.broadcast_to_room("stream", {"seq": seq})
            except Exception as exc:
                errors.append(exc)
            time.sleep(0.05)

    def seqs(ws: RecordingSocket) -> list[int]:
        return [m["seq"] for m in json_frames(ws) if "seq" in m]

    streamer = threading.Thread(target=stream, name="test-stream", daemon=True)
    streamer.start()
    try:
        time.sleep(2.0)
        assert len(seqs(wa1)) >= 20  # the stream reaches A before the cut
        proxy.cut()
        cut_at = time.monotonic()

        # A's calls that need Redis fail fast; its own sockets still get its own broadcasts
        assert timed_failure("broadcast", lambda: a.broadcast_to_room("stream", "from A while cut")) < BOUND
        assert "from A while cut" in wa1.frames and "from A while cut" in wa2.frames
        assert timed_failure("direct", lambda: a.send_to_connection(b1, "direct while cut")) < BOUND
        assert timed_failure("stats", a.get_distributed_stats) < BOUND
        assert a.send_to_connection(a2, "local direct") is True  # no Redis needed
        # B declares A dead and tells the room
        notice = wait_until(lambda: departures(wb1), timeout=4)[0]
        assert (notice["connectionId"], notice["reason"]) in {(a1, "server-failure"),
                                                               (a2, "server-failure")}
        before_restore = len(seqs(wa1))
        time.sleep(max(0.0, cut_at + 5.0 - time.monotonic()))
        assert len(seqs(wa1)) == before_restore  # nothing reached A during the cut
        proxy.restore()
        restored_at = time.monotonic()

        # B -> A flows again, without restarting A
        wait_until(lambda: any(sent_at.get(s, 0) > restored_at for s in seqs(wa1)), timeout=6)
        resumed_after = time.monotonic() - restored_at
        time.sleep(max(1.0, cut_at + 8.0 - time.monotonic()))  # the stream goes on: ~10 s in all
    finally:
        stop.set()
        streamer.join(5)
    assert not streamer.is_alive() and errors == []
    last = seqs(wb1)[-1]
    wait_until(lambda: last in seqs(wa1), timeout=3)  # the stream's end has reached A too
    wait_registered(a, b, connections=3)
    stats = b.get_distributed_stats()
    assert (stats.active_servers, stats.total_connections, stats.total_rooms) == (2, 3, 2)
    assert server_ids(b).count(a.server_id) == 1
    r, keys = own_redis.client(), KeyLayout(prefix)
    assert {text(s) for s in r.smembers(keys.servers_index)} == {a.server_id, b.server_id}
    assert_registered(r, prefix, a, {a1: {"stream"}, a2: {"stream", "side"}})
    assert {text(c) for c in r.smembers(keys.room("stream"))} == {a1, a2, b1}
    assert a.metrics()["reconnects"] >= 1
    got_a, got_b = seqs(wa1), seqs(wb1)
    assert got_a == sorted(set(got_a)), "A's member got a message twice or out of order"
    after = [seq for seq in got_a if sent_at[seq] > restored_at]
    assert after == list(range(after[0], got_b[-1] + 1)), "A's member missed messages after recovery"
    assert got_b == list(range(len(got_b))), "B's member missed or repeated a message"
    assert wb1.frames.count("direct while cut") == 0  # a failed call sends nothing later
    # both directions after the fault
    deliver_until(a, "side", wa2)
    deliver_until(a, "stream", wb1)
    assert a.send_to_connection(b1, "direct after") is True
    wait_until(lambda: "direct after" in wb1.frames)
    print(f"B->A resumed {resumed_after:.2f}s after restore")


def test_slow_link_everything_works(own_redis: RedisServer, proxy: TcpProxy, make: Make,
                                    prefix: str) -> None:
    proxy.latency(0.1)  # each way: a 200 ms round trip per command
    slow = dict(redis_timeout=2.0, heartbeat_interval=0.5, heartbeat_ttl=3.0, cleanup_interval=1.0)
    a = make(proxy.url, **slow)
    b = make(own_redis.url, **slow)
    started = time.monotonic()
    a1, wa1 = connect(a, "ann", "lobby")
    assert time.monotonic() - started >= 0.2  # the link really is slow
    b1, wb1 = connect(b, "bob", "lobby")

    a.broadcast_to_room("lobby", "hello from A")
    wait_until(lambda: "hello from A" in wb1.frames, timeout=3)
    assert wa1.frames.count("hello from A") == 1
    b.broadcast_to_room("lobby", "hello from B")
    wait_until(lambda: "hello from B" in wa1.frames, timeout=3)
    assert a.send_to_connection(b1, "direct A->B") is True
    assert b.send_to_connection(a1, "direct B->A") is True
    wait_until(lambda: "direct A->B" in wb1.frames and "direct B->A" in wa1.frames, timeout=3)
    a.join_room(b1, "games")  # a room change of B's connection, routed from A
    until_reached(a, "games", wb1)  # B subscribes when it reads the routed join
    a.broadcast_to_room("games", "games from A")
    wait_until(lambda: "games from A" in wb1.frames, timeout=3)

    for mgr in (a, b):
        stats = mgr.get_distributed_stats()
        assert (stats.active_servers, stats.total_connections, stats.total_rooms) == (2, 2, 2)
    # slow heartbeats for longer than heartbeat_ttl: nobody is declared dead
    time.sleep(max(0.0, started + 3.5 - time.monotonic()))
    assert sorted(server_ids(b)) == sorted([a.server_id, b.server_id])
    assert departures(wa1) == [] and departures(wb1) == []
    assert a.metrics()["probes_failed"] == 0 and a.metrics()["reconnects"] == 0
    for frames in (wa1.frames, wb1.frames):
        assert len(frames) == len(set(frames))  # nothing twice
    assert_registered(own_redis.client(), prefix, a, {a1: {"lobby"}})


def test_stalled_link_fails_fast_then_recovers(own_redis: RedisServer, proxy: TcpProxy, make: Make,
                                               prefix: str) -> None:
    a = make(proxy.url, redis_timeout=REDIS_TIMEOUT, **PROBES)
    b = make(own_redis.url, redis_timeout=REDIS_TIMEOUT)
    a1, wa1 = connect(a, "ann", "lobby")
    b1, wb1 = connect(b, "bob", "lobby")
    deliver_until(b, "lobby", wa1)

    proxy.stall()  # every connection stays open, nothing goes through
    stalled_at = time.monotonic()
    try:
        took = timed_failure("broadcast", lambda: a.broadcast_to_room("lobby", "from A while stalled"))
        assert took < BOUND
        assert "from A while stalled" in wa1.frames
        assert timed_failure("direct", lambda: a.send_to_connection(b1, "direct while stalled")) < BOUND
        assert timed_failure("join", lambda: a.join_room(a1, "games")) < BOUND
        # longer than redis_timeout and than a probe's interval + timeout
        time.sleep(max(0.0, stalled_at + 3.0 - time.monotonic()))
    finally:
        proxy.resume()

    wait_registered(a, b, connections=2)
    a.broadcast_to_room("lobby", "from A after")  # no error once A is back
    wait_until(lambda: "from A after" in wb1.frames, timeout=3)
    deliver_until(b, "lobby", wa1)
    assert a.send_to_connection(b1, "direct after") is True
    wait_until(lambda: "direct after" in wb1.frames, timeout=3)
    assert_registered(own_redis.client(), prefix, a, {a1: {"lobby"}})
    assert a.metrics()["reconnects"] >= 1


def test_deaf_subscription_is_found_by_probes_and_rebuilt(own_redis: RedisServer, proxy: TcpProxy,
                                                          make: Make) -> None:
    a = make(proxy.url, redis_timeout=REDIS_TIMEOUT, **PROBES)
    b = make(own_redis.url, redis_timeout=REDIS_TIMEOUT)
    _, wa1 = connect(a, "ann", "lobby")
    _, wb1 = connect(b, "bob", "lobby")
    deliver_until(b, "lobby", wa1)
    assert a.metrics()["probes_failed"] == 0

    assert proxy.deafen_subscribers() == 1  # A's subscription, and only it, goes deaf
    b.broadcast_to_room("lobby", "lost")
    a.broadcast_to_room("lobby", "A still publishes")  # A's commands still work
    wait_until(lambda: "lost" in wb1.frames and "A still publishes" in wb1.frames, timeout=2)
    assert a.get_distributed_stats().total_connections == 2

    took = deliver_until(b, "lobby", wa1, timeout=10)  # without restarting A
    assert a.metrics()["probes_failed"] >= 1
    assert a.is_ready() and server_ids(b).count(a.server_id) == 1
    assert "lost" not in wa1.frames  # dropped by the deaf link, never replayed
    assert proxy.dropped_bytes > 0
    deliver_until(a, "lobby", wb1)
    print(f"B->A recovered {took:.2f}s after deafening")


def test_redis_killing_pubsub_connections_is_survived(own_redis: RedisServer, proxy: TcpProxy,
                                                      make: Make) -> None:
    a = make(proxy.url, redis_timeout=REDIS_TIMEOUT, **PROBES)
    b = make(own_redis.url, redis_timeout=REDIS_TIMEOUT)
    a1, wa1 = connect(a, "ann", "lobby")
    b1, wb1 = connect(b, "bob", "lobby")
    deliver_until(b, "lobby", wa1)

    killed = own_redis.client().client_kill_filter(_type="pubsub")
    assert killed == 2  # A's subscription (through the proxy) and B's

    deliver_until(b, "lobby", wa1)
    deliver_until(a, "lobby", wb1)
    assert a.metrics()["reconnects"] >= 1 and b.metrics()["reconnects"] >= 1
    assert a.send_to_connection(b1, "direct A->B") is True
    assert b.send_to_connection(a1, "direct B->A") is True
    wait_until(lambda: "direct A->B" in wb1.frames and "direct B->A" in wa1.frames, timeout=3)
    wb1.frames.clear()
    b.broadcast_to_room("lobby", "once")
    wait_until(lambda: "once" in wa1.frames, timeout=3)
    settle("lobby", [b], [wa1, wb1])  # a second copy would have come before the marker
    assert wa1.frames.count("once") == 1 and wb1.frames.count("once") == 1
    stats = b.get_distributed_stats()
    assert (stats.active_servers, stats.total_connections) == (2, 2)
