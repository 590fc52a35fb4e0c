"""Start chat server processes (pywsgi, Werkzeug or gunicorn) and talk to them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import websocket

from tests.helpers.redis_server import env_for_subprocess, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST_ENV = {"DCM_HEARTBEAT_INTERVAL": "0.2", "DCM_HEARTBEAT_TTL": "1.0", "DCM_CLEANUP_INTERVAL": "0.5"}


class Server:
    def __init__(self, argv: list[str], port: int, env: dict[str, str]) -> None:
        self.port = port
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ws_url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/ws{query}"

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"server exited with {self.proc.returncode}: {err[-2000:]}")
            try:
                with urllib.request.urlopen(self.url("/dcm/health"), timeout=2) as resp:
                    if json.loads(resp.read())["ready"]:
                        return
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.05)
        raise RuntimeError(f"server on {self.port} not ready in {timeout}s")

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url("/dcm/health"), timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()


def server_env(redis_url: str | None, prefix: str) -> dict[str, str]:
    env = env_for_subprocess()
    env.pop("REDIS_URL", None)
    env.update(FAST_ENV, DCM_KEY_PREFIX=prefix)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def start_chat(mode: str, redis_url: str | None, prefix: str) -> Server:
    port = free_port()
    env = server_env(redis_url, prefix)
    env["PORT"] = str(port)
    server = Server([sys.executable, "-m", "tests.flask.serve", mode, str(port)], port, env)
    server.wait_ready()
    return server


def start_gunicorn(worker: str, redis_url: str, prefix: str, workers: int = 2) -> Server:
    port = free_port()
    env = server_env(redis_url, prefix)
    env["PORT"] = str(port)
    argv = [sys.executable, "-m", "gunicorn", "-k", worker, "-w", str(workers), "-b",
            f"127.0.0.1:{port}", "--no-control-socket", "--graceful-timeout", "2",
            "examples.chat.app:app"]
    server = Server(argv, port, env)
    server.wait_ready()
    return server


class Client:
    """A real WebSocket client speaking the chat example's protocol."""

    def __init__(self, url: str, token: str | None = "alice", origin: str | None = None) -> None:
        query = f"?token={token}" if token else ""
        self.ws = websocket.create_connection(url + query, timeout=10, origin=origin,
                                              skip_utf8_validation=True)
        self.welcome = self.recv()
        assert self.welcome["type"] == "welcome"
        self.id: str = self.welcome["connectionId"]
        self.server_id: str = self.welcome["serverId"]

    def send(self, **msg: Any) -> None:
        self.ws.send(json.dumps(msg))

    def recv(self) -> Any:
        return json.loads(self.ws.recv())

    def recv_until(self, pred: Any, limit: int = 50) -> Any:
        for _ in range(limit):
            msg = self.recv()
            if pred(msg):
                return msg
        raise AssertionError("expected message did not arrive")

    def join(self, room: str) -> None:
        self.send(op="join", room=room)
        self.recv_until(lambda m: m.get("type") == "joined" and m.get("user") == self.welcome["user"])

    def close(self) -> None:
        self.ws.close()
