"""The server both wire benchmarks measure: ``examples/chat/app.py`` run as a script (gevent.pywsgi
with the project's ``DCMWebSocketHandler``) on a free loopback port, from this checkout or from
another one unpacked elsewhere (``root``: its packages come first), with the health route's
details on. Started at construction, ready once ``/dcm/health`` says so; :meth:`ChatServer.stop`
ends it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from testkit.processes import HEALTH_PATH, server_env
from testkit.redis_server import free_port

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
