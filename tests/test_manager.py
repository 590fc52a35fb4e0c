"""The public API on both backends (memory:// and a real redis-server), two or more managers
with distinct server ids in one process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from dcm_sync import (
    AuthenticationError,
    ConnectionLimitError,
    DCMError,
    DistributedConnectionManager,
    MessageTooLargeError,
    UnknownConnectionError,
)
from dcm_sync.backends.redis_keys import server_tag
from testkit.polling import wait_until
from testkit.recording import RecordingSocket, connect, settle, until_reached

Make = Callable[..., DistributedConnectionManager]


def test_factory_returns_ready_manager_with_unique_server_ids(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    assert a.is_ready() and b.is_ready()
    assert a.server_id != b.server_id
    assert {s.server_id for s in a.get_active_servers()} == {a.server_id, b.server_id}


def test_connection_ids_are_unique(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    ids = {connect(m, "u")[0] for m in (a, b) for _ in range(50)}
    assert len(ids) == 100


def test_connection_ids_are_19_digit_integers(make_manager: Make) -> None:
    mgr = make_manager()
    cid, _ = connect(mgr, "u")
    assert len(cid) == 19 and cid.isdigit() and int(cid) < 2**63
    assert cid.startswith(server_tag(mgr.server_id))


def test_a_taken_connection_id_is_never_reused(make_manager: Make,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # the random draw repeats: first on the same server, then one another server holds (two
    # servers whose ids give the same 4-digit tag, the only way their ids can collide)
    tag = server_tag("server-a")
    twin = next(f"server-b{i}" for i in range(100_000) if server_tag(f"server-b{i}") == tag)
    a, b = make_manager(server_id="server-a"), make_manager(server_id=twin)
    x, y, z = (f"{tag}00000000000000{n}" for n in range(1, 4))
    draws = iter([x, x, y, x, z])
    monkeypatch.setattr("dcm_sync.backends.ids.draw_connection_id", lambda tag: next(draws))
    first, wa = connect(a, "alice")
    second, _ = connect(a, "bob")      # same draw taken locally -> next draw
    third, _ = connect(b, "carol")     # taken on server a -> next draw
    assert (first, second, third) == (x, y, z)
    assert a.send_to_connection(first, "still alice's")
    wait_until(lambda: wa.frames)
    assert wa.frames == ["still alice's"]
    assert a.get_distributed_stats().total_connections == 3


def test_broadcast_reaches_every_member_on_every_server_once(make_manager: Make) -> None:
    # room_notices off: the frames compared are the broadcasts alone (notices: test_notices.py)
    a, b, c = (make_manager(room_notices="off") for _ in range(3))
    _, wa = connect(a, "alice", "lobby")
    _, wb = connect(b, "bob", "lobby")
    _, wc = connect(c, "carol", "elsewhere")
    a.broadcast_to_room("lobby", {"text": "hi", "n": 1})
    wait_until(lambda: wb.frames)
    settle("lobby", [a, b], [wa, wb])  # a duplicate would have arrived before the markers
    assert wa.messages() == [{"text": "hi", "n": 1}]
    assert wb.messages() == [{"text": "hi", "n": 1}]
    assert wc.frames == []


def test_broadcast_exclude_and_plain_text(make_manager: Make) -> None:
    a, b = make_manager(room_notices="off"), make_manager(room_notices="off")
    ca, wa = connect(a, "alice", "r")
    cb, wb = connect(b, "bob", "r")
    cb2, wb2 = connect(b, "bob2", "r")
    b.broadcast_to_room("r", "plain text", exclude=[ca, cb2])
    wait_until(lambda: wb.frames)
    a.broadcast_to_room("r", "second", exclude={cb})
    wait_until(lambda: wa.frames and len(wb2.frames) == 1)
    settle("r", [a, b], [wa, wb, wb2])  # what either sent to the room before has arrived
    assert wb.frames == ["plain text"]
    assert wa.frames == ["second"]
    assert wb2.frames == ["second"]


def test_send_to_connection_local_remote_unknown(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    ca, wa = connect(a, "alice")
    cb, wb = connect(b, "bob")
    assert a.send_to_connection(ca, {"to": "self"}) is True
    assert a.send_to_connection(cb, {"to": "bob"}) is True
    assert a.send_to_connection("f" * 32, {"to": "nobody"}) is False
    wait_until(lambda: wb.frames)
    assert wa.messages() == [{"to": "self"}]
    assert wb.messages() == [{"to": "bob"}]


def test_join_and_leave_a_remote_connection(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    cb, wb = connect(b, "bob")
    a.join_room(cb, "r")            # routed to b, which subscribes when it reads it
    until_reached(a, "r", wb)
    a.broadcast_to_room("r", "one")
    wait_until(lambda: wb.frames == ["one"])
    assert a.get_distributed_stats().total_rooms == 1
    a.leave_room(cb, "r")
    wait_until(lambda: not b.local.members("r"))
    a.broadcast_to_room("r", "two")
    b.broadcast_to_room("r", "three")
    a.send_to_connection(cb, "marker")  # through b's listener, after "two" went out
    wait_until(lambda: "marker" in wb.frames)
    assert wb.frames == ["one", "marker"]
    assert a.get_distributed_stats().total_rooms == 0


def test_leave_stops_delivery_and_leaving_twice_is_fine(make_manager: Make) -> None:
    a, b = make_manager(room_notices="off"), make_manager(room_notices="off")
    ca, wa = connect(a, "alice", "r")
    _, wb = connect(b, "bob", "r")
    a.leave_room(ca, "r")
    a.leave_room(ca, "r")
    a.leave_room(ca, "never-joined")
    b.broadcast_to_room("r", "after")
    wait_until(lambda: wb.frames)
    b.send_to_connection(ca, "marker")  # through a's listener, after "after" went out
    wait_until(lambda: "marker" in wa.frames)
    assert wa.frames == ["marker"]


def test_remove_local_connection_notifies_rooms_everywhere(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    ca, wa = connect(a, "alice", "r1", "r2")
    _, wa2 = connect(a, "alex", "r1")
    _, wb = connect(b, "bob", "r2")
    a.remove_connection(ca)
    assert wa.closed
    wait_until(lambda: wb.of_type("user-disconnected"))
    assert wa2.of_type("user-disconnected") == [
        {"type": "user-disconnected", "roomId": "r1", "userId": "alice", "connectionId": ca,
         "reason": "removed"}]
    assert wb.of_type("user-disconnected") == [
        {"type": "user-disconnected", "roomId": "r2", "userId": "alice", "connectionId": ca,
         "reason": "removed"}]
    assert a.get_distributed_stats().total_connections == 2
    with pytest.raises(UnknownConnectionError):
        a.remove_connection(ca)


def test_remove_remote_connection_is_closed_by_its_owner(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    _, wa = connect(a, "alice", "r")
    cb, wb = connect(b, "bob", "r")
    a.remove_connection(cb)
    wait_until(lambda: wb.closed)
    wait_until(lambda: wa.of_type("user-disconnected"))
    assert wa.of_type("user-disconnected")[0]["connectionId"] == cb
    assert cb not in b.local
    assert b.get_distributed_stats().total_connections == 1
    settle("r", [a, b], [wa])  # a second notice from either would have arrived by now
    assert len(wa.of_type("user-disconnected")) == 1
    assert wb.of_type("user-disconnected") == []  # never told of its own removal


def test_notify_on_disconnect_off(make_manager: Make) -> None:
    a = make_manager(notify_on_disconnect=False)
    ca, _ = connect(a, "alice", "r")
    _, w2 = connect(a, "bob", "r")
    a.remove_connection(ca)
    settle("r", [a], [w2])  # a notice is delivered here during the removal, if at all
    assert w2.frames == []


def test_touch_local_remote_and_unknown(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    ca, _ = connect(a, "alice")
    cb, _ = connect(b, "bob")
    before = b.local.get(cb).last_activity  # type: ignore[union-attr]
    a.touch(ca)
    a.touch(cb)
    wait_until(lambda: b.local.get(cb).last_activity > before)  # type: ignore[union-attr]
    with pytest.raises(UnknownConnectionError):
        a.touch("0" * 32)


def test_server_messages(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    got: list[tuple[str, object]] = []
    b.on_server_message(lambda origin, msg: got.append((origin, msg)))
    assert a.send_to_server(b.server_id, {"op": "reload", "n": [1, 2]}) is True
    assert a.send_to_server(b.server_id, "just text") is True
    assert a.send_to_server(b.server_id, [1, "two"]) is True
    assert a.send_to_server("no-such-server", {"op": "x"}) is False
    wait_until(lambda: len(got) == 3)
    assert got == [(a.server_id, {"op": "reload", "n": [1, 2]}), (a.server_id, "just text"),
                   (a.server_id, [1, "two"])]


def test_failing_handler_does_not_stop_the_listener(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    got: list[object] = []

    def bad(origin: str, msg: object) -> None:
        raise RuntimeError("handler bug")

    b.on_server_message(bad)
    b.on_server_message(lambda origin, msg: got.append(msg))
    a.send_to_server(b.server_id, 1)
    a.send_to_server(b.server_id, 2)
    wait_until(lambda: got == [1, 2])
    assert b.is_ready()


def test_stats(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    connect(a, "alice", "r1", "r2")
    connect(a, "alex", "r1")
    connect(b, "bob", "r3")
    stats = b.get_distributed_stats()
    assert (stats.total_connections, stats.total_rooms, stats.active_servers) == (3, 3, 2)
    assert stats.local_connections == 1
    by_id = {s.server_id: s for s in stats.server_stats}
    assert by_id[a.server_id].active_connections == 2
    assert by_id[b.server_id].active_connections == 1
    assert abs(by_id[a.server_id].last_heartbeat - time.time()) < 30
    assert by_id[a.server_id].pid > 0 and by_id[a.server_id].port == 3000


def test_failed_send_removes_only_that_connection(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    _, wa = connect(a, "alice", "r")
    _, wb = connect(b, "bob", "r")
    dead_id = a.register_connection(RecordingSocket(fail=True), "ghost")
    a.join_room(dead_id, "r")  # last: its join is told to the others, not to itself
    a.broadcast_to_room("r", {"n": 1})
    wait_until(lambda: wb.of_type("user-disconnected"))
    assert {"n": 1} in wa.messages() and {"n": 1} in wb.messages()
    notice = wa.of_type("user-disconnected")[0]
    assert notice["connectionId"] == dead_id and notice["reason"] == "removed"
    assert dead_id not in a.local
    assert a.send_to_connection(dead_id, "x") is False
    assert a.metrics()["send_errors"] == 1


def test_malformed_bus_messages_are_dropped(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    _, wb = connect(b, "bob", "r")
    for junk in (b"garbage", b'{"v":99}', b"\xff", b'{"v":1,"k":"room","o":"x","id":"1"}'):
        a._backend.publish("room:r", junk)
        a._backend.publish(f"server:{b.server_id}", junk)
    a.broadcast_to_room("r", "still works")
    wait_until(lambda: wb.frames == ["still works"])
    assert b.metrics()["envelopes_dropped"] == 8
    assert b.is_ready()


def test_bad_input(make_manager: Make) -> None:
    a = make_manager(max_message_bytes=100)
    ca, wa = connect(a, "alice", "r")
    for bad_id, exc in ((None, TypeError), (3, TypeError), ("", ValueError), ("x" * 257, ValueError),
                        ("\ud800", ValueError), ("ok\udcff", ValueError)):  # lone surrogates
        with pytest.raises(exc):
            a.join_room(bad_id, "r")  # type: ignore[arg-type]
        with pytest.raises(exc):
            a.join_room(ca, bad_id)  # type: ignore[arg-type]
        with pytest.raises(exc):
            a.register_connection(RecordingSocket(), bad_id)  # type: ignore[arg-type]
        with pytest.raises(exc):
            a.broadcast_to_room(bad_id, "x")  # type: ignore[arg-type]
    unknown = "9" * 32
    for op in (lambda: a.join_room(unknown, "r"), lambda: a.leave_room(unknown, "r"),
               lambda: a.remove_connection(unknown), lambda: a.touch(unknown)):
        with pytest.raises(UnknownConnectionError):
            op()
        with pytest.raises(KeyError):
            op()
    with pytest.raises(TypeError):
        a.broadcast_to_room("r", {"x": object()})
    with pytest.raises(TypeError):
        a.send_to_connection(ca, {1, 2})
    with pytest.raises(MessageTooLargeError):
        a.broadcast_to_room("r", "x" * 101)
    for text in ("\udcff", {"text": "a\ud800"}):  # what json.loads makes of "\udcff"
        with pytest.raises(ValueError, match="not valid Unicode text: a lone surrogate"):
            a.broadcast_to_room("r", text)
        with pytest.raises(ValueError, match="lone surrogate"):
            a.send_to_connection(ca, text)
    with pytest.raises(TypeError):
        a.broadcast_to_room("r", "x", exclude=ca)  # a str, not an iterable of ids
    with pytest.raises(TypeError):
        a.register_connection(object(), "u")  # type: ignore[arg-type]
    assert wa.frames == []
    assert a.get_distributed_stats().total_connections == 1


def test_connection_limit(make_manager: Make) -> None:
    a = make_manager(max_connections=2)
    connect(a, "u1")
    connect(a, "u2")
    with pytest.raises(ConnectionLimitError):
        connect(a, "u3")
    assert a.get_distributed_stats().total_connections == 2


def test_rooms_per_connection_are_limited_from_any_server(make_manager: Make) -> None:
    a, b = make_manager(max_rooms_per_connection=3), make_manager(max_rooms_per_connection=3)
    ca, _ = connect(a, "alice", "r1", "r2", "r3")
    a.join_room(ca, "r3")  # a room it is in already is not one more
    with pytest.raises(ConnectionLimitError, match="max_rooms_per_connection"):
        a.join_room(ca, "r4")
    with pytest.raises(ConnectionLimitError, match="max_rooms_per_connection"):
        b.join_room(ca, "r4")  # routed joins are held to it too, in the same atomic step
    assert a.get_distributed_stats().total_rooms == 3  # a refused join leaves nothing behind
    assert not a.local.members("r4")
    a.leave_room(ca, "r1")
    b.join_room(ca, "r4")
    wait_until(lambda: a.local.members("r4"))
    assert a.get_distributed_stats().total_rooms == 3
    unlimited = make_manager(max_rooms_per_connection=0)
    connect(unlimited, "bob", *(f"many-{i}" for i in range(120)))


def test_authenticate(make_manager: Make) -> None:
    calls: list[tuple[object, str]] = []

    def auth(token: object, user: str) -> bool:
        calls.append((token, user))
        return token == f"token-of-{user}"

    a = make_manager(authenticate=auth)
    assert a.register_connection(RecordingSocket(), "alice", auth_token="token-of-alice")
    with pytest.raises(AuthenticationError):
        a.register_connection(RecordingSocket(), "bob", auth_token="wrong")
    with pytest.raises(AuthenticationError):
        a.register_connection(RecordingSocket(), "carol")
    assert calls == [("token-of-alice", "alice"), ("wrong", "bob"), (None, "carol")]
    assert a.get_distributed_stats().total_connections == 1


def test_concurrent_joins_and_broadcasts(make_manager: Make) -> None:
    a, b = make_manager(room_notices="off"), make_manager(room_notices="off")
    socks: list[RecordingSocket] = []
    lock = threading.Lock()

    def worker(mgr: DistributedConnectionManager, n: int) -> None:
        for i in range(n):
            _, ws = connect(mgr, f"u{i}", "big")
            with lock:
                socks.append(ws)

    threads = [threading.Thread(target=worker, args=(m, 25)) for m in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.get_distributed_stats().total_connections == 100
    for i in range(5):
        (a if i % 2 else b).broadcast_to_room("big", {"i": i})
    wait_until(lambda: all(len(ws.frames) == 5 for ws in socks), timeout=10)
    assert all(sorted(m["i"] for m in ws.messages()) == [0, 1, 2, 3, 4] for ws in socks)


def test_operations_after_shutdown_raise(make_manager: Make) -> None:
    a = make_manager()
    a.shutdown()
    with pytest.raises(DCMError):
        a.register_connection(RecordingSocket(), "u")
    with pytest.raises(DCMError):
        a.broadcast_to_room("r", "x")


def test_abandon_leaves_the_state_and_the_sockets_as_a_killed_process_does(make_manager: Make) -> None:
    a, b = make_manager(), make_manager(heartbeat_interval=30.0, heartbeat_ttl=90.0)
    cb, wb = connect(b, "bob", "lobby")
    b.abandon()
    b.abandon()  # idempotent
    assert not b.is_ready()
    assert not wb.closed  # nobody closed bob's socket: a killed process closes nothing
    with pytest.raises(DCMError):
        b.broadcast_to_room("lobby", "after")
    stats = a.get_distributed_stats()  # b's record outlives it until its heartbeat TTL ends
    assert (stats.active_servers, stats.total_connections) == (2, 1)
    assert a.send_to_connection(cb, "to bob") is True  # still routed to b, which never reads it
    assert "to bob" not in wb.frames
