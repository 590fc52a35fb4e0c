"""What the Redis test topologies share: the host, timings, polling and small parsers."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
POLL_INTERVAL = 0.05  # seconds between polls
DEFAULT_TIMEOUT = 30.0  # generous: the machine has 2 shared cores
CLUSTER_SLOTS_COUNT = 16384
#: A master starts a replica's full sync at once, not after the default 5 s wait for more replicas,
#: and pings its replicas every second, not every 10 s: a cluster lists a replica in CLUSTER SLOTS
#: only once its replication offset is not 0, which on an idle master takes that first ping.
FAST_REPLICATION = ("--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1")

#: One shard in a normalised ``CLUSTER SLOTS`` answer: (first slot, last slot, master port,
#: replica ports sorted).
SlotRange = tuple[int, int, int, tuple[int, ...]]


def _probe(port: int, **kwargs: Any) -> redis.Redis:
    """A short-lived client for polling (use it in ``with``: tests count Redis's clients)."""
    return redis.Redis(host=HOST, port=port, decode_responses=True, socket_timeout=2,
                       socket_connect_timeout=2, **kwargs)


def _parse_info_text(text: str) -> dict[str, str]:
    """``key:value`` lines, as CLUSTER INFO answers."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _pairs(reply: list[Any] | dict[str, Any]) -> dict[str, Any]:
    """A map answer as a dict: RESP3 sends one, RESP2 a flat ``[key, value, key, value, ...]``."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _wait(what: str, problems: Callable[[], list[str]], timeout: float) -> float:
    """Poll ``problems()`` until it returns none; the seconds it took. AssertionError naming
    ``what`` and the last problems if ``timeout`` passes first."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        found = problems()
        if not found:
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout}s; still:\n  " + "\n  ".join(found))
        time.sleep(POLL_INTERVAL)


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} is not installed (Debian: apt-get install redis-server redis-tools)")
    return path


def start_together(servers: Iterable[Any], timeout: float) -> None:
    """Spawn every ``RedisServer`` first, then wait for each: they boot in parallel."""
    servers = list(servers)
    for server in servers:
        server.spawn()
    for server in servers:
        server.wait_ready(timeout)


T = TypeVar("T", bound="Topology")


class Topology:
    """Bring-up bookkeeping for a topology: ``start()`` runs :meth:`_bring_up`, removes
    everything if it fails, and records :attr:`startup_seconds`; a context manager."""

    startup_seconds: float | None = None
    #: The binaries it runs (tests/topology_fixtures.py checks them before making one).
    REQUIRES: tuple[str, ...] = ("redis-server",)

    def _bring_up(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        """The URL a manager is given to reach the topology."""
        raise NotImplementedError

    def flushall(self) -> None:
        """Empty every data node."""
        raise NotImplementedError

    def start(self: T) -> T:
        started = time.monotonic()
        ok = False
        try:
            self._bring_up()
            ok = True
        finally:
            if not ok:
                self.cleanup()
        self.startup_seconds = time.monotonic() - started
        logger.info("%r up in %.2fs", self, self.startup_seconds)
        return self

    def __enter__(self: T) -> T:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
