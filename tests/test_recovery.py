"""Connection-state recovery (dcm_sync/recovery.py) on memory://, one Redis and Sentinel: the
protocol frames of a recoverable connection, suspending a dropped one, resuming it on another
server with what it missed (in order, once each), the window expiring, gaps that cannot be
filled, tokens that are forged or used twice, and the server that held it dying or shutting
down."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dcm_sync import ConfigError, DistributedConnectionManager, ResumeRefusedError
from dcm_sync.recovery import MARGIN
from testkit.polling import wait_until
from testkit.recording import RecordingSocket
from testkit.redis_server import RedisServer
from tests.helpers.managers import Managers

WINDOW = dict(recovery_window=30.0, history_rooms=("chat-*",), room_notices="connections")


@pytest.fixture(params=["memory", "redis", pytest.param("sentinel", marks=pytest.mark.topology)])
def make(request: pytest.FixtureRequest, prefix: str) -> Iterator[Managers]:
    """Managers on each backend that can recover connections (Redis Cluster cannot yet)."""
    if request.param == "memory":
        url = f"memory://{prefix}"
    elif request.param == "sentinel":
        url = request.getfixturevalue("redis_sentinel").url
    else:
        url = request.getfixturevalue("redis_server").url
    managers = Managers(prefix, redis_url=url, **WINDOW)
    yield managers
    managers.shutdown_all()


def frames(ws: RecordingSocket) -> list[dict[str, Any]]:
    return [json.loads(f) for f in list(ws.frames)]


def app_messages(ws: RecordingSocket) -> list[Any]:
    """What the app sent, in order: the ``d`` of room and direct frames."""
    return [f["d"] for f in frames(ws) if f.get("t") in ("r", "d")]


def hello(ws: RecordingSocket) -> dict[str, Any]:
    wait_until(lambda: ws.frames)
    first = frames(ws)[0]
    assert first["t"] == "hello" and first["dcm"] == 1
    return first


def positions(ws: RecordingSocket) -> dict[str, tuple[str, int]]:
    """What a client keeps: the last position of each room (from messages and joins)."""
    out: dict[str, tuple[str, int]] = {}
    for f in frames(ws):
        if f.get("t") in ("r", "j") and "o" in f:
            out[f["r"]] = (f["e"], f["o"])
    return out


def last_direct(ws: RecordingSocket) -> int:
    return max([f["n"] for f in frames(ws) if f.get("t") == "d" and "n" in f], default=0)


def joined(mgr: DistributedConnectionManager, user: str, *rooms: str,
           recoverable: bool = True) -> tuple[str, RecordingSocket]:
    ws = RecordingSocket()
    cid = mgr.register_connection(ws, user, recoverable=recoverable)
    for room in rooms:
        mgr.join_room(cid, room)
    return cid, ws


def notices(ws: RecordingSocket, kind: str) -> list[dict[str, Any]]:
    """The notices of ``kind`` a plain connection got (its other frames may be any text)."""
    found = [json.loads(f) for f in list(ws.frames) if f.startswith('{"type"')]
    return [n for n in found if n["type"] == kind]


def test_a_recoverable_connection_gets_protocol_frames(make: Managers) -> None:
    a = make()
    cid, ws = joined(a, "alice", "chat-1", "plain")
    first = hello(ws)
    assert first["id"] == cid and first["token"].startswith(cid + ".") and "recovered" not in first
    a.broadcast_to_room("chat-1", {"n": 1})
    a.broadcast_to_room("plain", "p")
    a.send_to_connection(cid, "direct")
    wait_until(lambda: len(app_messages(ws)) == 3)
    got = frames(ws)
    assert got[1] == {"t": "j", "r": "chat-1", "e": got[1]["e"], "o": 0}
    by_kind = {(f["t"], f.get("r")): f for f in got[2:]}
    assert by_kind[("r", "chat-1")] == {"t": "r", "r": "chat-1", "e": got[1]["e"], "o": 1,
                                        "d": '{"n":1}'}
    assert by_kind[("r", "plain")] == {"t": "r", "r": "plain", "d": "p"}
    assert by_kind[("d", None)] == {"t": "d", "n": 1, "d": "direct"}
    # a plain connection in the same room gets the message as before
    _, plain = joined(a, "bob", "chat-1", recoverable=False)
    a.broadcast_to_room("chat-1", "hi")
    wait_until(lambda: "hi" in plain.frames)


def test_a_dropped_connection_resumes_on_another_server_with_all_it_missed(
        make: Managers) -> None:
    a, b = make(), make()
    cid, ws = joined(a, "alice", "chat-1", "chat-2")
    _, witness = joined(b, "wendy", "chat-1", recoverable=False)
    a.broadcast_to_room("chat-1", "before")
    wait_until(lambda: "before" in app_messages(ws))
    token, seen, directs = hello(ws)["token"], positions(ws), last_direct(ws)
    a.release_connection(cid, ws)  # the socket dropped
    assert cid in {m.connection_id for m in b.get_room_members("chat-1")}
    for n in range(5):
        (a, b)[n % 2].broadcast_to_room(f"chat-{1 + n % 2}", f"missed {n}")
    a.send_to_connection(cid, "direct 1")
    b.send_to_user("alice", "direct 2")
    ws2 = RecordingSocket()
    cid2, recovered = b.resume_connection(ws2, "alice", token, seen, directs)
    assert (cid2, recovered) == (cid, True)
    b.broadcast_to_room("chat-1", "after")
    wait_until(lambda: "after" in app_messages(ws2))
    first = hello(ws2)
    assert first["recovered"] is True and first["id"] == cid and first["token"] != token
    got = app_messages(ws2)
    rooms_1 = [m for m in got if m in ("missed 0", "missed 2", "missed 4", "after")]
    assert rooms_1 == ["missed 0", "missed 2", "missed 4", "after"]
    assert [m for m in got if m in ("missed 1", "missed 3")] == ["missed 1", "missed 3"]
    assert [m for m in got if m.startswith("direct")] == ["direct 1", "direct 2"]
    assert len(got) == 8  # once each
    assert got.index("after") == 7  # nothing new before what was missed
    assert notices(witness, "user-disconnected") == []
    # the token was used: a second resume with it is refused
    with pytest.raises(ResumeRefusedError):
        a.resume_connection(RecordingSocket(), "alice", token, seen, directs)


def test_forged_and_foreign_tokens_are_refused(make: Managers) -> None:
    a, b = make(), make()
    cid, ws = joined(a, "alice", "chat-1")
    token = hello(ws)["token"]
    a.release_connection(cid, ws)
    for user, bad in (("alice", cid + ".forged-secret"), ("mallory", token),
                      ("alice", "not-a-token"), ("alice", "")):
        with pytest.raises(ResumeRefusedError):
            b.resume_connection(RecordingSocket(), user, bad)
    assert b.resume_connection(RecordingSocket(), "alice", token)[0] == cid  # still valid


def test_the_window_ends_with_one_departure(make: Managers) -> None:
    a, b = make(recovery_window=0.5), make(recovery_window=0.5)
    cid, ws = joined(a, "alice", "chat-1")
    _, witness = joined(b, "wendy", "chat-1", recoverable=False)
    token = hello(ws)["token"]
    a.release_connection(cid, ws)
    wait_until(lambda: notices(witness, "user-disconnected"), timeout=10)
    time.sleep(0.5)  # a second notice would have come by now
    [notice] = notices(witness, "user-disconnected")
    assert notice["connectionId"] == cid and notice["reason"] == "timeout"
    assert cid not in {m.connection_id for m in b.get_room_members("chat-1")}
    with pytest.raises(ResumeRefusedError):
        b.resume_connection(RecordingSocket(), "alice", token)


def test_a_gap_the_history_cannot_fill_is_told(make: Managers) -> None:
    a, b = make(history_size=3), make(history_size=3)
    cid, ws = joined(a, "alice", "chat-1")
    token, seen = hello(ws)["token"], positions(ws)
    a.release_connection(cid, ws)
    for n in range(5):
        b.broadcast_to_room("chat-1", n)
    ws2 = RecordingSocket()
    assert b.resume_connection(ws2, "alice", token, seen)[1] is False
    assert hello(ws2)["recovered"] is False
    wait_until(lambda: app_messages(ws2) == ["2", "3", "4"])  # what is left, once


def test_the_mailbox_is_bounded_and_an_overflow_is_told(make: Managers) -> None:
    a, b = make(mailbox_size=2), make(mailbox_size=2)
    cid, ws = joined(a, "alice")
    token = hello(ws)["token"]
    a.release_connection(cid, ws)
    for n in range(4):
        b.send_to_connection(cid, f"d{n}")
    ws2 = RecordingSocket()
    assert b.resume_connection(ws2, "alice", token, {}, 0)[1] is False
    wait_until(lambda: app_messages(ws2) == ["d2", "d3"])
    # within the bound, nothing is lost
    token = hello(ws2)["token"]
    b.release_connection(cid, ws2)
    b.send_to_connection(cid, "d4")
    ws3 = RecordingSocket()
    assert a.resume_connection(ws3, "alice", token, {}, last_direct(ws2))[1] is True
    wait_until(lambda: app_messages(ws3) == ["d4"])


def test_a_long_gap_is_replayed_in_pages_even_before_anything_was_received(
        make: Managers) -> None:
    # more than one page (200) of room messages and of direct messages, missed by a client
    # that dropped before it got any message: its only positions are those of its joins
    a, b = make(history_size=1000, mailbox_size=500), make(history_size=1000, mailbox_size=500)
    cid, ws = joined(a, "alice", "chat-1")
    wait_until(lambda: positions(ws))
    token, seen = hello(ws)["token"], positions(ws)
    assert app_messages(ws) == [] and seen["chat-1"][1] == 0
    a.release_connection(cid, ws)
    for n in range(450):
        (a, b)[n % 2].broadcast_to_room("chat-1", f"r{n}")
    for n in range(250):
        b.send_to_connection(cid, f"d{n}")
    ws2 = RecordingSocket()
    assert b.resume_connection(ws2, "alice", token, seen, 0) == (cid, True)
    expected = [f"r{n}" for n in range(450)] + [f"d{n}" for n in range(250)]
    wait_until(lambda: len(app_messages(ws2)) >= len(expected), timeout=20)
    assert app_messages(ws2) == expected  # rooms first, then the mailbox; in order, once each


def test_a_room_without_history_cannot_be_recovered(make: Managers) -> None:
    a, b = make(), make()
    cid, ws = joined(a, "alice", "plain")
    token = hello(ws)["token"]
    a.release_connection(cid, ws)
    ws2 = RecordingSocket()
    assert b.resume_connection(ws2, "alice", token, {}, 0) == (cid, False)
    assert cid in {m.connection_id for m in b.get_room_members("plain")}  # rooms kept


def test_resuming_a_socket_still_open_elsewhere_closes_the_old_one(make: Managers) -> None:
    """A client that lost its network reconnects before its old server noticed: the old
    socket is let go (closed with 4000), nobody is told, the connection lives on."""
    a, b = make(), make()
    cid, ws = joined(a, "alice", "chat-1")
    _, witness = joined(b, "wendy", "chat-1", recoverable=False)
    token, seen = hello(ws)["token"], positions(ws)
    ws2 = RecordingSocket()
    assert b.resume_connection(ws2, "alice", token, seen, 0) == (cid, True)
    wait_until(lambda: ws.closed and cid not in a.local)
    a.release_connection(cid, ws)  # its view ends: the connection is not a's any more
    b.broadcast_to_room("chat-1", "still here")
    wait_until(lambda: "still here" in app_messages(ws2))
    assert notices(witness, "user-disconnected") == []
    assert [m.server_id for m in b.get_room_members("chat-1") if m.connection_id == cid] == [
        b.server_id]


def test_a_dead_servers_connections_are_suspended_then_resumed_or_expired(
        make: Managers) -> None:
    a, b = make(recovery_window=1.0), make(recovery_window=1.0)
    back, ws_back = joined(a, "alice", "chat-1")
    gone, _ = joined(a, "bob", "chat-1")
    _, witness = joined(b, "wendy", "chat-1", recoverable=False)
    token, seen = hello(ws_back)["token"], positions(ws_back)
    a.abandon()  # killed: the cleanup by b suspends its recoverable connections
    wait_until(lambda: {m.server_id for m in b.get_room_members("chat-1")} == {b.server_id},
               timeout=10)
    b.broadcast_to_room("chat-1", "while away")
    ws2 = RecordingSocket()
    assert b.resume_connection(ws2, "alice", token, seen, 0) == (back, True)
    wait_until(lambda: app_messages(ws2) == ["while away"])
    wait_until(lambda: notices(witness, "user-disconnected"), timeout=10)
    time.sleep(0.3)
    assert [n["connectionId"] for n in notices(witness, "user-disconnected")] == [gone]


def test_a_graceful_shutdown_is_not_a_departure(make: Managers) -> None:
    a, b = make(), make()
    cid, ws = joined(a, "alice", "chat-1")
    _, witness = joined(b, "wendy", "chat-1", recoverable=False)
    token, seen = hello(ws)["token"], positions(ws)
    a.shutdown()  # SIGTERM: clients get 1001 and come back elsewhere
    b.broadcast_to_room("chat-1", "during the deploy")
    ws2 = RecordingSocket()
    assert b.resume_connection(ws2, "alice", token, seen, 0) == (cid, True)
    wait_until(lambda: app_messages(ws2) == ["during the deploy"])
    b.broadcast_to_room("chat-1", "marker")
    wait_until(lambda: "marker" in witness.frames)
    assert notices(witness, "user-disconnected") == []


def test_recovery_is_refused_where_it_cannot_work(prefix: str,
                                                  redis_cluster: Any) -> None:
    with pytest.raises(ConfigError, match="Cluster"):
        Managers(prefix, redis_url=redis_cluster.url, **WINDOW)()
    with pytest.raises(ResumeRefusedError, match="off"):
        Managers(prefix, redis_url=f"memory://{prefix}")().resume_connection(
            RecordingSocket(), "alice", "1" * 19 + ".x")


def test_release_without_recovery_removes(make: Managers) -> None:
    a: DistributedConnectionManager = make(recovery_window=0.0)
    cid, ws = joined(a, "alice", "chat-1")
    hello(ws)
    a.release_connection(cid, ws)
    assert a.get_room_members("chat-1") == []
    a.release_connection(cid, ws)  # idempotent



def test_only_a_suspended_record_expires(redis_server: RedisServer, prefix: str) -> None:
    """A live connection's record has no TTL (its server's set bounds its life); a suspended
    one's recovery hash expires a while after its window (the connection is gone with it), and
    resuming it takes the TTL off again."""
    managers = Managers(prefix, redis_url=redis_server.url, **WINDOW)
    try:
        a, b = managers(), managers()
        cid, ws = joined(a, "alice", "chat-1")
        r = redis_server.client()
        key = f"{prefix}recovery:{{{cid[:4]}}}{cid[4:]}"
        record = f"{prefix}connections:{{{cid[:4]}}}:{int(cid[4:]) % 256:02x}"
        assert r.pttl(key) == -1 and r.pttl(record) == -1
        token = hello(ws)["token"]
        a.release_connection(cid, ws)
        assert 30_000 < r.pttl(key) <= (30 + MARGIN) * 1000
        assert b.resume_connection(RecordingSocket(), "alice", token)[0] == cid
        assert r.pttl(key) == -1 and r.pttl(record) == -1
    finally:
        managers.shutdown_all()


def test_a_suspended_connection_is_gone_once_its_recovery_hash_expires(
        redis_server: RedisServer, prefix: str) -> None:
    """Its record stays in its bucket, which never expires: the connection is gone all the same,
    everywhere it is looked up, and its leftovers are deleted as it is found so."""
    managers = Managers(prefix, redis_url=redis_server.url, **WINDOW)
    try:
        a, b = managers(), managers()
        cid, ws = joined(a, "alice", "chat-1")
        other, _ = joined(b, "bob", "chat-1", recoverable=False)
        token = hello(ws)["token"]
        a.release_connection(cid, ws)
        r = redis_server.client()
        record = f"{prefix}connections:{{{cid[:4]}}}:{int(cid[4:]) % 256:02x}"
        assert r.hexists(record, cid)
        r.delete(f"{prefix}recovery:{{{cid[:4]}}}{cid[4:]}")  # as its TTL would
        assert [m.connection_id for m in b.get_room_members("chat-1")] == [other]
        assert not r.hexists(record, cid)
        assert b.get_user_connections("alice") == []
        assert b.send_to_connection(cid, "too late") is False
        with pytest.raises(ResumeRefusedError):
            b.resume_connection(RecordingSocket(), "alice", token)
    finally:
        managers.shutdown_all()
