"""examples/gevent_chat_server.py as users see it: server processes sharing one Redis, real
WebSocket clients, server crashes, graceful stops and a Redis restart."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import websocket

from dcm_sync.backends.redis_keys import KeyLayout
from testkit.chat import ChatClient, ChatServer, Predicate, is_departure, is_message, say_until_received
from testkit.closing import ws_connect
from testkit.keys import index_servers, redis_rooms_naming
from testkit.redis_server import RedisServer

Launch = Callable[..., list[ChatServer]]
Connect = Callable[[ChatServer, str], ChatClient]


def flush(sender: ChatClient, room: str, *receivers: ChatClient) -> None:
    """Say a marker and wait until every receiver has it: what was sent before has arrived."""
    seq = f"flush-{uuid.uuid4().hex}"
    sender.say(room, "flush", seq=seq)
    for client in (sender, *receivers):
        client.wait_for(is_message(seq, room))


# ---------------------------------------------------------------------------------------- tests
def test_room_message_reaches_both_servers_once(redis_server: RedisServer, launch: Launch,
                                                connect: Connect) -> None:
    a, b = launch(redis_server.url, count=2)
    alice, bob = connect(a, "alice"), connect(b, "bob")
    assert alice.server_id != bob.server_id
    alice.join("lobby")
    bob.join("lobby")

    alice.say("lobby", "hello from A", seq=1, ts=12.5)

    expected = {"type": "message", "room": "lobby", "from": "alice", "text": "hello from A",
                "seq": 1, "ts": 12.5}
    assert bob.wait_for(is_message(1)) == expected
    assert alice.wait_for(is_message(1)) == expected  # no exclude: the sender gets it too
    flush(alice, "lobby", bob)
    assert len(bob.matching(is_message(1))) == 1
    assert len(alice.matching(is_message(1))) == 1
    for server, client in ((a, alice), (b, bob)):
        stats = server.stats()
        assert stats is not None
        assert (stats["total_connections"], stats["active_servers"], stats["driver"]) == (2, 2, "gevent")
        assert (stats["local_connections"], stats["server_id"]) == (1, client.server_id)


def test_direct_message_across_servers(redis_server: RedisServer, launch: Launch, connect: Connect) -> None:
    a, b = launch(redis_server.url, count=2)
    alice, bob = connect(a, "alice"), connect(b, "bob")

    assert alice.direct(bob.cid, "psst") is True
    assert bob.wait_for(lambda f: f.get("type") == "direct") == {
        "type": "direct", "from": "alice", "connectionId": alice.cid, "text": "psst"}

    assert alice.direct(uuid.uuid4().hex, "anyone?") is False
    assert not alice.matching(lambda f: f.get("type") in ("direct", "error"))


def test_killed_server_is_cleaned_up_and_rooms_are_told(redis_server: RedisServer, prefix: str,
                                                        launch: Launch, connect: Connect) -> None:
    a, b = launch(redis_server.url, count=2)
    alice = connect(a, "alice")
    bob, carol = connect(b, "bob"), connect(b, "carol")
    alice.join("lobby")
    alice.join("games")
    bob.join("lobby")
    carol.join("lobby")
    carol.join("games")
    b_id, b_cids = bob.server_id, {bob.cid, carol.cid}
    a.wait_stats(lambda s: s["total_connections"] == 3)

    b.kill()  # SIGKILL: no goodbye, only the heartbeat expiring tells

    expected = {("lobby", bob), ("lobby", carol), ("games", carol)}
    for room, client in expected:
        notice = alice.wait_for(is_departure(client.cid, room), timeout=15)
        assert notice == {"type": "user-disconnected", "roomId": room, "userId": client.user,
                          "connectionId": client.cid, "reason": "server-failure"}
    stats = a.wait_stats(lambda s: s["active_servers"] == 1 and s["total_connections"] == 1)
    assert [s["server_id"] for s in stats["server_stats"]] == [alice.server_id]
    # the cleanup is finished (the index is the last thing it clears): no late duplicates
    flush(alice, "lobby")
    for room, client in expected:
        assert len(alice.matching(is_departure(client.cid, room))) == 1, alice.frames
    assert not alice.matching(lambda f: f.get("type") == "user-disconnected"
                              and f.get("connectionId") not in b_cids)

    r, keys = redis_server.client(), KeyLayout(prefix)
    assert b_id not in index_servers(redis_server, prefix)
    assert not any(r.hexists(keys.connection(cid), cid) for cid in b_cids)
    assert not r.exists(keys.server(b_id), *keys.server_connection_sets(b_id))
    assert redis_rooms_naming(redis_server, prefix, b_cids) == {}
    assert r.smembers(keys.room("lobby")) == {alice.cid.encode()}
    # A keeps working
    assert alice.direct(bob.cid, "still there?") is False


def test_sigterm_stops_a_server_gracefully(redis_server: RedisServer, prefix: str,
                                           launch: Launch, connect: Connect) -> None:
    a, b = launch(redis_server.url, count=2)
    alice, bob = connect(a, "alice"), connect(b, "bob")
    alice.join("lobby")
    bob.join("lobby")
    b_id = bob.server_id

    b.terminate()

    notice = alice.wait_for(is_departure(bob.cid, "lobby"), timeout=10)
    assert notice == {"type": "user-disconnected", "roomId": "lobby", "userId": "bob",
                      "connectionId": bob.cid, "reason": "shutdown"}
    assert b.proc.wait(timeout=10) == 0, b.log()
    assert bob.closed.wait(5), "B did not close its client's socket"
    r, keys = redis_server.client(), KeyLayout(prefix)
    assert not r.exists(keys.server(b_id))
    assert not r.hexists(keys.connection(bob.cid), bob.cid)
    assert b_id not in index_servers(redis_server, prefix)
    assert a.wait_stats(lambda s: s["active_servers"] == 1)["total_connections"] == 1
    flush(alice, "lobby")
    assert len(alice.matching(is_departure(bob.cid))) == 1


def test_servers_recover_after_redis_restart(own_redis: RedisServer, prefix: str, launch: Launch,
                                             connect: Connect) -> None:
    a, b = launch(own_redis.url, count=2)
    alice, bob, dave = connect(a, "alice"), connect(b, "bob"), connect(b, "dave")
    alice.join("lobby")
    bob.join("lobby")
    dave.join("lobby")
    dave.close()  # gone before the restart: must not come back
    alice.wait_for(is_departure(dave.cid))
    a.wait_stats(lambda s: s["total_connections"] == 2)

    own_redis.restart()  # comes back empty

    def recovered(stats: dict[str, object]) -> bool:
        return stats["active_servers"] == 2 and stats["total_connections"] == 2
    for server in (a, b):
        server.wait_stats(recovered, timeout=15)
    say_until_received(alice, bob, "lobby")
    say_until_received(bob, alice, "lobby")
    lobby = KeyLayout(prefix).room("lobby")
    assert own_redis.client().smembers(lobby) == {alice.cid.encode(), bob.cid.encode()}


def test_example_on_memory_backend(launch: Launch, connect: Connect) -> None:
    (server,) = launch(None)  # no REDIS_URL: the embedded memory:// backend
    assert server.wait_stats(lambda s: s["active_servers"] == 1)["driver"] == "gevent"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws_connect(f"ws://127.0.0.1:{server.port}/ws", timeout=5)
    assert refused.value.status_code == 400
    alice, bob = connect(server, "alice"), connect(server, "bob")
    alice.join("lobby")
    bob.join("lobby")

    bob.say("lobby", "hi", seq=7)

    for client in (alice, bob):
        assert client.wait_for(is_message(7)) == {"type": "message", "room": "lobby", "from": "bob",
                                                  "text": "hi", "seq": 7}
    # bad commands get an error reply and the socket stays usable
    is_error: Predicate = lambda f: f.get("type") == "error"  # noqa: E731
    assert "shout" in alice.request({"op": "shout"}, is_error)["error"]
    start = alice.mark()
    alice.ws.send("not json")
    assert alice.wait_for(is_error, start=start)["error"]
    assert alice.direct(bob.cid, "still here") is True
    assert server.wait_stats(lambda s: s["total_connections"] == 2)["active_servers"] == 1
