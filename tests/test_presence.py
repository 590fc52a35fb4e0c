"""Presence and users (dcm_sync/presence.py) on every backend: a room's members and users, a
user's connections on every server, messages to a user, disconnecting a user, closing a room,
the cap on connections per user counted on all servers together, and no ghost after a crash."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from dcm_sync import (
    ConnectionLimitError,
    DistributedConnectionManager,
    Emitter,
    RoomMember,
    UnknownConnectionError,
)
from testkit.polling import wait_until
from testkit.recording import RecordingSocket, connect, json_frames, settle
from tests.helpers.pair_socket import PairSocket

Make = Callable[..., DistributedConnectionManager]
CLOSE = 0x8


def close_of(sock: PairSocket) -> tuple[int, str]:
    """The close frame the server end sent: its code and reason."""
    frames = [payload for opcode, payload in sock.read_frames() if opcode == CLOSE]
    assert frames, "no close frame"
    return int.from_bytes(frames[0][:2], "big"), frames[0][2:].decode()


def test_room_members_and_users_span_every_server(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    ca, _ = connect(a, "alice", "lobby")
    cb, _ = connect(b, "bob", "lobby")
    cb2, _ = connect(b, "bob", "lobby", "side")  # bob's second tab
    expected = sorted([RoomMember(ca, "alice", a.server_id), RoomMember(cb, "bob", b.server_id),
                       RoomMember(cb2, "bob", b.server_id)], key=lambda m: m.connection_id)
    assert a.get_room_members("lobby") == expected
    assert b.get_room_members("lobby") == expected
    assert a.get_room_users("lobby") == {"alice", "bob"}
    assert a.get_room_users("side") == {"bob"}
    assert a.get_room_members("nowhere") == [] and a.get_room_users("nowhere") == set()
    a.leave_room(cb, "lobby")
    b.remove_connection(ca)
    assert [m.connection_id for m in b.get_room_members("lobby")] == [cb2]
    assert a.get_room_users("lobby") == {"bob"}


def test_a_users_connections_on_two_servers_get_one_message_each(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    ca, wa = connect(a, "alice")
    cb, wb = connect(b, "alice")
    cc, wc = connect(b, "carol")
    assert sorted(a.get_user_connections("alice")) == sorted([ca, cb])
    assert b.get_user_connections("nobody") == []
    assert a.send_to_user("alice", {"n": 1}) == 2
    assert b.send_to_user("alice", {"n": 2}) == 2
    assert a.send_to_user("nobody", "x") == 0
    wait_until(lambda: len(wa.frames) == 2 and len(wb.frames) == 2)
    b.send_to_connection(cb, "marker")  # after the two messages on the same route
    wait_until(lambda: "marker" in wb.frames)
    assert wa.messages() == [{"n": 1}, {"n": 2}]
    assert sorted(wb.frames) == sorted(['{"n":1}', '{"n":2}', "marker"])  # once each
    assert wc.frames == []
    a.remove_connection(cb)
    assert a.get_user_connections("alice") == [ca]
    assert a.send_to_user("alice", "last") == 1


def test_disconnect_user_closes_every_tab_with_the_code_and_tells_the_rooms(
        make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    tab_a, tab_b = PairSocket(), PairSocket()
    ta = a.register_connection(tab_a, "mallory")
    tb = b.register_connection(tab_b, "mallory")
    a.join_room(ta, "lobby")
    b.join_room(tb, "lobby")
    _, watcher = connect(a, "walter", "lobby")
    assert b.disconnect_user("mallory", 4001, "banned") == 2
    assert close_of(tab_a) == (4001, "banned") and close_of(tab_b) == (4001, "banned")
    notices = wait_until(lambda: len(watcher.of_type("user-disconnected")) == 2
                         and watcher.of_type("user-disconnected"))
    assert {(n["connectionId"], n["reason"]) for n in notices} == {(ta, "removed"), (tb, "removed")}
    assert a.get_user_connections("mallory") == [] and a.get_room_users("lobby") == {"walter"}
    assert b.disconnect_user("mallory") == 0
    settle("lobby", [a, b], [watcher])
    assert len(watcher.of_type("user-disconnected")) == 2  # told once each
    with pytest.raises(UnknownConnectionError):
        a.send_to_connection(tb, "gone") or a.touch(tb)


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2999, 5000, True])
def test_disconnect_user_refuses_a_close_code_no_client_may_receive(make_manager: Make,
                                                                    code: int) -> None:
    a = make_manager()
    ca, ws = connect(a, "alice")
    with pytest.raises(ValueError, match="close code"):
        a.disconnect_user("alice", code)
    with pytest.raises(ValueError, match="123 bytes"):
        a.disconnect_user("alice", 4000, "x" * 124)
    assert not ws.closed and a.get_user_connections("alice") == [ca]  # nothing was done


def test_close_room_takes_everyone_out_and_leaves_them_connected(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    ca, wa = connect(a, "alice", "lobby", "stays")
    cb, wb = connect(b, "bob", "lobby")
    assert a.close_room("lobby") == 2
    assert a.get_room_members("lobby") == [] and a.get_distributed_stats().total_rooms == 1
    assert a.rooms_of(ca) == {"stays"}
    wait_until(lambda: b.rooms_of(cb) == frozenset())  # b is told through the bus
    a.broadcast_to_room("lobby", "after")
    b.broadcast_to_room("lobby", "after")
    settle("stays", [a, b], [wa])
    assert "after" not in wa.frames and "after" not in wb.frames
    assert a.send_to_connection(cb, "still here") and not wa.closed and not wb.closed
    wait_until(lambda: "still here" in wb.frames)
    assert a.close_room("lobby") == 0
    a.join_room(cb, "lobby")  # the room can be used again
    assert [m.user_id for m in b.get_room_members("lobby")] == ["bob"]


def test_the_cap_per_user_holds_under_concurrent_registrations_on_two_servers(
        make_manager: Make) -> None:
    a, b = make_manager(max_connections_per_user=3), make_manager(max_connections_per_user=3)
    results: list[str | Exception] = []
    barrier = threading.Barrier(12)

    def register(mgr: DistributedConnectionManager) -> None:
        barrier.wait()
        try:
            results.append(mgr.register_connection(RecordingSocket(), "eve"))
        except ConnectionLimitError as exc:
            results.append(exc)

    threads = [threading.Thread(target=register, args=(mgr,)) for mgr in (a, b) * 6]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [r for r in results if isinstance(r, str)]
    assert len(ids) == 3 and len(results) == 12
    assert sorted(a.get_user_connections("eve")) == sorted(ids)
    assert a.get_distributed_stats().total_connections == 3  # the refused left nothing behind
    assert len(a.local) + len(b.local) == 3
    connect(b, "someone-else")  # the cap is per user
    a.remove_connection(ids[0])
    assert b.register_connection(RecordingSocket(), "eve")  # room for one more
    with pytest.raises(ConnectionLimitError, match="max_connections_per_user"):
        a.register_connection(RecordingSocket(), "eve")


def test_a_killed_servers_users_leave_no_ghost(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    _, wa = connect(a, "alice", "lobby")
    cb1, _ = connect(b, "bob", "lobby")
    cb2, _ = connect(b, "bob", "lobby", "side")
    ca2, _ = connect(a, "bob", "side")  # bob also has a tab on the survivor
    b.abandon()
    notices = wait_until(lambda: len(wa.of_type("user-disconnected")) == 2
                         and wa.of_type("user-disconnected"), timeout=10)
    assert {n["connectionId"] for n in notices} == {cb1, cb2}
    assert {n["reason"] for n in notices} == {"server-failure"}
    assert a.get_user_connections("bob") == [ca2]
    assert [m.user_id for m in a.get_room_members("lobby")] == ["alice"]
    assert a.get_room_members("side") == [RoomMember(ca2, "bob", a.server_id)]
    settle("lobby", [a], [wa])
    assert len(wa.of_type("user-disconnected")) == 2  # once each


def test_an_emitter_reads_presence_and_acts_on_users_and_rooms(
        make_manager: Make, backend_url: str, prefix: str) -> None:
    a, b = make_manager(), make_manager()
    tab = PairSocket()
    ca = a.register_connection(tab, "alice")
    a.join_room(ca, "lobby")
    cb, wb = connect(b, "bob", "lobby")
    cb2, wb2 = connect(b, "bob", "side")
    with Emitter(backend_url, key_prefix=prefix) as em:
        assert em.get_room_users("lobby") == {"alice", "bob"}
        assert [m.connection_id for m in em.get_room_members("side")] == [cb2]
        assert sorted(em.get_user_connections("bob")) == sorted([cb, cb2])
        assert em.send_to_user("bob", "from cron") == 2
        wait_until(lambda: "from cron" in wb.frames and "from cron" in wb2.frames)
        assert em.close_room("side") == 1
        wait_until(lambda: b.rooms_of(cb2) == frozenset())
        assert em.disconnect_user("alice", 4002, "maintenance") == 1
        assert close_of(tab) == (4002, "maintenance")
        notice = wait_until(lambda: [m for m in json_frames(wb)
                                     if m.get("type") == "user-disconnected"])[0]
        assert (notice["connectionId"], notice["reason"]) == (ca, "removed")
        assert em.get_room_users("lobby") == {"bob"}


def test_many_tabs_many_rooms_and_long_names(make_manager: Make) -> None:
    """A user with many connections, a connection in many rooms and ids longer than Redis keeps
    in its compact hashes (the layout's buckets become hash tables: nothing a user sees changes)."""
    a, b = make_manager(max_rooms_per_connection=40), make_manager()
    long_user = "long-" + "é" * 80
    rooms = [f"room-{i}-" + "x" * 40 for i in range(40)]
    tabs = [connect(a if i % 2 else b, "alice")[0] for i in range(8)]
    cl, wl = connect(a, long_user, *rooms)
    assert sorted(b.get_user_connections("alice")) == sorted(tabs)
    assert a.get_user_connections(long_user) == [cl]
    assert a.send_to_user("alice", "hi") == 8
    assert b.send_to_user(long_user, "hi") == 1
    wait_until(lambda: wl.frames == ["hi"])
    assert [m.connection_id for m in b.get_room_members(rooms[-1])] == [cl]
    assert b.get_room_users(rooms[0]) == {long_user}
    with pytest.raises(ConnectionLimitError, match="max_rooms_per_connection"):
        a.join_room(cl, "one-more")
    for tab in tabs[::2]:
        b.remove_connection(tab)
    assert sorted(a.get_user_connections("alice")) == sorted(tabs[1::2])
    b.leave_room(cl, rooms[0])  # routed to its server
    a.join_room(cl, "one-more")
    a.remove_connection(cl)
    assert a.get_user_connections(long_user) == []
    assert all(a.get_room_members(room) == [] for room in [*rooms, "one-more"])
    assert a.get_distributed_stats().total_rooms == 0


def test_ids_no_backend_mints_are_unknown_connections(make_manager: Make) -> None:
    a = make_manager()
    for cid in ("x", "8a517fb7429f9d276992edd4", "1" * 30, "1234", "12345.5", "1234-5"):
        assert a.send_to_connection(cid, "anyone?") is False
        with pytest.raises(UnknownConnectionError):
            a.join_room(cid, "lobby")
