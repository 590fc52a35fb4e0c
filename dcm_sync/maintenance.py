"""What keeps a server's view of the cluster true over time: heartbeats, failure detection and
cleanup of dead servers, stale-connection cleanup, subscription probes, and writing state back
after Redis was lost. `Maintenance` runs the loops the manager starts; it is handed the
parts it works with.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from .backends import Backend, ConnectionRecord
from .concurrency import StopFlag
from .config import Config
from .departures import Departures
from .envelopes import EnvelopeWriter, Probe
from .errors import BackendError
from .listener import Listener
from .local import LocalConnectionManager
from .messages import validate_id
from .models import ServerInfo
from .recovery import MARGIN, Recovery

__all__ = ["Maintenance", "CLEANUP_BATCH", "IDLE_CLOSE_SECONDS"]

logger = logging.getLogger(__name__)

CLEANUP_BATCH = 1000
IDLE_CLOSE_SECONDS = 10.0  # how often pooled Redis connections that nothing uses are closed


class Maintenance:
    def __init__(self, server_id: str, config: Config, local: LocalConnectionManager,
                 backend: Backend, listener: Listener, departures: Departures,
                 envelope: EnvelopeWriter, stop: StopFlag, counters: Counter[str],
                 server_info: Callable[[], ServerInfo], recovery: Recovery) -> None:
        self._server_id = server_id
        self._config = config
        self._local = local
        self._backend = backend
        self._listener = listener
        self._departures = departures
        self._envelope = envelope
        self._stop = stop
        self._counters = counters
        self._server_info = server_info
        self._recovery = recovery
        self._restored_at = 0.0

    def handle_server_failure(self, server_id: str) -> int:
        """Clean up a dead server's connections and tell their rooms (reason ``server-failure``).
        Idempotent and safe when several servers call it at once: a short lock in the backend
        lets one do the work, and each connection is removed exactly once. With recovery on,
        its recoverable connections are suspended instead (this server removes those not
        resumed when their window ends). Returns how many connections this call removed."""
        validate_id(server_id, "server_id")
        if server_id == self._server_id:
            raise ValueError("a server cannot handle its own failure")
        cfg = self._config
        if not self._backend.claim_cleanup(server_id, self._server_id, cfg.heartbeat_ttl):
            return 0
        count = 0
        recovery = self._recovery
        adopter = self._server_id if recovery.on else None
        until, ttl = time.time() + recovery.window, recovery.window + MARGIN
        while batch := self._backend.pop_server_connections(server_id, CLEANUP_BATCH, adopter,
                                                            until, ttl):
            removed = [r for r in batch if not r.suspended_until]
            recovery.adopt([r for r in batch if r.suspended_until])
            count += len(removed)
            departures = self._departures  # (notices() is empty when departures are not told)
            departures.publish_quietly(departures.notices(removed, "server-failure"))
        self._backend.forget_server(server_id)
        self._counters["connections_cleaned"] += count
        if count:
            logger.info("cleaned %d connection(s) of failed server %s", count, server_id)
        return count

    def heartbeat_loop(self) -> None:
        cfg = self._config
        last_idle_close = time.monotonic()
        unreachable = False  # log an outage once, not at every heartbeat
        while not self._stop.wait(cfg.heartbeat_interval):
            try:
                if not self._backend.heartbeat(self._server_id, len(self._local),
                                               cfg.heartbeat_ttl):
                    logger.warning("server record of %s was gone; registering again",
                                   self._server_id)
                    self.restore()
                # Departures that happened while Redis was away are announced one heartbeat
                # after we are back, so that other servers have had time to resubscribe.
                if time.monotonic() - self._restored_at >= cfg.heartbeat_interval:
                    self._departures.flush_pending()
                for dead in self._backend.dead_servers():
                    if dead != self._server_id and not self._stop.is_set():
                        self.handle_server_failure(dead)
                if time.monotonic() - last_idle_close >= IDLE_CLOSE_SECONDS:
                    # a burst of calls grew the pool; do not keep its connections for good
                    self._backend.close_idle()
                    last_idle_close = time.monotonic()
                if unreachable:
                    logger.warning("heartbeats of %s resumed", self._server_id)
                    unreachable = False
            except BackendError as exc:
                if not unreachable:
                    logger.warning("heartbeat of %s failed (%s); retrying every %.1fs",
                                   self._server_id, exc, cfg.heartbeat_interval)
                    unreachable = True
            except Exception:
                logger.exception("heartbeat of %s failed", self._server_id)

    def probe_loop(self) -> None:
        channel = f"server:{self._server_id}"

        def send(number: int) -> None:
            self._backend.publish(channel, self._envelope(Probe(number)))

        while not self._stop.wait(self._config.probe_interval):
            try:
                if self._listener.probe(send, self._config.probe_timeout) is False:
                    self._counters["probes_failed"] += 1
            except Exception:
                logger.exception("subscription probe failed")

    def cleanup_loop(self) -> None:
        """Every ``cleanup_interval``: remove connections idle past ``stale_connection_timeout``.
        With pings on, every quarter of ``min(ping_interval, ping_timeout)`` too: ping each
        socket that can be pinged once it has been quiet for ``ping_interval``, and remove one
        (reason ``stale``) whose ping got no answer within ``ping_timeout``."""
        cfg = self._config
        pinging = cfg.ping_interval > 0
        tick = cfg.cleanup_interval
        if pinging:
            tick = min(tick, max(0.05, min(cfg.ping_interval, cfg.ping_timeout) / 4))
        next_stale = time.monotonic() + cfg.cleanup_interval
        while not self._stop.wait(tick):
            now = time.monotonic()
            if pinging:
                try:
                    self._keepalive(now, cfg.ping_interval, cfg.ping_timeout)
                except Exception:
                    logger.exception("keepalive failed")
            if now < next_stale:
                continue
            next_stale = now + cfg.cleanup_interval
            try:
                for cid in self._local.stale(cfg.stale_connection_timeout):
                    if self._departures.remove_local(cid, "stale"):
                        self._counters["stale_removed"] += 1
            except Exception:
                logger.exception("stale-connection cleanup failed")

    def _keepalive(self, now: float, interval: float, timeout: float) -> None:
        for conn in self._local.connections():
            if conn.pingable is None:
                continue
            activity = conn.activity
            if conn.pinged_at > activity:  # a ping waits for its answer
                if now - conn.pinged_at > timeout:
                    logger.info("%s did not answer a ping within %.1fs: dropping it",
                                conn.connection_id, timeout)
                    if self._recovery.suspend(conn.connection_id):
                        continue  # a network loss: it may come back
                    if self._departures.remove_local(conn.connection_id, "stale"):
                        self._counters["stale_removed"] += 1
            elif now - activity >= interval:
                conn.ping()

    def restore(self) -> None:
        """Write this server and its live connections back (Redis restarted, or we were
        declared dead while paused)."""
        cfg = self._config
        self._backend.register_server(self._server_info(), cfg.heartbeat_ttl)
        records = [ConnectionRecord(c.connection_id, c.user_id, c.connected_at, tuple(c.rooms),
                                    c.secret) for c in self._local.connections()]
        self._backend.restore_connections(self._server_id, records)
        self._counters["restores"] += 1
        self._restored_at = time.monotonic()  # pending departures wait a heartbeat (see above)
