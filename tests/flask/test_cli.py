"""``flask dcm ...``: the admin commands on the app's configuration."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask

from flask_ext import DistributedWebSockets
from testkit.polling import wait_until
from testkit.recording import connect
from testkit.redis_server import RedisServer, free_port
from tests.helpers.managers import Managers


@pytest.fixture
def make(redis_server: RedisServer, prefix: str) -> Iterator[Managers]:
    managers = Managers(prefix, redis_url=redis_server.url, heartbeat_ttl=10.0)
    yield managers
    managers.shutdown_all()


def make_app(**config: object) -> tuple[Flask, DistributedWebSockets]:
    app = Flask(f"cli-{uuid.uuid4().hex[:6]}")
    app.config.update(config)
    return app, DistributedWebSockets(app)


def test_flask_dcm_commands_use_the_apps_redis_and_prefix(make: Managers, redis_server: RedisServer,
                                                         prefix: str) -> None:
    a, b = make(), make()
    ca, wa = connect(a, "alice", "lobby")
    cb, wb = connect(b, "bob", "lobby", "games")
    app, sockets = make_app(DCM_REDIS_URL=redis_server.url, DCM_KEY_PREFIX=prefix)
    runner = app.test_cli_runner()

    def run(*args: str) -> str:
        result = runner.invoke(args=["dcm", *args])
        assert result.exit_code == 0, (result.output, result.exception)
        return result.output

    servers = json.loads(run("servers", "--json"))["servers"]
    assert sorted(s["server_id"] for s in servers) == sorted([a.server_id, b.server_id])
    assert json.loads(run("stats", "--json")) == {"total_connections": 2, "total_rooms": 2,
                                                  "active_servers": 2}
    assert run("rooms").splitlines() == ["ROOM   MEMBERS", "lobby  2", "games  1", "rooms 1-2"]
    assert json.loads(run("rooms", "--offset", "1", "--json"))["rooms"] == [
        {"room_id": "games", "members": 1}]
    assert sorted(m["connection_id"] for m in json.loads(run("room", "lobby", "--json"))["members"]) \
        == sorted([ca, cb])
    assert run("user", "bob").splitlines() == ["CONNECTION ID", cb]

    assert run("close-room", "games") == "took 1 member(s) out of room 'games' (they stay connected)\n"
    wait_until(lambda: b.rooms_of(cb) == frozenset({"lobby"}), what="bob out of games")
    assert json.loads(run("kick-user", "alice", "--reason", "bye", "--json")) == {
        "user_id": "alice", "closed": 1}
    wait_until(lambda: wa.closed, what="alice's socket closed")
    assert not wb.closed
    assert not sockets._state().started()  # the commands made no manager (no server) of the app


def test_flask_dcm_errors_and_exit_codes() -> None:
    app, _ = make_app(DCM_REDIS_URL=f"memory://{uuid.uuid4().hex}")
    result = app.test_cli_runner().invoke(args=["dcm", "stats"])
    assert result.exit_code == 2
    assert "needs Redis" in result.output and "DCM_REDIS_URL" in result.output

    app, _ = make_app(DCM_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    result = app.test_cli_runner().invoke(args=["dcm", "servers"])
    assert result.exit_code == 1 and "unreachable" in result.output

    result = app.test_cli_runner().invoke(args=["dcm", "rooms", "--limit", "0"])
    assert result.exit_code == 2
