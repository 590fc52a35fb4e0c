"""DistributedConnectionManager: one server's view of the cluster, backend-agnostic.

A façade over parts, each handed what it needs:

* `Delivery`: messages to this process's sockets;
* `Departures`: connections leaving, their notices, the removals
  that wait for Redis;
* `Maintenance`: heartbeats, failure cleanup, stale cleanup,
  probes, restoring state after Redis was lost;
* `Listener` and `Dispatcher`: the bus
  subscription, and incoming envelopes by their typed body;
* `Requests`: requests between servers, this server's request handler.

Data flows one way: API call -> local sockets and backend (shared state + bus); and back from
the listener -> dispatcher -> local sockets.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from .backends import Backend, ConnectionRecord, open_backend
from .concurrency import Driver, Runner, StopFlag, Worker, get_driver, on_runner
from .config import Config
from .delivery import Delivery
from .departures import Departures, close_socket
from .dispatch import Dispatcher, ServerMessageHandler
from .envelopes import DirectMessage, EnvelopeWriter, RoomMessage, ServerMessage, Touch
from .errors import (
    AuthenticationError,
    BackendError,
    ConfigError,
    DCMError,
    UnknownConnectionError,
)
from .history import HistoryEntry, Position, RoomHistory
from .listener import Listener
from .local import LocalConnection, LocalConnectionManager, WebSocketLike
from .maintenance import Maintenance
from .membership import Membership
from .messages import encode_message, exclusions, validate_id
from .models import DistributedStats, ServerInfo
from .outbox import SendPolicy
from .presence import Presence, PresenceMethods, ServerHere, rooms_page
from .recovery import MARGIN, Recovery
from .requests import RequestHandler, Requests, check_timeout

__all__ = ["DistributedConnectionManager", "ServerMessageHandler"]

logger = logging.getLogger(__name__)

STOP_SECONDS = 1.0
ID_ATTEMPTS = 5
COUNTERS: Mapping[str, str] = MappingProxyType({
    "reconnects": "Times the message listener subscribed again after losing the backend.",
    "probes_failed": "Probes of this server's own subscription that did not return in time.",
    "envelopes_dropped": "Cross-server messages dropped on receipt: malformed, of another "
                         "protocol version, or failing the signature check.",
    "signature_failures": "Cross-server messages dropped for a missing or wrong signature "
                          "(also counted in envelopes_dropped).",
    "send_errors": "Sends to a local socket that failed (the connection was removed).",
    "connections_cleaned": "Connections of dead servers removed by this server's cleanup.",
    "stale_removed": "Local connections removed for inactivity or an unanswered ping.",
    "restores": "Times this server wrote its record and connections back to the backend.",
    "slow_consumers": "Local sockets cut (close code 1013) because their outbox was full.",
})
"""The counters of [`metrics()`][dcm_sync.DistributedConnectionManager.metrics], each with what
it counts: the one list that the Prometheus exporter (``dcm_<name>_total``, with this text as
its help) and the docs are made from."""


def default_server_id(host: str, port: int) -> str:
    return f"{host}:{port}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class DistributedConnectionManager(PresenceMethods):
    """Connections of this process, shared with every other server through the backend.

    Build one with
    [`create_distributed_connection_manager`][dcm_sync.create_distributed_connection_manager],
    which also starts it. Every method is safe to call from any thread or greenlet.
    """

    def __init__(self, local: LocalConnectionManager, config: Config,
                 backend: Backend | None = None) -> None:
        self.local = local
        self.config = config
        self.server_id: str = config.server_id or default_server_id(config.server_host,
                                                                    config.server_port)
        self._backend = backend or open_backend(config.redis_url, config.key_prefix,
                                                timeout=config.redis_timeout,
                                                ca_file=config.redis_ca_file)
        self._backend.count_users = config.room_notices == "users"
        if config.recovery_window > 0:
            if not self._backend.supports_recovery:
                raise ConfigError("recovery_window: connection-state recovery is not "
                                  "available on Redis Cluster (use one Redis or Sentinel)")
            self._backend.mailbox_size = config.mailbox_size
            self._backend.mailbox_ttl = config.recovery_window + MARGIN
        notices = config.room_notices != "off"
        self._driver: Driver = get_driver()
        #: where the operations below marked ``@on_runner`` run (gevent: dcm-io greenlets)
        self._runner: Runner = self._driver.runner()
        self._stop: StopFlag = self._driver.event()
        self._workers: list[Worker] = []
        self._state_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._counters: Counter[str] = Counter()
        self._envelope = EnvelopeWriter(self.server_id, config.signing_keys, config.key_prefix)
        self._listener = Listener(
            self._backend, self._driver, self._stop, f"server:{self.server_id}",
            has_local_members=local.has_members, local_rooms=local.rooms,
            on_message=lambda channel, data: self._dispatch(channel, data),
            on_reconnect=lambda: self._maintenance.restore(),
        )
        self._delivery = Delivery(local, self._counters,
                                  remove=lambda cid: self._departures.remove_local(cid, "removed"))
        self._departures = Departures(self.server_id, local, self._backend, self._listener,
                                      self._delivery, self._envelope,
                                      notices and config.notify_on_disconnect,
                                      config.max_message_bytes)
        self._membership = Membership(self.server_id, local, self._backend, self._listener,
                                      self._envelope, self._delivery,
                                      config.max_rooms_per_connection,
                                      config.subscribe_timeout, notices, config.max_message_bytes,
                                      joined=lambda cid, room: self._recovery.joined(cid, room))
        self._requests = Requests(self.server_id, self._backend, self._envelope, self._driver,
                                  config.max_message_bytes)
        self._dispatch = Dispatcher(self.server_id, self._envelope.signer, self._counters, local,
                                    self._listener, self._delivery, self._departures,
                                    self._membership.change_here, self._requests)
        self._history = RoomHistory(self._backend, config.history_rooms, config.history_size,
                                    config.history_ttl, self._envelope.signer)
        self._recovery = Recovery(self.server_id, config.recovery_window,
                                  config.subscribe_timeout, local, self._backend,
                                  self._listener, self._delivery, self._departures,
                                  self._history, self._envelope, self._stop,
                                  lambda: self._send_policy)
        self._maintenance = Maintenance(self.server_id, config, local, self._backend,
                                        self._listener, self._departures, self._envelope,
                                        self._stop, self._counters, self._server_info,
                                        self._recovery)
        here = ServerHere(self.server_id, local, self._delivery, self._departures,
                          self._membership, self._send_local)
        self._presence = Presence(self._backend, self._envelope, config.max_message_bytes,
                                  lambda removed, reason: self._departures.notices(removed, reason),
                                  here)
        #: the outboxes' limits and hooks, for the sockets this manager registers
        self._send_policy = SendPolicy(config.send_queue_max_messages, config.send_queue_max_bytes,
                                       spawn=self._driver.spawn,
                                       current=self._driver.current_id,
                                       on_error=self._delivery.write_failed)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Register this server, subscribe, and start the listener, heartbeat and cleanup loops."""
        with self._state_lock:
            if self._started:
                return
            self._started = True
        self._backend.register_server(self._server_info(), self.config.heartbeat_ttl)
        self._listener.start(self.config.subscribe_timeout)
        assert self._listener.worker is not None
        loops = self._maintenance
        self._workers = [self._listener.worker,
                         self._driver.spawn("dcm-heartbeat", loops.heartbeat_loop),
                         self._driver.spawn("dcm-cleanup", loops.cleanup_loop)]
        if self.config.probe_interval > 0:
            self._workers.append(self._driver.spawn("dcm-probe", loops.probe_loop))
        if self._recovery.on:
            self._workers.append(self._driver.spawn("dcm-recovery", self._recovery.expire_loop))


    def is_ready(self) -> bool:
        """True while registered, subscribed and running (until [`shutdown`][])."""
        return (self._started and not self._closed
                and all(w.is_alive() for w in self._workers) and bool(self._workers))

    def shutdown(self, code: int = 1001, reason: str = "going away") -> None:
        """Stop the loops, remove every local connection (reason ``shutdown``: members on other
        servers are told), close the sockets with ``code`` (1001: the client may reconnect, to
        another server) and deregister (left in the index of servers, for another server's
        failure cleanup, while connections it could not remove are listed under it).
        Idempotent."""
        if not self._halt():
            return
        conns = [c for c in self.local.connections() if self.local.remove(c.connection_id)]
        # with recovery on, recoverable connections are suspended, not removed: their clients
        # resume on another server; the others' cleanup removes those that do not
        kept = [c for c in conns if c.secret is not None] if self._recovery.on else []
        gone = [c for c in conns if c.secret is None] if kept else conns
        try:
            if self._started:
                until = time.time() + self.config.recovery_window
                for c in kept:
                    self._backend.suspend_connection(c.connection_id, self.server_id, until,
                                                     self.config.recovery_window + MARGIN)
                removed = self._backend.remove_connections([c.connection_id for c in gone])
                self._backend.publish_many(self._departures.notices(
                    [r for r in removed if r], "shutdown", local=False))
                # Connection records have no TTL: ids still listed under this server (a
                # removal that waited for Redis, a registration that raced this shutdown) are
                # left to the other servers' failure cleanup, which finds them by the index.
                leftover = not kept and self._backend.server_connection_count(self.server_id) > 0
                self._backend.deregister_server(self.server_id, keep_index=bool(
                    kept or self._recovery.suspended() or leftover))
        except BackendError as exc:
            logger.warning("shutdown could not update shared state: %s", exc)
        for conn in conns:
            close_socket(conn, code, reason)
        self._backend.close()

    def abandon(self) -> None:
        """Fall silent the way a killed process does: the loops stop, the subscription and the
        connections to the backend close, and nothing else happens. No connection is removed
        from the shared state, no member is told, no socket is closed and the server is not
        deregistered: the other servers find it dead once its heartbeat record expires and clean
        up after it (members are told, reason ``server-failure``).

        For testing how an application copes with a server's death without killing a process,
        and for a process about to exit that leaves its cleanup to its peers. Idempotent; the
        manager is shut down afterwards (calls raise [`DCMError`][dcm_sync.DCMError])."""
        if self._halt():
            self._backend.close()

    def _halt(self) -> bool:
        """Mark the manager closed and stop its loops; False if it already was."""
        with self._state_lock:
            if self._closed:
                return False
            self._closed = True
        self._requests.close()  # callers waiting for replies get DCMError now
        self._stop.set()
        self._listener.close()  # wakes the listener out of its read
        self._runner.stop()
        deadline = time.monotonic() + STOP_SECONDS
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                self._driver.kill(worker)
        return True

    def __enter__(self) -> DistributedConnectionManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _check_open(self) -> None:
        if self._closed:
            raise DCMError("this manager is shut down")

    def _server_info(self) -> ServerInfo:
        return ServerInfo(self.server_id, self.config.server_host, self.config.server_port,
                          os.getpid(), time.time(), len(self.local))

    # ----------------------------------------------------------------- connections
    @on_runner
    def register_connection(self, ws: WebSocketLike, user_id: str,
                            auth_token: str | None = None, recoverable: bool = False) -> str:
        """Hold ``ws`` for ``user_id`` and return its cluster-wide connection id.
        [`ConnectionLimitError`][] past ``max_connections`` here, or past
        ``max_connections_per_user`` connections of the user on all servers together.

        ``recoverable``: the socket speaks the recovery protocol (``docs/protocol.md``): its
        first frame is a hello with the connection id and its resume token, and every
        message goes out wrapped with what resuming needs. With ``recovery_window`` on, its
        drop can be [`suspended`][dcm_sync.DistributedConnectionManager.release_connection]
        and [`resumed`][dcm_sync.DistributedConnectionManager.resume_connection]."""
        self._check_open()
        validate_id(user_id, "user_id")
        if not (callable(getattr(ws, "send", None)) and callable(getattr(ws, "close", None))):
            raise TypeError("ws must have send(str) and close() methods")
        auth = self.config.authenticate
        if auth is not None and not auth(auth_token, user_id):
            raise AuthenticationError(f"authentication refused for user {user_id!r}")
        for _ in range(ID_ATTEMPTS):  # a random id is taken once in ~10**18 draws: try again
            cid = self._backend.new_connection_id(self.server_id)
            if cid in self.local:
                continue
            if recoverable:
                if self._recovery.register(self._add_record, cid, ws, user_id):
                    return cid
                continue
            conn = self.local.add(cid, ws, user_id, policy=self._send_policy)
            record = ConnectionRecord(cid, user_id, conn.connected_at)
            try:
                added = self._backend.add_connection(self.server_id, record,
                                                     self.config.max_connections_per_user)
            except Exception:
                self.local.remove(cid)
                raise
            if added:
                return cid
            self.local.remove(cid)
        raise DCMError(f"no free connection id after {ID_ATTEMPTS} random draws")

    def _add_record(self, record: ConnectionRecord) -> bool:
        return self._backend.add_connection(self.server_id, record,
                                            self.config.max_connections_per_user)

    @on_runner
    def resume_connection(self, ws: WebSocketLike, user_id: str, token: str,
                          rooms: Mapping[str, tuple[str, int]] | None = None,
                          directs: int = 0) -> tuple[str, bool]:
        """Take a suspended (or still open) recoverable connection back for ``ws``, on any
        server: ``(connection id, recovered)``. ``token`` is the resume token its last hello
        gave (each works once); ``rooms`` what the client last got of each room
        (``room -> (epoch, offset)``) and ``directs`` the number of the last direct message.
        The socket gets a hello (``recovered``), then every room message and direct message
        it missed, in order and once each, then what is new. ``recovered`` is False when a gap
        could not be filled (a room without history, a history lost or trimmed, an overflowed
        mailbox). [`ResumeRefusedError`][dcm_sync.ResumeRefusedError] if the token is not
        valid for ``user_id`` (or recovery is off): register the socket anew then."""
        self._check_open()
        validate_id(user_id, "user_id")
        if not isinstance(token, str):
            raise TypeError("token must be str")
        seen = {room: Position(str(epoch), int(offset))
                for room, (epoch, offset) in (rooms or {}).items()}
        if isinstance(directs, bool) or not isinstance(directs, int) or directs < 0:
            raise ValueError(f"directs must be an int >= 0, got {directs!r}")
        return self._recovery.resume(ws, user_id, token, seen, directs)

    @on_runner
    def release_connection(self, connection_id: str, ws: WebSocketLike | None = None,
                           suspend: bool = True) -> None:
        """The socket of one of this server's connections ended (the peer left, or the network
        dropped it): with ``suspend`` and recovery on, a recoverable connection is suspended
        for ``recovery_window`` (its rooms are told only if it does not come back); any
        other is removed (its rooms are told). Nothing happens if this server no longer
        holds it with ``ws`` (it was removed, or resumed on another socket)."""
        conn = self.local.get(connection_id)
        if conn is None or (ws is not None and conn.ws is not ws):
            return
        if suspend and self._recovery.suspend(connection_id):
            return
        self._departures.remove_local(connection_id, "removed")

    @on_runner
    def join_room(self, connection_id: str, room_id: str) -> None:
        """Put a connection (on any server) in a room. [`ConnectionLimitError`][] if it is
        in ``max_rooms_per_connection`` other rooms already."""
        self._room_change(connection_id, room_id, join=True)

    @on_runner
    def leave_room(self, connection_id: str, room_id: str) -> None:
        """Take a connection (on any server) out of a room; leaving a room it is not in is a no-op."""
        self._room_change(connection_id, room_id, join=False)

    def _room_change(self, connection_id: str, room_id: str, join: bool) -> None:
        self._check_open()
        validate_id(connection_id, "connection_id")
        validate_id(room_id, "room_id")
        self._membership.change(connection_id, room_id, join)

    def touch(self, connection_id: str) -> None:
        """Record activity on a connection (on any server), postponing its stale cleanup."""
        self._check_open()
        validate_id(connection_id, "connection_id")
        if self.local.touch(connection_id):
            return
        data = self._envelope(Touch(connection_id))
        if self._backend.route(connection_id, self.server_id, data) is None:
            raise UnknownConnectionError(f"unknown connection {connection_id!r}")

    def touch_local(self, connection_id: str) -> bool:
        """Record activity on one of this server's connections; False (nothing done) if this
        server does not hold it. Never touches Redis: for a transport that sees a message."""
        return self.local.touch(connection_id)

    def rooms_of(self, connection_id: str) -> frozenset[str]:
        """The rooms one of this server's connections is in, as this server knows them
        (empty if this server does not hold it)."""
        conn = self.local.get(connection_id)
        return frozenset(conn.rooms) if conn is not None else frozenset()

    @on_runner
    def close_connection(self, connection_id: str, code: int = 1000, reason: str = "") -> bool:
        """Close one of this server's sockets with ``code`` and ``reason``, after what is
        queued for it, never waiting for the client; False if this server does not hold it.
        The connection stays registered until its owner removes it (the Flask extension does
        when its view returns); [`remove_connection`][] removes and closes in one step."""
        conn = self.local.get(connection_id)
        if conn is None:
            return False
        conn.close(code, reason)
        return True

    @on_runner
    def remove_connection(self, connection_id: str) -> None:
        """Remove a connection on any server; its owner closes the socket. Rooms are told."""
        self._check_open()
        validate_id(connection_id, "connection_id")
        if self._departures.remove_local(connection_id, "removed"):
            return
        if not self._presence.remove_elsewhere([connection_id]):
            raise UnknownConnectionError(f"unknown connection {connection_id!r}")

    # ----------------------------------------------------------------- messages
    @on_runner
    def broadcast_to_room(self, room_id: str, message: Any,
                          exclude: Iterable[str] | None = None) -> None:
        """Send ``message`` to every member of the room on every server, less ``exclude``."""
        self._check_open()
        validate_id(room_id, "room_id")
        text = encode_message(message, self.config.max_message_bytes)
        skip = exclusions(exclude)
        data = self._envelope(RoomMessage(room_id, text, tuple(sorted(skip))))
        if self._history.keeps(room_id):
            # appended and published in one step; this server's members get it from the bus
            # like every other server's, so that each delivers the room's messages in offset
            # order (and none when it could not be kept: the error is raised)
            self._history.append(room_id, data)
            return
        # Publish first so that other servers see this message before any departure it causes
        # here; local members get it even when the bus is unreachable (the error is then raised).
        try:
            self._backend.publish(f"room:{room_id}", data)
        finally:
            self._delivery.to_room(room_id, text, skip)

    @on_runner
    def get_room_history(self, room_id: str, limit: int = 50) -> list[HistoryEntry]:
        """The last ``limit`` messages of a room that keeps a history (``history_rooms``),
        oldest first; [] for a room without one, or whose history expired."""
        self._check_open()
        validate_id(room_id, "room_id")
        return self._history.latest(room_id, limit)

    @on_runner
    def send_to_connection(self, connection_id: str, message: Any) -> bool:
        """Send to one connection on any server. True if it exists (delivered here or routed
        to its server), False if no server knows it or its local send failed."""
        self._check_open()
        validate_id(connection_id, "connection_id")
        text = encode_message(message, self.config.max_message_bytes)
        conn = self.local.get(connection_id)
        if conn is not None:
            return self._send_local(conn, text)
        data = self._envelope(DirectMessage(connection_id, text))
        return self._backend.route(connection_id, self.server_id, data) is not None

    def _send_local(self, conn: LocalConnection, text: str) -> bool:
        if conn.secret is None or not self._recovery.on:
            return self._delivery.direct(conn, text)
        # numbered and kept in its mailbox by the backend, then delivered from the bus
        data = self._envelope(DirectMessage(conn.connection_id, text))
        return self._backend.route(conn.connection_id, "", data) is not None

    @on_runner
    def send_to_server(self, server_id: str, message: Any) -> bool:
        """Send a control message to a live server's [`on_server_message`][] handlers.
        False if no such server is alive."""
        self._check_open()
        validate_id(server_id, "server_id")
        encode_message(message, self.config.max_message_bytes)  # type and size checks
        return self._backend.publish_to_server(server_id, self._envelope(ServerMessage(message)))

    def on_server_message(self, handler: ServerMessageHandler) -> ServerMessageHandler:
        """Call ``handler(origin_server_id, message)`` for each control message to this server."""
        if not callable(handler):
            raise TypeError("handler must be callable")
        self._dispatch.server_handlers.append(handler)
        return handler

    def on_request(self, handler: RequestHandler) -> RequestHandler:
        """Answer requests to this server with ``handler(from_server_id, message) -> reply``
        (replacing any handler set before); the reply must be JSON-serializable and at most
        ``max_message_bytes``. It runs in a worker of its own, never on the listener (see
        [`request`][dcm_sync.DistributedConnectionManager.request])."""
        if not callable(handler):
            raise TypeError("handler must be callable")
        self._requests.handler = handler
        return handler

    def request(self, server_id: str, message: Any, timeout: float = 5.0) -> Any:
        """Ask a live server's [`on_request`][dcm_sync.DistributedConnectionManager.on_request]
        handler (this server's own too) and return its reply, decoded as sent.

        Raises [`UnknownServerError`][dcm_sync.UnknownServerError] if no such server is alive,
        the builtin ``TimeoutError`` if no reply came within ``timeout`` seconds, and
        [`RequestFailedError`][dcm_sync.RequestFailedError] if the server answered with an
        error: its handler raised (the message names the error), it has no handler, or the
        reply could not be sent. [`DCMError`][dcm_sync.DCMError] if this manager is shut down,
        while waiting too."""
        self._check_open()
        validate_id(server_id, "server_id")
        encode_message(message, self.config.max_message_bytes)  # type and size checks
        return self._requests.request(server_id, message, check_timeout(timeout))

    def survey(self, message: Any, timeout: float = 5.0) -> dict[str, Any]:
        """Ask every live server (the heartbeat registry's, this one included) and return the
        replies that came within ``timeout`` seconds, by server id; returns as soon as every
        one answered. A server that did not answer in time, or answered with an error (its
        handler raised, or it has none), is left out."""
        self._check_open()
        encode_message(message, self.config.max_message_bytes)
        seconds = check_timeout(timeout)
        servers = self._backend.live_servers()  # the heartbeat registry, not the full stats
        return self._requests.survey(servers, message, seconds)

    # ----------------------------------------------------------------- cluster
    def handle_server_failure(self, server_id: str) -> int:
        """Clean up a dead server's connections and tell their rooms (reason ``server-failure``).
        Idempotent and safe when several servers call it at once: each connection is removed
        exactly once. Returns how many connections this call removed."""
        return self._maintenance.handle_server_failure(server_id)

    def _restore(self) -> None:
        self._maintenance.restore()

    def get_distributed_stats(self) -> DistributedStats:
        """Cluster-wide figures: connections, rooms and live servers, and this process's own
        connection count."""
        total, rooms, servers = self._backend.stats()
        return DistributedStats(total, rooms, len(servers), len(self.local), servers)

    def get_active_servers(self) -> list[ServerInfo]:
        """Every live server, as the shared state records it."""
        return self._backend.stats()[2]

    def get_rooms(self, offset: int = 0, limit: int = 50) -> list[tuple[str, int]]:
        """``(room_id, members)`` of the rooms with members on every server, largest first
        (ties by name): up to ``limit`` from ``offset`` on. Each page reads the whole room index."""
        return rooms_page(self._backend, offset, limit)

    def metrics(self) -> dict[str, int]:
        """Counters since start, one per key of [`COUNTERS`][] (which says what each counts)."""
        out = dict.fromkeys(COUNTERS, 0)
        out.update(self._counters)
        out["reconnects"] = self._listener.reconnects
        return out
