"""What keeps a server's view of the cluster true over time: heartbeats, failure detection and
cleanup of dead servers, stale-connection cleanup, and writing state back after Redis was lost.

A mixin of :class:`~dcm_sync.manager.DistributedConnectionManager`; the attributes it uses are
declared below and set by the manager.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .backends import Backend, ConnectionRecord
from .concurrency import StopFlag
from .config import Config
from .errors import BackendError
from .listener import Listener
from .local import LocalConnectionManager
from .messages import EnvelopeWriter, validate_id
from .models import RemovedConnection, ServerInfo

__all__ = ["ClusterMaintenance", "CLEANUP_BATCH"]

logger = logging.getLogger(__name__)

CLEANUP_BATCH = 1000
IDLE_CLOSE_SECONDS = 10.0  # how often pooled Redis connections that nothing uses are closed


class ClusterMaintenance:
    config: Config
    local: LocalConnectionManager
    server_id: str
    _backend: Backend
    _stop: StopFlag
    _counters: Counter[str]
    _pending_lock: threading.Lock
    _pending_removals: dict[str, tuple[RemovedConnection, str]]
    _restored_at: float
    _listener: Listener
    _envelope: EnvelopeWriter

    if TYPE_CHECKING:  # provided by the manager
        def _server_info(self) -> ServerInfo: ...

        def _remove_local(self, connection_id: str, reason: str) -> bool: ...

        def _notifications(self, removed: Sequence[RemovedConnection], reason: str,
                           local: bool = True) -> list[tuple[str, bytes]]: ...

        def _publish_quietly(self, items: list[tuple[str, bytes]]) -> None: ...

    def handle_server_failure(self, server_id: str) -> int:
        """Clean up a dead server's connections and tell their rooms (reason ``server-failure``).
        Idempotent and safe when several servers call it at once: a short lock in the backend
        lets one do the work, and each connection is removed exactly once. Returns how many
        connections this call removed."""
        validate_id(server_id, "server_id")
        if server_id == self.server_id:
            raise ValueError("a server cannot handle its own failure")
        if not self._backend.claim_cleanup(server_id, self.server_id, self.config.heartbeat_ttl):
            return 0
        count = 0
        while batch := self._backend.pop_server_connections(server_id, CLEANUP_BATCH):
            count += len(batch)
            if self.config.notify_on_disconnect:  # every room that still has members
                self._publish_quietly(self._notifications(batch, "server-failure"))
        self._backend.forget_server(server_id)
        self._counters["connections_cleaned"] += count
        if count:
            logger.info("cleaned %d connection(s) of failed server %s", count, server_id)
        return count

    def _heartbeat_loop(self) -> None:
        last_refresh = last_idle_close = time.monotonic()
        unreachable = False  # log an outage once, not at every heartbeat
        while not self._stop.wait(self.config.heartbeat_interval):
            try:
                if not self._backend.heartbeat(self.server_id, len(self.local),
                                               self.config.heartbeat_ttl):
                    logger.warning("server record of %s was gone; registering again", self.server_id)
                    self._restore()
                # Departures that happened while Redis was away are announced one heartbeat
                # after we are back, so that other servers have had time to resubscribe.
                if time.monotonic() - self._restored_at >= self.config.heartbeat_interval:
                    self._flush_pending_removals()
                for dead in self._backend.dead_servers():
                    if dead != self.server_id and not self._stop.is_set():
                        self.handle_server_failure(dead)
                if time.monotonic() - last_refresh > self.config.connection_ttl / 4:
                    ids = [c.connection_id for c in self.local.connections()]
                    self._backend.refresh_connections(ids, self.config.connection_ttl)
                    last_refresh = time.monotonic()
                if time.monotonic() - last_idle_close >= IDLE_CLOSE_SECONDS:
                    # a burst of calls grew the pool; do not keep its connections for good
                    self._backend.close_idle()
                    last_idle_close = time.monotonic()
                if unreachable:
                    logger.warning("heartbeats of %s resumed", self.server_id)
                    unreachable = False
            except BackendError as exc:
                if not unreachable:
                    logger.warning("heartbeat of %s failed (%s); retrying every %.1fs",
                                   self.server_id, exc, self.config.heartbeat_interval)
                    unreachable = True
            except Exception:
                logger.exception("heartbeat of %s failed", self.server_id)

    def _probe_loop(self) -> None:
        channel = f"server:{self.server_id}"

        def send(number: int) -> None:
            self._backend.publish(channel, self._envelope("probe", n=number))

        while not self._stop.wait(self.config.probe_interval):
            try:
                if self._listener.probe(send, self.config.probe_timeout) is False:
                    self._counters["probes_failed"] += 1
            except Exception:
                logger.exception("subscription probe failed")

    def _cleanup_loop(self) -> None:
        while not self._stop.wait(self.config.cleanup_interval):
            try:
                for cid in self.local.stale(self.config.stale_connection_timeout):
                    if self._remove_local(cid, "stale"):
                        self._counters["stale_removed"] += 1
            except Exception:
                logger.exception("stale-connection cleanup failed")

    def _restore(self) -> None:
        """Write this server and its live connections back (Redis restarted, or we were
        declared dead while paused)."""
        self._backend.register_server(self._server_info(), self.config.heartbeat_ttl)
        records = [ConnectionRecord(c.connection_id, c.user_id, c.connected_at, tuple(c.rooms))
                   for c in self.local.connections()]
        self._backend.restore_connections(self.server_id, records, self.config.connection_ttl)
        self._counters["restores"] += 1
        self._restored_at = time.monotonic()  # pending departures wait a heartbeat (see below)

    def _flush_pending_removals(self) -> None:
        with self._pending_lock:
            pending, self._pending_removals = self._pending_removals, {}
        if not pending:
            return
        try:
            removed = self._backend.remove_connections(list(pending))
        except BackendError:
            with self._pending_lock:
                self._pending_removals.update(pending)
            raise
        for (known, reason), r in zip(pending.values(), removed, strict=True):
            # Redis may have come back empty and forgotten it: announce it from what we knew
            # (local members were told when it left)
            self._publish_quietly(self._notifications([r or known], reason, local=False))
