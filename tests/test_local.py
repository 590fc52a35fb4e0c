from __future__ import annotations

import pytest

from dcm_sync import ConnectionLimitError, LocalConnectionManager
from testkit.recording import RecordingSocket
from tests.helpers.pair_socket import PairSocket


def test_rooms_track_first_and_last_local_member() -> None:
    local = LocalConnectionManager(max_connections=10)
    local.add("a", RecordingSocket(), "u1")
    local.add("b", RecordingSocket(), "u2")
    assert local.join("a", "r") is True
    assert local.join("b", "r") is False
    assert {c.connection_id for c in local.members("r")} == {"a", "b"}
    assert [c.connection_id for c in local.members("r", exclude=["a"])] == ["b"]
    assert local.leave("a", "r") is False
    assert local.leave("b", "r") is True
    assert local.rooms() == []
    assert local.join("zzz", "r") is None


def test_remove_reports_emptied_rooms() -> None:
    local = LocalConnectionManager()
    local.add("a", RecordingSocket(), "u1")
    local.add("b", RecordingSocket(), "u2")
    local.join("a", "r1")
    local.join("a", "r2")
    local.join("b", "r2")
    removed = local.remove("a")
    assert removed is not None
    conn, emptied = removed
    assert conn.user_id == "u1" and emptied == ["r1"]
    assert local.remove("a") is None
    assert len(local) == 1 and "a" not in local


def test_limit() -> None:
    local = LocalConnectionManager(max_connections=1)
    local.add("a", RecordingSocket(), "u")
    with pytest.raises(ConnectionLimitError):
        local.add("b", RecordingSocket(), "u")
    with pytest.raises(ValueError):
        LocalConnectionManager(max_connections=0)


def test_sockets_that_share_frames_get_the_prebuilt_frame() -> None:
    shared, own, plain = PairSocket(), PairSocket(shares_frames=False), RecordingSocket()
    lcm = LocalConnectionManager()
    a, b, c = lcm.add("a", shared, "u1"), lcm.add("b", own, "u2"), lcm.add("c", plain, "u3")
    wrong = b"\x81\x05HELLO"  # a prebuilt frame is used as is only where frames are shared
    assert a.send("hello", wrong) and b.send("hello", wrong) and c.send("hello", wrong)
    assert a.send("direct")
    shared.finish()
    own.finish()
    assert shared.read_frames() == [(1, b"HELLO"), (1, b"direct")]
    assert own.read_frames() == [(1, b"hello")]
    assert plain.frames == ["hello"]
