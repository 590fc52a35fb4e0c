"""examples/emit_from_script.py as a cron job uses it: a chat app user sees what the script says."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from testkit.closing import ws_connect
from testkit.processes import ROOT
from testkit.redis_server import RedisServer
from tests.browser.chat_app import ChatApp, app_env

SCRIPT = ROOT / "examples" / "emit_from_script.py"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def chat_app(redis_server: RedisServer, prefix: str, tmp_path: Path) -> Iterator[ChatApp]:
    app = ChatApp("chat", redis_server.url, prefix, tmp_path)
    try:
        app.wait_ready()
        yield app
    finally:
        code = app.stop()
        print(f"----- {app} exit={code} -----\n{app.log()}")


def run_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def recv_json(ws: websocket.WebSocket) -> Any:
    return json.loads(ws.recv())


def test_script_speaks_in_a_room_and_prints_stats(chat_app: ChatApp) -> None:
    ws = ws_connect(f"ws://127.0.0.1:{chat_app.port}/ws?token=alice", timeout=5,
                                     skip_utf8_validation=True)
    try:
        welcome = recv_json(ws)
        assert (welcome["type"], welcome["user"]) == ("welcome", "alice")
        ws.send(json.dumps({"op": "join", "room": "lobby"}))
        assert recv_json(ws) == {"type": "joined", "room": "lobby", "user": "alice"}
        assert recv_json(ws) == {"type": "people", "room": "lobby", "users": ["alice"]}

        done = run_script(chat_app.env, "lobby", "backup finished")

        assert done.returncode == 0, done.stderr
        assert recv_json(ws) == {"type": "message", "room": "lobby", "from": "cron",
                                 "text": "backup finished"}
    finally:
        ws.close()
    assert "sent to room 'lobby'" in done.stdout
    assert "cluster: 1 server(s), 1 connection(s), 1 room(s)" in done.stdout, done.stdout
    assert f"  {welcome['serverId']}: 1 connection(s)" in done.stdout, done.stdout


def test_script_refuses_to_run_without_redis(prefix: str) -> None:
    env = app_env(None, prefix)  # no REDIS_URL
    done = run_script(env, "lobby", "nobody hears this")
    assert done.returncode == 2
    assert "REDIS_URL" in done.stderr
    assert done.stdout == ""
