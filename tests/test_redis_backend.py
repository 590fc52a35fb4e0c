"""What the Redis backend writes, and how a manager survives its Redis restarting."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest
import redis

from dcm_sync import (
    BackendUnavailableError,
    Config,
    DistributedConnectionManager,
    create_distributed_connection_manager,
)
from dcm_sync.backends.redis_base import translate_errors
from dcm_sync.backends.redis_keys import KeyLayout, server_tag, unpack_record
from dcm_sync.errors import BackendError
from testkit.keys import indexed_rooms
from testkit.polling import wait_until
from testkit.recording import RecordingSocket
from testkit.redis_server import RedisServer, free_port
from tests.helpers.managers import FAST, STEADY


def keys(r: object, prefix: str) -> set[str]:
    return {k.decode() for k in r.scan_iter(match=prefix + "*")}  # type: ignore[attr-defined]


def test_layout(redis_server: RedisServer, prefix: str,
                redis_pair: list[DistributedConnectionManager]) -> None:
    # The names are written out here, not taken from KeyLayout, so that a layout change shows.
    a, b = redis_pair
    r = redis_server.client()
    cid = a.register_connection(RecordingSocket(), "alice", auth_token="s3cret-token")
    tag_a, tag_b = server_tag(a.server_id), server_tag(b.server_id)
    assert len(cid) == 19 and cid.isdigit() and cid.startswith(tag_a)
    a.join_room(cid, "lobby")
    a.join_room(cid, "room:with:colons")
    bucket = f"{int(cid[4:]) % 256:02x}"  # the id's last 15 digits mod 256, in hex
    k_conn = f"{prefix}connections:{{{cid[:4]}}}:{bucket}"
    k_conn_rooms = f"{prefix}connection-rooms:{{{cid[:4]}}}:{bucket}"
    lobby_bucket = "r" + hashlib.sha1(b"lobby").hexdigest()[:2]
    colons_bucket = "r" + hashlib.sha1(b"room:with:colons").hexdigest()[:2]
    k_lobby = f"{prefix}rooms:{{{lobby_bucket}}}lobby"
    k_colons = f"{prefix}rooms:{{{colons_bucket}}}room:with:colons"
    k_servers_a = f"{prefix}servers:{{{tag_a}}}{a.server_id}"
    k_servers_b = f"{prefix}servers:{{{tag_b}}}{b.server_id}"
    # the record, a field of its tag's bucket: the user's length, ':', the user, the server
    assert r.hgetall(k_conn) == {cid.encode(): f"5:alice{a.server_id}".encode()}
    assert r.object("encoding", k_conn) == b"listpack"
    # its rooms (a JSON array) in the same bucket of another hash
    assert json.loads(r.hget(k_conn_rooms, cid)) == ["lobby", "room:with:colons"]
    assert r.hlen(k_conn_rooms) == 1
    assert r.pttl(k_conn) == -1  # no TTL: it lives until removed (its server's set lists it)
    assert r.smembers(k_lobby) == {cid.encode()}
    assert r.smembers(k_colons) == {cid.encode()}
    # index:rooms is 256 buckets index:rooms:{rXX}: each room sits in its own room's bucket
    assert r.smembers(f"{prefix}index:rooms:{{{lobby_bucket}}}") >= {b"lobby"}
    assert r.smembers(f"{prefix}index:rooms:{{{colons_bucket}}}") >= {b"room:with:colons"}
    assert not r.exists(f"{prefix}index:rooms")
    buckets = [f"{prefix}index:rooms:{{r{i:02x}}}" for i in range(256)]
    assert set().union(*(r.smembers(k) for k in buckets)) == {b"lobby", b"room:with:colons"}
    assert indexed_rooms(r, prefix) == {"lobby", "room:with:colons"}
    # the server's connection ids, in 256 sets by id: the id's last 15 digits mod 256, in hex
    k_server_set = f"{prefix}server-connections:{{{tag_a}}}{a.server_id}:{bucket}"
    assert r.smembers(k_server_set) == {cid.encode()}
    alice_bucket = "u" + hashlib.sha1(b"alice").hexdigest()[:2]
    k_alice = f"{prefix}users:{{{alice_bucket}}}"  # the index by user: a bucket of users
    assert r.hgetall(k_alice) == {b"alice": cid.encode()}
    server = {k.decode(): v.decode() for k, v in r.hgetall(k_servers_a).items()}
    assert set(server) == {"serverId", "host", "port", "pid", "lastHeartbeat", "activeConnections"}
    assert 0 < r.pttl(k_servers_a) <= STEADY["heartbeat_ttl"] * 1000
    assert r.smembers(f"{prefix}index:servers") == {a.server_id.encode(), b.server_id.encode()}
    assert set(keys(r, prefix)) == {k_conn, k_conn_rooms, k_lobby, k_colons, k_servers_a,
                                    k_servers_b,
                                    f"{prefix}index:rooms:{{{lobby_bucket}}}",
                                    f"{prefix}index:rooms:{{{colons_bucket}}}",
                                    k_server_set,
                                    f"{prefix}index:servers", k_alice}
    # nothing anywhere holds the auth token
    for key in keys(r, prefix):
        assert b"s3cret-token" not in r.dump(key)
    a.leave_room(cid, "lobby")
    assert not r.exists(k_lobby)
    assert json.loads(r.hget(k_conn_rooms, cid)) == ["room:with:colons"]
    assert indexed_rooms(r, prefix) == {"room:with:colons"}
    a.remove_connection(cid)
    left = keys(r, prefix)
    assert left == {f"{prefix}index:servers", k_servers_a, k_servers_b}
    # a server's bus channel and a dead server's cleanup lock carry the server's tag too
    channels = {c.decode() for c in r.pubsub_channels(prefix + "server:*")}
    assert channels == {f"{prefix}server:{{{tag_a}}}{a.server_id}",
                        f"{prefix}server:{{{tag_b}}}{b.server_id}"}
    dead = "dead-server-1"
    assert a._backend.claim_cleanup(dead, a.server_id, 5.0)
    k_lock = f"{prefix}lock:cleanup:{{{server_tag(dead)}}}{dead}"
    assert r.get(k_lock) == a.server_id.encode()
    r.delete(k_lock)


def test_buckets_past_their_compact_limits_become_hash_tables_and_keep_working(
        redis_server: RedisServer, prefix: str,
        redis_pair: list[DistributedConnectionManager]) -> None:
    """Redis keeps a hash compact up to 512 fields of up to 64 bytes: past either, the bucket
    becomes a hash table, for good, and what it holds reads the same."""
    a, b = redis_pair
    r, k = redis_server.client(), KeyLayout(prefix)
    tabs = [a.register_connection(RecordingSocket(), "alice") for _ in range(4)]
    long_user = "u" * 70
    cid = b.register_connection(RecordingSocket(), long_user)
    for i in range(5):
        b.join_room(cid, f"a-room-with-a-long-name-{i}")
    # 4 ids would be 79 bytes: they moved to a set of their own, the bucket stays compact
    assert r.hget(k.user("alice"), "alice") == b"*"
    assert r.object("encoding", k.user("alice")) == b"listpack"
    assert r.smembers(k.user_set("alice")) == {t.encode() for t in tabs}
    assert r.object("encoding", k.user(long_user)) == b"hashtable"  # 70-byte field
    assert r.object("encoding", k.connection(cid)) == b"hashtable"
    assert r.object("encoding", k.connection_rooms(cid)) == b"hashtable"
    assert sorted(b.get_user_connections("alice")) == sorted(tabs)
    assert [(m.connection_id, m.user_id) for m in a.get_room_members("a-room-with-a-long-name-4")] \
        == [(cid, long_user)]
    a.leave_room(cid, "a-room-with-a-long-name-0")
    assert json.loads(r.hget(k.connection_rooms(cid), cid))[0] == "a-room-with-a-long-name-1"
    a.remove_connection(cid)
    for tab in tabs[1:]:
        b.remove_connection(tab)
    assert a.get_user_connections("alice") == [tabs[0]]
    assert r.hget(k.user("alice"), "alice") == tabs[0].encode()  # back in the field
    assert not r.exists(k.user_set("alice"))
    assert not r.exists(k.connection_rooms(cid))


def test_a_user_with_many_connections_keeps_them_in_a_set_of_their_own(
        redis_server: RedisServer, prefix: str,
        redis_pair: list[DistributedConnectionManager]) -> None:
    """One user id for every guest: each change is one set command, not a rewrite of the
    user's whole list, and the list reads the same on every server."""
    a, b = redis_pair
    r, k = redis_server.client(), KeyLayout(prefix)
    guests = [(a if i % 2 else b).register_connection(RecordingSocket(), "guest")
              for i in range(300)]
    assert sorted(a.get_user_connections("guest")) == sorted(guests)
    assert r.scard(k.user_set("guest")) == 300
    assert r.object("encoding", k.user("guest")) == b"listpack"
    assert a.send_to_user("guest", {"type": "hello"}) == 300
    for i, cid in enumerate(guests[:-2]):
        (a if i % 2 else b).remove_connection(cid)
    assert sorted(b.get_user_connections("guest")) == sorted(guests[-2:])
    assert not r.exists(k.user_set("guest"))
    assert set(r.hget(k.user("guest"), "guest").split()) == {g.encode() for g in guests[-2:]}
    for i, cid in enumerate(guests[-2:], start=298):
        (a if i % 2 else b).remove_connection(cid)
    assert a.get_user_connections("guest") == []
    assert not r.hexists(k.user("guest"), "guest")


def test_unpack_record() -> None:
    assert unpack_record(b"5:alicesrv-1:3000") == ("alice", "srv-1:3000")
    assert unpack_record("3+a:bsrv") == ("a:b", "srv")  # recoverable; a colon in the user
    assert unpack_record("2:\u00e9srv".encode()) == ("\u00e9", "srv")  # bytes, not characters
    assert unpack_record("1:") is None and unpack_record(None) is None
    assert unpack_record(b"alice") is None and unpack_record(b"9:short") is None


def test_shutdown_leaves_no_keys(redis_server: RedisServer, prefix: str) -> None:
    mgr = create_distributed_connection_manager(
        None, Config(redis_url=redis_server.url, key_prefix=prefix, **FAST))
    for i in range(5):
        cid = mgr.register_connection(RecordingSocket(), f"u{i}")
        mgr.join_room(cid, f"room{i % 2}")
    mgr.shutdown()
    assert keys(redis_server.client(), prefix) == set()


def test_unreachable_redis_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        create_distributed_connection_manager(
            None, Config(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.5))
    assert time.monotonic() - started < 10


def test_manager_recovers_after_redis_restart(prefix: str) -> None:
    server = RedisServer()
    server.start()
    made: list[DistributedConnectionManager] = []
    try:
        a, b = (create_distributed_connection_manager(
            None, Config(redis_url=server.url, key_prefix=prefix, redis_timeout=0.5, **FAST))
            for _ in range(2))
        made += [a, b]
        wa, wb = RecordingSocket(), RecordingSocket()
        ca = a.register_connection(wa, "alice")
        cb = b.register_connection(wb, "bob")
        a.join_room(ca, "r")
        b.join_room(cb, "r")
        server.restart()  # comes back empty
        wait_until(lambda: a.metrics()["reconnects"] >= 1 and b.metrics()["reconnects"] >= 1,
                   timeout=15)
        stats = wait_until(lambda: _stats_or_none(a), timeout=15)
        assert (stats.active_servers, stats.total_connections, stats.total_rooms) == (2, 2, 1)
        # cross-server delivery works again (resubscribed to the room)
        for attempt in range(100):
            a.broadcast_to_room("r", {"attempt": attempt})
            if wb.frames:
                break
            time.sleep(0.05)
        assert wb.messages()[0]["attempt"] >= 0
        assert b.send_to_connection(ca, "direct after restart") is True
        wait_until(lambda: "direct after restart" in wa.frames)
        r, layout = server.client(), KeyLayout(prefix)
        assert r.smembers(layout.room("r")) == {ca.encode(), cb.encode()}
        assert r.scard(layout.servers_index) == 2  # no duplicate server entry
        assert a.is_ready() and b.is_ready()
    finally:
        for m in made:
            m.shutdown()
        server.cleanup()


def _stats_or_none(mgr: DistributedConnectionManager, connections: int = 2) -> Any:
    try:
        s = mgr.get_distributed_stats()
    except BackendUnavailableError:
        return None
    return s if s.active_servers == 2 and s.total_connections == connections else None


def test_departure_during_outage_is_announced_after_redis_returns_empty(prefix: str) -> None:
    server = RedisServer()
    server.start()
    made: list[DistributedConnectionManager] = []
    try:
        a, b = (create_distributed_connection_manager(
            None, Config(redis_url=server.url, key_prefix=prefix, redis_timeout=0.5,
                         heartbeat_interval=0.5, heartbeat_ttl=2.0)) for _ in range(2))
        made += [a, b]
        wa, wb, wb2 = RecordingSocket(), RecordingSocket(), RecordingSocket()
        ca = a.register_connection(wa, "alice")
        cb = b.register_connection(wb, "bob")
        cb2 = b.register_connection(wb2, "bert")
        for cid, mgr in ((ca, a), (cb, b), (cb2, b)):
            mgr.join_room(cid, "lobby")
        server.stop()
        b.remove_connection(cb)  # Redis is away: removed here, announced later
        assert wb.closed
        assert wb2.of_type("user-disconnected")[0]["connectionId"] == cb  # local members at once
        server.start()  # back, empty
        notice = wait_until(lambda: wa.of_type("user-disconnected"), timeout=15)[0]
        assert (notice["connectionId"], notice["userId"], notice["reason"]) == (cb, "bob", "removed")
        stats = wait_until(lambda: _stats_or_none(a, connections=2), timeout=15)
        assert stats.total_rooms == 1
    finally:
        for m in made:
            m.shutdown()
        server.cleanup()


@pytest.mark.parametrize("reply", ["CLUSTERDOWN The cluster is down", "TRYAGAIN Multiple keys",
                                   "MASTERDOWN Link with MASTER is down",
                                   "LOADING Redis is loading the dataset in memory",
                                   "READONLY You can't write against a read only replica."])
def test_transient_redis_replies_are_unavailable_not_errors(reply: str) -> None:
    # a shard or a master between owners: the caller may retry, as for a lost connection
    from redis._parsers.base import BaseParser

    exc = BaseParser.parse_error(reply)  # what redis-py raises for that reply
    with pytest.raises(BackendUnavailableError, match="during stats"):
        with translate_errors("stats"):
            raise exc
    with pytest.raises(BackendUnavailableError, match="Cluster unavailable during stats"):
        with translate_errors("stats"):  # redis-py's own, when no node has the slot
            raise redis.exceptions.SlotNotCoveredError("Command # 1 requires a covered slot")
    with pytest.raises(BackendError) as caught:
        with translate_errors("stats"):
            raise BaseParser.parse_error("ERR unknown command")
    assert not isinstance(caught.value, BackendUnavailableError)


def test_the_hiredis_extra_is_what_redis_py_parses_with() -> None:
    # the hiredis extra's lower bound is one redis-py accepts (it ignores hiredis below 3.2)
    import hiredis
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE, f"redis-py {redis.__version__} ignores hiredis {hiredis.__version__}"
