"""Run ``examples/chat/app.py`` (the Flask chat app) as a real process for tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers.redis_server import env_for_subprocess, free_port

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "chat" / "app.py"

#: A killed server is declared dead within a few seconds.
FAST_ENV = {"DCM_HEARTBEAT_INTERVAL": "0.5", "DCM_HEARTBEAT_TTL": "2"}

# never go through an HTTP proxy from the environment to reach loopback servers
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def app_env(redis_url: str | None, prefix: str, **extra: str) -> dict[str, str]:
    """The test process's environment without any DCM_*/REDIS_URL/PORT of its own, plus these."""
    env = {k: v for k, v in env_for_subprocess().items()
           if not k.startswith("DCM_") and k not in ("REDIS_URL", "PORT", "SERVER_HOST")}
    env.update(FAST_ENV, DCM_KEY_PREFIX=prefix, PYTHONUNBUFFERED="1", **extra)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return env


class ChatApp:
    """One chat app process on 127.0.0.1:<free port>, its output in ``log_path``."""

    def __init__(self, name: str, redis_url: str | None, prefix: str, log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = app_env(redis_url, prefix, PORT=str(self.port))
        self.log_path = log_dir / f"{name}.log"
        self.server_id: str | None = None  # its manager's id, once ready
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(APP)], env=self.env, cwd=ROOT,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def __repr__(self) -> str:
        return f"<ChatApp {self.name} port={self.port} pid={self.proc.pid}>"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def health(self) -> dict[str, Any] | None:
        """``GET /dcm/health`` as a dict (200 or 503); None while nothing answers."""
        try:
            with _http.open(f"{self.url}dcm/health", timeout=3) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:  # 503 while not ready: the body says why
            try:
                return json.loads(exc.read())  # type: ignore[no-any-return]
            except ValueError:
                return None
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        """Poll the health route until it says ready; AssertionError (with the log) if it never does."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self} exited with {self.proc.returncode}:\n{self.log()}")
            last = self.health()
            if last is not None and last.get("ready") is True:
                self.server_id = last["server_id"]
                return last
            time.sleep(0.05)  # polling interval, not a readiness guess
        raise AssertionError(f"{self} not ready within {timeout}s (last: {last}):\n{self.log()}")

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
