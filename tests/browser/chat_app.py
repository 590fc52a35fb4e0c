"""Run ``examples/chat/app.py`` (the Flask chat app) as a real process for tests."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from testkit.processes import HEALTH_PATH, ROOT, Json, ServerProcess, is_ready, server_env

APP = ROOT / "examples" / "chat" / "app.py"

#: A killed server is declared dead within a few seconds.
FAST_ENV = {"DCM_HEARTBEAT_INTERVAL": "0.5", "DCM_HEARTBEAT_TTL": "2"}


def app_env(redis_url: str | None, prefix: str, **extra: str) -> dict[str, str]:
    """The test process's environment without any DCM_*/REDIS_URL/PORT of its own, plus these."""
    return server_env(redis_url, prefix, FAST_ENV, **extra)


class ChatApp(ServerProcess):
    """One chat app process on 127.0.0.1:<free port>, its output in ``log_path``."""

    def __init__(self, name: str, redis_url: str | None, prefix: str, log_dir: Path,
                 port: int | None = None, **env: str) -> None:
        super().__init__(name, [sys.executable, str(APP)], log_dir, redis_url=redis_url, prefix=prefix,
                         fast={**FAST_ENV, **env}, port=port)
        self.server_id: str | None = None  # its manager's id, once ready

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def wait_ready(self, path: str = HEALTH_PATH, predicate: Callable[[Json], bool] = is_ready,
                   timeout: float = 20.0) -> Json:
        """By default: poll the health route until it says ready, and note the server's id."""
        health = super().wait_ready(path, predicate, timeout)
        self.server_id = health["server_id"]
        return health
