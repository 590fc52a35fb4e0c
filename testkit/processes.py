"""Server processes for tests: an example app on a free loopback port, in a clean environment,
its output in a log file, polled on a JSON route until it says it is ready."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from testkit.redis_server import env_for_subprocess, free_port

ROOT = Path(__file__).resolve().parents[1]

Json = dict[str, Any]

#: The Flask extension's health route as the chat example mounts it: 200 ``{"ready": true, ...}``,
#: 503 while not ready.
HEALTH_PATH = "/dcm/health"

#: Variables of the test process's own that would point a server elsewhere than its test says.
#: (``HOST`` is read by examples/chat/app.py, ``GUNICORN_CMD_ARGS`` by gunicorn.)
INHERITED = ("REDIS_URL", "PORT", "SERVER_HOST", "HOST", "GUNICORN_CMD_ARGS")

POLL_INTERVAL = 0.05  # seconds between polls: a polling interval, not a readiness guess

# never go through an HTTP proxy from the environment to reach loopback servers
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def rss_kb(pid: int) -> int:
    """A process's resident memory (``VmRSS``) in KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def is_ready(health: Json) -> bool:
    """Whether a :data:`HEALTH_PATH` answer says ready."""
    return health.get("ready") is True


def server_env(redis_url: str | None, prefix: str, fast: Mapping[str, str], **extra: str) -> dict[str, str]:
    """The test process's environment without any DCM_* or :data:`INHERITED` variable of its own,
    plus the ``fast`` timings, the key prefix, ``REDIS_URL`` (unless None: memory://) and ``extra``.
    The health route's details are on: the tests read its stats and server id."""
    env = {k: v for k, v in env_for_subprocess().items() if not k.startswith("DCM_") and k not in INHERITED}
    env.update(fast, DCM_KEY_PREFIX=prefix, DCM_HEALTH_DETAILS="1", PYTHONUNBUFFERED="1", **extra)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return env


class ServerProcess:
    """``argv`` run from the repository root, serving on 127.0.0.1:``port`` (a free port unless
    given; also passed as ``PORT``), its output in ``log_dir/<name>.log``. Started at construction:
    whoever makes one calls :meth:`stop` (or :meth:`kill`) at teardown."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, *, redis_url: str | None,
                 prefix: str, fast: Mapping[str, str], port: int | None = None) -> None:
        self.name = name
        self.port = free_port() if port is None else port
        self.env = server_env(redis_url, prefix, fast, PORT=str(self.port))
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(list(argv), env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} port={self.port} pid={self.proc.pid}>"

    # ------------------------------------------------------------------ observing
    def get_json(self, path: str, timeout: float = 3.0) -> Json | None:
        """``GET path``'s JSON object when it answers 200 or 503 (a 503 body says why it is not
        ready); None while nothing answers. Any other answer is a test's mistake: AssertionError."""
        try:
            try:
                with _http.open(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
                    status, body = resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                with exc:
                    status, body = exc.code, exc.read()
        except (OSError, http.client.HTTPException):  # refused, reset, timed out, cut short
            return None
        try:
            value = json.loads(body) if status in (200, 503) else None
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise AssertionError(f"{self}: GET {path} answered {status} {body[:300]!r}")
        return value

    def wait_ready(self, path: str, predicate: Callable[[Json], bool], timeout: float = 20.0) -> Json:
        """Poll ``GET path`` until its answer satisfies ``predicate``, and return that answer.
        AssertionError with the log's tail if the process exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self} exited with {self.proc.returncode}:\n{self.log_tail()}")
            answer = self.get_json(path)
            if answer is not None:
                if predicate(answer):
                    return answer
                last = answer
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self}: no matching answer to GET {path} within {timeout}s "
                                     f"(last answer: {last}):\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL)

    def log(self) -> str:
        """Everything the process has written to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # ------------------------------------------------------------------ stopping
    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; reaped; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):  # then the kill below ends it
                self.proc.wait(timeout)
        return self.kill()

    def kill(self) -> int:
        """SIGKILL unless it has exited; reaped; its exit code."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(10)
