"""The maintenance loops (dcm_sync/maintenance.py) on every backend: failure detection,
cleanup exactly once, stale cleanup, the keepalive (a quiet socket that answers pings stays
connected past stale_connection_timeout; one that stops answering is removed, reason "stale",
within ping_interval + ping_timeout), and shutdown."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import pytest

from dcm_sync import DistributedConnectionManager
from dcm_sync.backends import ConnectionRecord
from dcm_sync.backends.ids import server_tag
from dcm_sync.models import RemovedConnection
from testkit.polling import wait_until
from testkit.recording import RecordingSocket, connect, settle
from tests.helpers.pair_socket import PairSocket

Make = Callable[..., DistributedConnectionManager]


def test_dead_server_is_detected_and_cleaned(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    _, wa = connect(a, "alice", "r1", "r2")
    dead = {connect(b, f"bob{i}", "r1")[0] for i in range(3)}
    dead.add(connect(b, "solo", "only-b")[0])
    b.abandon()
    notices = wait_until(lambda: len(wa.of_type("user-disconnected")) == 3
                         and wa.of_type("user-disconnected"), timeout=10)
    assert {n["connectionId"] for n in notices} < dead
    assert {n["reason"] for n in notices} == {"server-failure"}
    assert {n["roomId"] for n in notices} == {"r1"}
    stats = wait_until(lambda: (s := a.get_distributed_stats()).active_servers == 1 and s)
    assert (stats.total_connections, stats.total_rooms) == (1, 2)  # r1, r2; only-b is gone
    # counted once the cleanup is over (stats may show B gone a moment before)
    wait_until(lambda: a.metrics()["connections_cleaned"] == 4)
    assert a.handle_server_failure(b.server_id) == 0  # another pass finds nothing to clean
    settle("r1", [a], [wa])
    assert len(wa.of_type("user-disconnected")) == 3
    assert a.metrics()["connections_cleaned"] == 4


def test_concurrent_failure_handling_cleans_exactly_once(make_manager: Make) -> None:
    # long heartbeats so only the explicit calls below clean up
    slow = dict(heartbeat_interval=30.0, heartbeat_ttl=0.5 + 60.0)
    a, b, c = make_manager(**slow), make_manager(**slow), make_manager(**slow)
    victim = make_manager(**slow)
    _, wa = connect(a, "alice", "room")
    _, wb = connect(b, "bob", "room")
    ids = {connect(victim, f"v{i}", "room")[0] for i in range(200)}
    victim.abandon()
    a._backend.deregister_server(victim.server_id)  # as if its record had expired
    counts: list[int] = []
    barrier = threading.Barrier(3)

    def clean(mgr: DistributedConnectionManager) -> None:
        barrier.wait()
        counts.append(mgr.handle_server_failure(victim.server_id))

    threads = [threading.Thread(target=clean, args=(m,)) for m in (a, b, c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 200
    assert a.handle_server_failure(victim.server_id) == 0  # idempotent
    for ws in (wa, wb):
        wait_until(lambda ws=ws: len(ws.of_type("user-disconnected")) == 200, timeout=10)
    settle("room", [a, b, c], [wa, wb])  # a notice sent twice by any cleaner is there by now
    for ws in (wa, wb):
        got = [n["connectionId"] for n in ws.of_type("user-disconnected")]
        assert sorted(got) == sorted(ids)
    assert a.get_distributed_stats().total_connections == 2


def test_handle_own_failure_is_refused(make_manager: Make) -> None:
    a = make_manager()
    with pytest.raises(ValueError):
        a.handle_server_failure(a.server_id)


def test_cleanup_of_a_live_server_removes_nothing(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    _, wa = connect(a, "alice", "r")
    cb, wb = connect(b, "bob", "r")
    assert a.handle_server_failure(b.server_id) == 0  # its record is fresh: it is not dead
    assert a.get_distributed_stats().total_connections == 2
    assert a.send_to_connection(cb, "still here") is True
    wait_until(lambda: "still here" in wb.frames)
    assert wa.of_type("user-disconnected") == []


def test_a_dead_server_sharing_its_tag_with_a_live_one_is_cleaned_bucket_by_bucket(
        make_manager: Make) -> None:
    # Enough connections that each of the tag's 256 buckets holds several of the dead server's:
    # its cleanup reads such a bucket whole and writes it back; the live server's connections in
    # the same buckets (same tag, the first 4 digits of their ids) must stay as they were.
    slow = dict(heartbeat_interval=30.0, heartbeat_ttl=90.0)
    live = make_manager(server_id="live", **slow)
    dead_id = next(f"dead-{i}" for i in itertools.count()
                   if server_tag(f"dead-{i}") == server_tag("live"))
    dead = make_manager(server_id=dead_id, **slow)
    kept = {connect(live, f"l{i % 150}", f"room{i % 7}")[0]: f"l{i % 150}" for i in range(300)}
    kept[connect(live, "both", "room1")[0]] = "both"  # a user on both servers
    gone = {connect(dead, f"d{i}", *[f"room{i % 7}"] * (i % 2))[0] for i in range(3_000)}
    gone.add(connect(dead, "both", "room1")[0])
    assert {c[:4] for c in gone} == {c[:4] for c in kept}
    dead.abandon()
    live._backend.deregister_server(dead_id)  # as if its record had expired
    # a batch is never more than asked for, though the server's sets hold ~12 ids each (it may
    # be less: whole sets as they fit)
    first = live._backend.pop_server_connections(dead_id, 10)
    assert 0 < len(first) <= 10 and {row.connection_id for row in first} < gone
    assert live.handle_server_failure(dead_id) == len(gone) - len(first)
    assert live.get_distributed_stats().total_connections == len(kept)
    rooms = [live.get_room_members(f"room{k}") for k in range(7)]
    assert {(m.connection_id, m.user_id) for room in rooms for m in room} == set(kept.items())
    for user in ("both", "l1", "d1"):
        assert set(live.get_user_connections(user)) == {c for c, u in kept.items() if u == user}
    for cid in list(kept)[:50]:  # still routed to their server
        assert live.send_to_connection(cid, "still here") is True
    assert live.send_to_connection(next(iter(gone)), "gone") is False
    assert live.handle_server_failure(dead_id) == 0


def test_server_back_during_its_cleanup_keeps_its_state(make_manager: Make,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # b was declared dead (its record gone) and writes itself back between two cleanup batches
    a = make_manager()
    b = make_manager(heartbeat_interval=30.0, heartbeat_ttl=90.0)  # no heartbeat meanwhile
    _, wa = connect(a, "alice", "r")
    bobs = {connect(b, f"bob{i}", "r")[0] for i in range(3)}
    b._backend.deregister_server(b.server_id)
    monkeypatch.setattr("dcm_sync.maintenance.CLEANUP_BATCH", 1)
    pop = a._backend.pop_server_connections
    batches: list[list[str]] = []

    def pop_then_b_returns(server_id: str, count: int, adopter: str | None = None,
                           until: float = 0.0, ttl: float = 0.0) -> list[RemovedConnection]:
        out = pop(server_id, count, adopter, until, ttl)
        batches.append([r.connection_id for r in out])
        if len(batches) == 1:
            b._restore()  # what b's heartbeat does when it finds its record gone
        return out

    monkeypatch.setattr(a._backend, "pop_server_connections", pop_then_b_returns)
    assert a.handle_server_failure(b.server_id) == 1
    assert [len(x) for x in batches] == [1, 0]  # nothing popped once b was back
    notices = wait_until(lambda: wa.of_type("user-disconnected"))
    settle("r", [a, b], [wa])
    assert len(wa.of_type("user-disconnected")) == 1 and notices[0]["connectionId"] in bobs
    stats = a.get_distributed_stats()  # b's record, index entry and connections stay
    assert (stats.active_servers, stats.total_connections) == (2, 4)


def test_stale_connections_are_removed(make_manager: Make) -> None:
    a = make_manager(stale_connection_timeout=0.4, cleanup_interval=0.1)
    b = make_manager()
    idle, w_idle = connect(a, "idle", "r")
    busy, w_busy = connect(a, "busy", "r")
    _, wb = connect(b, "bob", "r")
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        a.touch(busy)
        b.touch(busy)  # routed
        time.sleep(0.05)
    assert w_idle.closed and not w_busy.closed
    assert idle not in a.local and busy in a.local
    notice = wait_until(lambda: wb.of_type("user-disconnected"))[0]
    assert (notice["connectionId"], notice["reason"]) == (idle, "stale")
    assert w_busy.of_type("user-disconnected")[0]["reason"] == "stale"
    assert a.metrics()["stale_removed"] == 1


def test_shutdown_tells_other_servers_and_stops_quickly(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    ids = [connect(a, f"a{i}", "r")[0] for i in range(3)]
    socks = [a.local.get(i).ws for i in ids]  # type: ignore[union-attr]
    _, wb = connect(b, "bob", "r")
    workers = list(a._workers)
    started = time.monotonic()
    a.shutdown()
    elapsed = time.monotonic() - started
    assert not any(w.is_alive() for w in workers)
    assert elapsed < 2.0
    assert all(ws.closed for ws in socks)
    assert not a.is_ready()
    a.shutdown()  # idempotent
    notices = wait_until(lambda: len(wb.of_type("user-disconnected")) == 3
                         and wb.of_type("user-disconnected"))
    assert {n["connectionId"] for n in notices} == set(ids)
    assert {n["reason"] for n in notices} == {"shutdown"}
    stats = b.get_distributed_stats()
    assert (stats.active_servers, stats.total_connections) == (1, 1)


def test_what_a_shutdown_could_not_remove_is_cleaned_by_the_others(make_manager: Make) -> None:
    # A connection listed under the server but no longer held by it (its removal waited for
    # Redis, or its registration raced the shutdown): its record has no TTL, so the server
    # stays indexed and another server's failure cleanup removes it and tells its rooms.
    a, b = make_manager(), make_manager()
    bob, wb = connect(b, "bob", "r")
    ghost = a._backend.new_connection_id(a.server_id)
    assert a._backend.add_connection(a.server_id, ConnectionRecord(ghost, "ghost", time.time()))
    b.join_room(ghost, "r")
    a.shutdown()
    notice = wait_until(lambda: wb.of_type("user-disconnected"), timeout=10)[0]
    assert (notice["connectionId"], notice["reason"]) == (ghost, "server-failure")
    wait_until(lambda: not b.get_user_connections("ghost")
               and b.get_distributed_stats().active_servers == 1)
    assert {m.connection_id for m in b.get_room_members("r")} == {bob}


def test_threads_are_named_and_gone_after_shutdown(make_manager: Make) -> None:
    a = make_manager()
    names = {w.name for w in a._workers}
    assert names == {"dcm-listener", "dcm-heartbeat", "dcm-cleanup", "dcm-probe"}
    a.shutdown()
    alive = [t for t in threading.enumerate() if t.name.startswith("dcm-") and t in a._workers]
    assert alive == []


PING, PONG = 0x9, 0xA
KEEPALIVE = dict(ping_interval=0.3, ping_timeout=0.3, stale_connection_timeout=0.8,
                 cleanup_interval=0.1)


class PingableSocket(PairSocket):
    """A socket pair the manager can ping; the test plays the client, which answers pings
    (``answering``) or not. ``last_received`` moves when an answer comes, as a transport's
    does when it reads a pong."""

    def __init__(self) -> None:
        super().__init__()
        self.last_received = time.monotonic()
        self.pings = 0
        self.answering = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._client, name="test-client", daemon=True)
        self._thread.start()

    def keepalive(self) -> bytes:
        return bytes([0x80 | PING, 0])

    def _client(self) -> None:
        while not self._stop.is_set():
            for op, _ in self.read_frames(timeout=0.05):
                if op == PING:
                    self.pings += 1
                    if self.answering:
                        self.last_received = time.monotonic()  # the pong, as read by a transport

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        super().close()


def test_a_quiet_client_that_answers_pings_stays_and_one_that_stops_is_removed(
        make_manager: Make) -> None:
    a = make_manager(**KEEPALIVE)
    answering, silent = PingableSocket(), PingableSocket()
    member = RecordingSocket()
    a.join_room(a.register_connection(member, "member"), "r")
    kept = a.register_connection(answering, "kept")
    gone = a.register_connection(silent, "gone")
    a.join_room(gone, "r")
    silent.answering = False
    quiet_since = time.monotonic()
    notice = wait_until(lambda: member.of_type("user-disconnected"), timeout=5)[0]
    took = time.monotonic() - quiet_since
    assert (notice["connectionId"], notice["reason"]) == (gone, "stale")
    # within ping_interval + ping_timeout, and a tick of the loop (a quarter of the smaller)
    assert took < 0.3 + 0.3 + 0.1 + 0.3, took
    assert silent.pings >= 1
    time.sleep(1.2)  # past stale_connection_timeout: the condition under test, not a wait
    assert kept in a.local and answering.pings >= 2
    assert gone not in a.local
    answering.close()
    silent.close()
