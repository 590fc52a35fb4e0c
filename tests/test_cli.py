"""``python -m dcm_sync``, run as a user would: a separate process against servers on Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.polling import wait_until
from testkit.recording import connect
from testkit.redis_server import RedisServer, free_port
from tests.helpers.managers import Managers

ROOT = Path(__file__).resolve().parents[1]
KEY = "k" * 32  # a signing key, long enough


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m dcm_sync ARGS`` from the project's root, in an environment without DCM_*
    or REDIS_URL but ``env``."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("DCM_") and k not in ("REDIS_URL", "SERVER_HOST", "PORT")}
    return subprocess.run([sys.executable, "-m", "dcm_sync", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, env={**clean, **env})


def ok(*args: str, **env: str) -> str:
    done = cli(*args, **env)
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


def as_json(*args: str, **env: str) -> Any:
    return json.loads(ok(*args, "--json", **env))


@pytest.fixture
def make(redis_server: RedisServer, prefix: str) -> Iterator[Managers]:
    # signing servers: the CLI's kick-user and close-room are accepted with DCM_SIGNING_KEYS
    managers = Managers(prefix, redis_url=redis_server.url, heartbeat_ttl=10.0,
                        signing_keys=(KEY,))
    yield managers
    managers.shutdown_all()


@pytest.fixture
def env(redis_server: RedisServer, prefix: str) -> dict[str, str]:
    """The servers' settings, as the command line reads them from the environment."""
    return {"DCM_REDIS_URL": redis_server.url, "DCM_KEY_PREFIX": prefix, "DCM_SIGNING_KEYS": KEY}


def test_servers_and_stats(make: Managers, redis_server: RedisServer, prefix: str) -> None:
    a, b = make(server_port=4001), make(server_port=4002)
    connect(a, "alice", "lobby")
    connect(a, "bob", "lobby", "games")
    connect(b, "carol")
    where = ("--redis-url", redis_server.url, "--key-prefix", prefix)  # the flags, not the env

    found = as_json(*where, "servers")["servers"]
    assert sorted((s["server_id"], s["port"], s["active_connections"]) for s in found) == sorted(
        [(a.server_id, 4001, 2), (b.server_id, 4002, 1)])
    assert all(s["host"] == "127.0.0.1" and s["pid"] == os.getpid() for s in found)
    table = ok(*where, "servers").splitlines()
    assert table[0].split() == ["SERVER", "ID", "HOST", "PORT", "PID", "HEARTBEAT", "CONNECTIONS"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows[a.server_id][1:4] == ["127.0.0.1", "4001", str(os.getpid())]
    assert rows[a.server_id][-1] == "2" and rows[b.server_id][-1] == "1"

    assert as_json(*where, "stats") == {"total_connections": 3, "total_rooms": 2,
                                        "active_servers": 2}
    assert ok(*where, "stats").splitlines() == ["total connections  3", "total rooms        2",
                                                "active servers     2"]


def test_rooms_largest_first_in_pages(make: Managers, env: dict[str, str]) -> None:
    a, b = make(), make()
    for i, mgr in enumerate([a, b, a]):
        connect(mgr, f"u{i}", "big", *(["mid"] if i < 2 else []))
    connect(b, "u3", "b-one")
    connect(a, "u4", "a-one")

    first = as_json("rooms", "--limit", "2", **env)
    assert first == {"rooms": [{"room_id": "big", "members": 3}, {"room_id": "mid", "members": 2}],
                     "offset": 0, "limit": 2, "next_offset": 2}
    rest = as_json("rooms", "--offset", "2", "--limit", "2", **env)
    assert [(r["room_id"], r["members"]) for r in rest["rooms"]] == [("a-one", 1), ("b-one", 1)]
    assert rest["next_offset"] is None
    assert as_json("rooms", "--offset", "4", **env)["rooms"] == []

    assert ok("rooms", "--limit", "2", **env).splitlines() == [
        "ROOM  MEMBERS", "big   3", "mid   2", "rooms 1-2; more with --offset 2"]
    assert ok("rooms", **env).splitlines()[1:] == [
        "big    3", "mid    2", "a-one  1", "b-one  1", "rooms 1-4"]
    assert ok("rooms", "--offset", "9", **env) == "no rooms from offset 9\n"


def test_room_members_and_user_connections(make: Managers, env: dict[str, str]) -> None:
    a, b = make(), make()
    ca, _ = connect(a, "alice", "lobby")
    ca2, _ = connect(b, "alice", "lobby")
    cb, _ = connect(b, "bob", "lobby")

    members = as_json("room", "lobby", **env)
    assert members["room_id"] == "lobby"
    assert sorted((m["connection_id"], m["user_id"], m["server_id"]) for m in members["members"]) \
        == sorted([(ca, "alice", a.server_id), (ca2, "alice", b.server_id), (cb, "bob", b.server_id)])
    table = ok("room", "lobby", **env).splitlines()
    assert table[0].split() == ["CONNECTION", "ID", "USER", "ID", "SERVER", "ID"]
    assert sorted(line.split() for line in table[1:]) == sorted(
        [[ca, "alice", a.server_id], [ca2, "alice", b.server_id], [cb, "bob", b.server_id]])

    assert sorted(as_json("user", "alice", **env)["connections"]) == sorted([ca, ca2])
    assert sorted(ok("user", "alice", **env).splitlines()[1:]) == sorted([ca, ca2])

    # nothing there is an answer, not a failure
    assert as_json("room", "nobody-here", **env) == {"room_id": "nobody-here", "members": []}
    assert ok("room", "nobody-here", **env) == "room 'nobody-here' has no members\n"
    assert as_json("user", "ghost", **env) == {"user_id": "ghost", "connections": []}
    assert ok("user", "ghost", **env) == "user 'ghost' has no connections\n"


def test_kick_user_closes_the_users_sockets_on_every_server(make: Managers,
                                                            env: dict[str, str]) -> None:
    a, b = make(), make()
    _, wa = connect(a, "alice", "lobby")
    _, wa2 = connect(b, "alice")
    cb, wb = connect(b, "bob", "lobby")

    assert as_json("kick-user", "alice", "--code", "4000", "--reason", "bye", **env) == {
        "user_id": "alice", "closed": 2}
    wait_until(lambda: wa.closed and wa2.closed, what="alice's sockets closed")
    assert not wb.closed
    assert [m.connection_id for m in a.get_room_members("lobby")] == [cb]
    assert ok("kick-user", "alice", **env) == "closed 0 connection(s) of user 'alice'\n"


def test_close_room_empties_it_and_members_stay_connected(make: Managers,
                                                          env: dict[str, str]) -> None:
    a, b = make(), make()
    ca, wa = connect(a, "alice", "lobby", "games")
    cb, wb = connect(b, "bob", "lobby")

    assert ok("close-room", "lobby", **env) == (
        "took 2 member(s) out of room 'lobby' (they stay connected)\n")
    assert a.get_room_members("lobby") == []
    assert as_json("room", "lobby", **env)["members"] == []
    wait_until(lambda: "lobby" not in a.rooms_of(ca) and "lobby" not in b.rooms_of(cb),
               what="the servers took their members out")
    assert a.rooms_of(ca) == frozenset({"games"})
    assert not wa.closed and not wb.closed
    assert as_json("close-room", "lobby", **env) == {"room_id": "lobby", "removed": 0}


def test_memory_backend_is_refused() -> None:
    for args in ((), ("--redis-url", "memory://shared")):
        done = cli(*args, "stats")
        assert done.returncode == 2 and done.stdout == ""
        assert "needs Redis" in done.stderr and "memory://" in done.stderr


def test_unreachable_redis_is_one_line_and_exit_1() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    for command in (["servers"], ["rooms", "--json"], ["kick-user", "alice"]):
        done = cli("--redis-url", url, *command)
        assert (done.returncode, done.stdout) == (1, ""), done
        assert len(done.stderr.splitlines()) == 1 and "unreachable" in done.stderr, done.stderr


def test_bad_arguments_exit_2(redis_server: RedisServer) -> None:
    where = ("--redis-url", redis_server.url)
    for args in (["rooms", "--limit", "0"], ["rooms", "--offset", "-1"], ["no-such-command"],
                 ["room"], ["kick-user", "alice", "--code", "999"],
                 ["--key-prefix", "{bad}", "stats"]):
        done = cli(*where, *args)
        assert (done.returncode, done.stdout) == (2, ""), (args, done)
        assert done.stderr
