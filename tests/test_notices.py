"""Room notices on every backend: ``user-joined``, ``user-left`` and ``user-disconnected`` per
connection (the default), per user (a user's first connection in and last one out) or off."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dcm_sync import ConfigError, DistributedConnectionManager
from testkit.polling import wait_until
from testkit.recording import RecordingSocket, connect, json_frames, settle

Make = Callable[..., DistributedConnectionManager]
KINDS = ("user-joined", "user-left", "user-disconnected")


def notices(ws: RecordingSocket) -> list[tuple[str, str, str]]:
    """``(type, userId, connectionId)`` of the room notices a socket got, in order."""
    return [(m["type"], m["userId"], m["connectionId"]) for m in json_frames(ws)
            if m.get("type") in KINDS]


def test_a_join_is_told_to_the_others_before_the_joiner_speaks(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    ca, wa = connect(a, "alice", "lobby")
    cb = b.register_connection(wb := RecordingSocket(), "bob")
    b.join_room(cb, "lobby")
    b.broadcast_to_room("lobby", "hi from bob")  # published after join_room returned
    wait_until(lambda: "hi from bob" in wa.frames)
    joined = {"type": "user-joined", "roomId": "lobby", "userId": "bob", "connectionId": cb}
    assert wa.frames[0].startswith('{"type":"user-joined","roomId":"lobby","userId":"bob",')
    assert json_frames(wa)[0] == joined and wa.frames[1] == "hi from bob"
    b.join_room(cb, "lobby")  # already in: nothing to tell
    settle("lobby", [a, b], [wa, wb])
    assert notices(wa) == [("user-joined", "bob", cb)]
    assert notices(wb) == []  # the joiner is not told of its own join, nor of alice's earlier one
    assert ca not in {n[2] for n in notices(wb)}


def test_leave_and_departure_notices_per_connection(make_manager: Make) -> None:
    a, b = make_manager(), make_manager()
    _, watcher = connect(a, "walt", "lobby")
    t1, _ = connect(b, "bob", "lobby")
    t2, _ = connect(a, "bob", "lobby")  # bob's second tab, on the other server
    settle("lobby", [a, b], [watcher])  # (two servers' notices: in no set order)
    assert sorted(notices(watcher)) == sorted([("user-joined", "bob", t1), ("user-joined", "bob", t2)])
    b.leave_room(t1, "lobby")
    settle("lobby", [a, b], [watcher])
    a.remove_connection(t2)
    b.leave_room(t1, "lobby")  # not in it any more: nothing to tell
    settle("lobby", [a, b], [watcher])
    assert notices(watcher)[2:] == [("user-left", "bob", t1), ("user-disconnected", "bob", t2)]
    left = next(m for m in json_frames(watcher) if m.get("type") == "user-left")
    assert left == {"type": "user-left", "roomId": "lobby", "userId": "bob", "connectionId": t1,
                    "reason": "left"}


def test_per_user_a_users_first_connection_in_and_last_out_are_told(make_manager: Make) -> None:
    a, b = make_manager(room_notices="users"), make_manager(room_notices="users")
    _, watcher = connect(a, "walt", "lobby")
    t1, _ = connect(b, "bob", "lobby")      # bob's first connection in the room: told
    t2, _ = connect(a, "bob", "lobby")      # a second tab, on the other server: not told
    t3, _ = connect(b, "bob", "elsewhere")  # another room
    a.leave_room(t1, "lobby")               # bob still has t2 in the lobby: not told
    b.join_room(t3, "lobby")                # bob is in already: not told
    a.remove_connection(t2)                 # t3 is still there: not told
    settle("lobby", [a, b], [watcher])
    assert notices(watcher) == [("user-joined", "bob", t1)]
    b.leave_room(t3, "lobby")               # bob's last connection in the lobby: told
    settle("lobby", [a, b], [watcher])
    assert notices(watcher) == [("user-joined", "bob", t1), ("user-left", "bob", t3)]
    t4, _ = connect(b, "bob", "lobby")      # back: the first again
    b.remove_connection(t4)                 # and gone: the last
    settle("lobby", [a, b], [watcher])
    assert notices(watcher)[2:] == [("user-joined", "bob", t4), ("user-disconnected", "bob", t4)]


def test_per_user_a_killed_server_tells_only_users_who_had_no_other_connection(
        make_manager: Make) -> None:
    a, b = make_manager(room_notices="users"), make_manager(room_notices="users")
    _, watcher = connect(a, "walt", "lobby")
    connect(b, "bob", "lobby")
    connect(a, "bob", "lobby")          # bob stays on a
    carol_b, _ = connect(b, "carol", "lobby")
    connect(b, "carol", "lobby")        # both of carol's tabs die with b
    b.abandon()
    wait_until(lambda: [n for n in notices(watcher) if n[0] == "user-disconnected"], timeout=10)
    settle("lobby", [a], [watcher])
    gone = [n for n in notices(watcher) if n[0] == "user-disconnected"]
    assert [n[1] for n in gone] == ["carol"]  # once, for carol; bob is still in the room
    assert a.get_room_users("lobby") == {"walt", "bob"}
    assert carol_b not in {m.connection_id for m in a.get_room_members("lobby")}


def test_off_tells_nothing(make_manager: Make) -> None:
    a, b = make_manager(room_notices="off"), make_manager(room_notices="off")
    _, watcher = connect(a, "walt", "lobby")
    t1, _ = connect(b, "bob", "lobby")
    t2, _ = connect(a, "bob", "lobby")
    b.leave_room(t1, "lobby")
    a.remove_connection(t2)
    t3, _ = connect(b, "carol", "lobby")
    b.abandon()
    wait_until(lambda: a.get_room_users("lobby") == {"walt"}, timeout=10)  # carol cleaned up
    settle("lobby", [a], [watcher])
    assert notices(watcher) == [] and t3 not in a.get_user_connections("carol")


@pytest.mark.parametrize("value", ["", "user", "Users", "none"])
def test_an_unknown_mode_is_a_config_error(make_manager: Make, value: Any) -> None:
    with pytest.raises(ConfigError, match="room_notices"):
        make_manager(room_notices=value)
