"""Redis stalled or gone under in-process managers (a real redis-server of the test's own):
calls that need Redis fail fast with BackendUnavailableError, local delivery goes on, and
everything comes back (once, without leaking threads or Redis connections) when Redis does."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from dcm_sync import BackendUnavailableError, DistributedConnectionManager
from dcm_sync.backends.redis_keys import KeyLayout, unpack_record
from testkit.polling import wait_until
from testkit.recording import connect, deliver_until, json_frames
from testkit.redis_server import RedisServer
from tests.helpers.managers import Managers

REDIS_TIMEOUT = 1.0
BOUND = REDIS_TIMEOUT + 0.5  # what "within about redis_timeout" allows for scheduling
RESTARTS = 5

Make = Callable[..., DistributedConnectionManager]


@pytest.fixture
def make(own_redis: RedisServer, prefix: str) -> Iterator[Make]:
    managers = Managers(prefix, redis_url=own_redis.url, redis_timeout=REDIS_TIMEOUT,
                        probe_interval=0.2, probe_timeout=0.5)
    yield managers
    managers.shutdown_all()


def timed(call: Callable[[], object]) -> float:
    start = time.monotonic()
    with pytest.raises(BackendUnavailableError):
        call()
    return time.monotonic() - start


def test_stalled_redis_fails_calls_fast_and_local_delivery_goes_on(own_redis: RedisServer,
                                                                   make: Make) -> None:
    a, b = make(), make()
    ca, wa = connect(a, "alice", "lobby")
    ca2, wa2 = connect(a, "ann", "lobby")
    cb, wb = connect(b, "bob", "lobby")
    assert own_redis.proc is not None
    own_redis.proc.send_signal(signal.SIGSTOP)  # Redis accepts nothing, answers nothing
    try:
        assert timed(lambda: a.broadcast_to_room("lobby", {"n": 1})) < BOUND
        assert {"n": 1} in wa.messages() and {"n": 1} in wa2.messages()  # local members have it
        assert a.send_to_connection(ca2, "local direct") is True  # no Redis needed
        assert wa2.frames[-1] == "local direct"
        assert timed(lambda: a.send_to_connection(cb, "remote direct")) < BOUND
        # many callers at once: each gives up within the bound, none queues behind the others
        times: list[float] = []
        threads = [threading.Thread(target=lambda: times.append(
            timed(lambda: a.broadcast_to_room("lobby", "x"))), daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10 * BOUND)
        assert len(times) == 8 and max(times) < BOUND, times
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    deliver_until(b, "lobby", wa)
    deliver_until(a, "lobby", wb)
    assert wb.frames.count("remote direct") == 0  # a failed call sent nothing later


def test_redis_restarts_empty_five_times_without_duplicates_or_leaks(own_redis: RedisServer,
                                                                      prefix: str, make: Make) -> None:
    a, b = make(), make()
    ca, wa = connect(a, "alice", "lobby", "games")
    cb, wb = connect(b, "bob", "lobby")
    deliver_until(a, "lobby", wb)
    deliver_until(b, "lobby", wa)
    time.sleep(0.3)  # a few heartbeats, probes and cleanups: every loop has used its connection
    threads_before = set(threading.enumerate())
    clients_before = _clients(own_redis)
    keys = KeyLayout(prefix)
    for _ in range(RESTARTS):
        own_redis.restart()
        r = own_redis.client()
        wait_until(lambda: own_redis.client().scard(keys.room("lobby")) == 2, timeout=15)
        wb.frames.clear()
        wa.frames.clear()
        deliver_until(a, "lobby", wb)
        deliver_until(b, "lobby", wa)
        assert {s.server_id for s in a.get_active_servers()} == {a.server_id, b.server_id}
        assert {x.decode() for x in r.smembers(keys.servers_index)} == {a.server_id, b.server_id}
        assert r.smembers(keys.room("games")) == {ca.encode()}
        assert unpack_record(r.hget(keys.connection(cb), cb)) == ("bob", b.server_id)
    assert a.metrics()["reconnects"] >= 1 and b.metrics()["reconnects"] >= 1
    r.close()  # the test's own connection
    time.sleep(0.3)
    # no thread started during the restarts is still running (threads left over from earlier
    # tests may end meanwhile, so the count alone could also fall)
    started = [t.name for t in threading.enumerate() if t not in threads_before]
    assert started == []
    # the same connections as before the restarts (subscription, publish connection, the
    # pooled ones the loops use: one or two more when the heartbeat, cleanup and probe loops
    # of a manager happen to overlap), none left behind by the reconnects (a leak of one per
    # restart would be 5 or 10 more); none at all after shutdown
    assert _clients(own_redis) <= clients_before + 2
    a.shutdown()
    b.shutdown()
    assert _clients(own_redis) == 0


def _clients(server: RedisServer) -> int:
    """Connections to Redis other than the test's own."""
    with server.client() as r:
        return sum(1 for c in r.client_list() if c["cmd"] != "client|list")


def test_a_burst_of_calls_does_not_keep_its_redis_connections(
        own_redis: RedisServer, make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dcm_sync.maintenance.IDLE_CLOSE_SECONDS", 0.5)
    a = make()
    ids = [connect(a, f"u{i}")[0] for i in range(20)]
    time.sleep(1.0)  # an idle close has run
    baseline = _clients(own_redis)
    start = threading.Barrier(len(ids))
    peak: list[int] = []

    def churn(cid: str) -> None:
        start.wait(5)
        for k in range(30):
            a.join_room(cid, f"room-{k % 3}")
            a.leave_room(cid, f"room-{k % 3}")
        peak.append(_clients(own_redis))

    threads = [threading.Thread(target=churn, args=(cid,), daemon=True) for cid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert max(peak) > baseline  # the burst did open more connections
    wait_until(lambda: _clients(own_redis) <= baseline, timeout=5)


def test_redis_back_empty_writes_the_index_by_user_and_the_counts_by_user_back(
        own_redis: RedisServer, prefix: str, make: Make) -> None:
    a, b = make(room_notices="users"), make(room_notices="users")
    t1, _ = connect(a, "alice", "lobby")
    t2, _ = connect(a, "alice", "lobby")  # alice's second tab
    _, wb = connect(b, "bob", "lobby")
    own_redis.restart()
    keys = KeyLayout(prefix)
    wait_until(lambda: own_redis.client().scard(keys.room("lobby")) == 3, timeout=15)
    deliver_until(a, "lobby", wb)
    assert sorted(b.get_user_connections("alice")) == sorted([t1, t2])
    a.leave_room(t1, "lobby")  # alice still has t2 there: bob is not told
    a.leave_room(t2, "lobby")  # her last: told once
    a.leave_room(t2, "lobby")
    wait_until(lambda: [m for m in json_frames(wb) if m.get("type") == "user-left"])
    deliver_until(a, "lobby", wb)
    assert [(m["type"], m["connectionId"]) for m in json_frames(wb)
            if m.get("type", "").startswith("user-")] == [("user-left", t2)]
