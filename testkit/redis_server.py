"""Start real ``redis-server`` processes on free loopback ports (never the shared 6379)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: A cluster node also listens on its port + 10000 (the cluster bus), which must be a valid port.
CLUSTER_BUS_OFFSET = 10000


def free_ports(count: int, *, cluster_bus: bool = False, attempts: int = 500) -> list[int]:
    """``count`` distinct free loopback ports. With ``cluster_bus``, each port's port + 10000 is
    <= 65535 and free too, and no port is another one's bus port. Every candidate stays bound
    until all are chosen, so the kernel cannot hand out the same one twice."""
    held: list[socket.socket] = []
    chosen: list[int] = []
    try:
        for _ in range(attempts):
            if len(chosen) == count:
                break
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if not cluster_bus:
                chosen.append(port)
                continue
            bus_port = port + CLUSTER_BUS_OFFSET
            if bus_port > 65535:
                continue
            bus = socket.socket()
            held.append(bus)
            try:
                bus.bind(("127.0.0.1", bus_port))
            except OSError:
                continue  # in use; the bound candidate stays held so it is not offered again
            chosen.append(port)
    finally:
        for s in held:
            s.close()
    if len(chosen) < count:
        raise RuntimeError(f"found only {len(chosen)} of {count} free ports in {attempts} attempts")
    return chosen


class RedisServer:
    """One redis-server on 127.0.0.1:<port>, in-memory only; restartable on the same port.
    ``conf_file`` (e.g. a Sentinel's, which Sentinel rewrites) goes first on the command line;
    the command line's options override it. The server logs to :attr:`log_path`.
    ``client_kwargs`` (a password, TLS settings) go to every client made by :meth:`client`."""

    def __init__(self, port: int | None = None, extra_args: tuple[str, ...] = (),
                 conf_file: str | None = None, client_kwargs: dict[str, Any] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.binary = binary
        self.port = port or free_port()
        self.extra_args = extra_args
        self.conf_file = conf_file
        self.client_kwargs = client_kwargs or {}
        self.dir = tempfile.mkdtemp(prefix="dcm-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **overrides: Any) -> redis.Redis:
        """A new client to this server with :attr:`client_kwargs` and a 5 s socket timeout, either
        overridden by ``overrides`` (use it in ``with``: tests count Redis's clients)."""
        return redis.Redis(host="127.0.0.1", port=self.port,
                           **{"socket_timeout": 5, **self.client_kwargs, **overrides})

    @property
    def alive(self) -> bool:
        """Whether its process is running (started and neither killed nor exited)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "redis.log")

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def start(self, timeout: float = 10.0) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it (:meth:`wait_ready` does): several servers
        can then come up in parallel."""
        conf = () if self.conf_file is None else (self.conf_file,)
        self.proc = subprocess.Popen(
            [self.binary, *conf, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--protected-mode", "yes",
             "--logfile", self.log_path, *self.extra_args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Poll PING until it answers; RuntimeError (with the log's tail) if the process exits
        or ``timeout`` passes first."""
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}:"
                                   f"\n{self.log_tail()}")
            try:
                with self.client() as probe:  # closed: tests count Redis's clients
                    if probe.ping():
                        return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING within {timeout}s:"
                           f"\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """Kill and start again on the same port: it comes back empty."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def env_for_subprocess() -> dict[str, str]:
    """This environment, with the project's root first on ``PYTHONPATH``."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env
