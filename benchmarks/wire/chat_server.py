"""The server both wire benchmarks measure: ``examples/chat/app.py`` run as a script (gevent.pywsgi
with the project's ``DCMWebSocketHandler``) on a free loopback port, from this checkout or from
another one unpacked elsewhere (``root``: its packages come first), with the health route's
details on. Started at construction, ready once ``/dcm/health`` says so; :meth:`ChatServer.stop`
ends it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from testkit.processes import HEALTH_PATH, server_env
from testkit.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0  # seconds a server may take to say it is ready

# never go through an HTTP proxy from the environment to reach loopback servers
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ChatServer:
    """``examples/chat/app.py`` of ``root`` on 127.0.0.1:<free port>; its output in ``log_path``;
    ``env`` added to its environment (``DCM_RATE_LIMIT="0"``, ...)."""

    def __init__(self, name: str, redis_url: str, prefix: str, log_path: Path, root: Path = ROOT,
                 **env: str) -> None:
        self.name, self.port, self.log_path = name, free_port(), log_path
        full = server_env(redis_url, prefix, {}, PORT=str(self.port), HOST="127.0.0.1", **env)
        full["PYTHONPATH"] = str(root)
        full.update({k: v for k, v in os.environ.items() if k.startswith("GEVENT_")})
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "examples/chat/app.py"], cwd=root, env=full,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.health() or {}).get("ready"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"the {name} server did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def health(self) -> Any:
        """The health route's answer (with its stats), or None while it does not answer."""
        try:
            with _http.open(f"http://127.0.0.1:{self.port}{HEALTH_PATH}", timeout=5) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


F = TypeVar("F")


def take_turns(servers: dict[str, ChatServer], runs: int, run_one: Callable[[ChatServer], F],
               show: Callable[[F], str]) -> dict[str, list[F]]:
    """``runs`` rounds of ``run_one`` on every server, the servers taking turns (each round
    starts with the next one), each run's figures printed with ``show``; a run that raises
    ``RuntimeError`` prints its server's last log lines first."""
    figures: dict[str, list[F]] = {name: [] for name in servers}
    names = list(servers)
    for run in range(runs):
        first = run % len(names)
        for name in names[first:] + names[:first]:
            server = servers[name]
            try:
                got = run_one(server)
            except RuntimeError:
                print(f"--- the {name} server's log, last lines:\n{server.log_tail()}")
                raise
            figures[name].append(got)
            print(f"  run {run + 1} {name:<16} {show(got)}", flush=True)
            time.sleep(1.0)  # the last run's departures are handled before the next
    return figures


@contextlib.contextmanager
def bench_setup(prefix: str) -> Iterator[tuple[str, Path, dict[str, ChatServer]]]:
    """A Redis of the benchmark's own (its URL), a temporary folder for logs and checkouts, and
    a dict for the caller to put its servers in: every one of them is stopped at the end, then
    the Redis."""
    redis = RedisServer()
    redis.start()
    servers: dict[str, ChatServer] = {}
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield redis.url, Path(tmp), servers
    finally:
        for server in servers.values():
            server.stop()
        redis.cleanup()
