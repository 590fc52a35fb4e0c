"""Start chat server processes (pywsgi, Werkzeug or gunicorn) and talk to them."""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from testkit.closing import ws_connect
from testkit.processes import HEALTH_PATH, Json, ServerProcess, is_ready
from testkit.redis_server import free_port

# gunicorn 27 opens a control socket under ~/.gunicorn/ unless told not to; older releases
# have neither the socket nor the option
NO_CONTROL_SOCKET = ["--no-control-socket"] if int(version("gunicorn").split(".")[0]) >= 27 else []
FAST_ENV = {"DCM_HEARTBEAT_INTERVAL": "0.2", "DCM_HEARTBEAT_TTL": "1.0", "DCM_CLEANUP_INTERVAL": "0.5"}


class Server(ServerProcess):
    """A chat example server process (see :class:`Servers`)."""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ws_url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/ws{query}"

    def health(self) -> Json:
        """The health route's answer (200 or 503); AssertionError if nothing answers."""
        health = self.get_json(HEALTH_PATH)
        if health is None:
            raise AssertionError(f"{self} does not answer {HEALTH_PATH}:\n{self.log_tail()}")
        return health


class Servers:
    """Starts one test's chat servers, all on ``redis_url`` with key prefix ``prefix``, their output
    in ``log_dir``; each is listed before it is waited for, so :meth:`stop_all` stops every one."""

    def __init__(self, redis_url: str | None, prefix: str, log_dir: Path) -> None:
        self.redis_url, self.prefix, self.log_dir = redis_url, prefix, log_dir
        self.started: list[Server] = []

    def chat(self, mode: str, **env: str) -> Server:
        """``python -m tests.flask.serve MODE PORT`` (see tests/flask/serve.py), once ready;
        ``env``: more DCM_* settings for it."""
        port = free_port()
        return self._start(f"{mode}-{port}", [sys.executable, "-m", "tests.flask.serve", mode, str(port)],
                           port, env)

    def gunicorn(self, worker: str, workers: int = 2, *options: str,
                 env: dict[str, str] | None = None) -> Server:
        """gunicorn with ``workers`` workers of class ``worker`` serving the chat app, once ready;
        ``options``: more of gunicorn's command line (``--threads 8``); ``env``: more DCM_*
        settings."""
        port = free_port()
        argv = [sys.executable, "-m", "gunicorn", "-k", worker, "-w", str(workers), "-b",
                f"127.0.0.1:{port}", *NO_CONTROL_SOCKET, "--graceful-timeout", "2", *options,
                "examples.chat.app:app"]
        return self._start(f"gunicorn-{port}", argv, port, env)

    def _start(self, name: str, argv: list[str], port: int,
               env: dict[str, str] | None = None) -> Server:
        server = Server(name, argv, self.log_dir, redis_url=self.redis_url, prefix=self.prefix,
                        fast={**FAST_ENV, **(env or {})}, port=port)
        self.started.append(server)
        server.wait_ready(HEALTH_PATH, is_ready)
        return server

    def stop_all(self) -> None:
        """SIGTERM (then SIGKILL) each; print its log, which pytest shows when the test failed."""
        for server in self.started:
            code = server.stop()
            print(f"----- {server} exit={code} -----\n{server.log()}")


class Client:
    """A real WebSocket client speaking the chat example's protocol."""

    def __init__(self, url: str, token: str | None = "alice", origin: str | None = None) -> None:
        query = f"?token={token}" if token else ""
        self.ws = ws_connect(url + query, timeout=10, origin=origin,
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
