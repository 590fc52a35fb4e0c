"""DistributedConnectionManager: one server's view of the cluster, backend-agnostic.

Data flows one way: API call -> local sockets and backend (shared state + bus); and back from
the listener -> :meth:`DistributedConnectionManager._dispatch` -> local sockets.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from .backends import Backend, ConnectionRecord, open_backend
from .backends.redis_keys import server_tag
from .concurrency import Driver, StopFlag, Worker, get_driver
from .config import Config
from .errors import AuthenticationError, BackendError, DCMError, UnknownConnectionError
from .listener import Listener
from .local import LocalConnection, LocalConnectionManager, WebSocketLike
from .maintenance import ClusterMaintenance
from .messages import (
    SIGNED_HEADER_LENGTH,
    Envelope,
    EnvelopeError,
    EnvelopeWriter,
    SignatureError,
    decode_envelope,
    disconnect_notice,
    encode_message,
    envelope_prefix,
    exclusions,
    new_connection_id,
    validate_id,
)
from .models import DistributedStats, RemovedConnection, ServerInfo
from .outbox import SendPolicy

__all__ = ["DistributedConnectionManager", "ServerMessageHandler"]

logger = logging.getLogger(__name__)

ServerMessageHandler = Callable[[str, Any], None]
STOP_SECONDS = 1.0
SLOW_CONSUMER_CODE = 1013  # "try again later": the client fell too far behind
ID_ATTEMPTS = 5


def default_server_id(host: str, port: int) -> str:
    return f"{host}:{port}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class DistributedConnectionManager(ClusterMaintenance):
    """Connections of this process, shared with every other server through the backend.

    Build one with :func:`~dcm_sync.create_distributed_connection_manager`, which also
    starts it. Every method is safe to call from any thread or greenlet.
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
        self._driver: Driver = get_driver()
        local.send_policy = SendPolicy(config.send_queue_max_messages, config.send_queue_max_bytes,
                                       spawn=self._driver.spawn, on_error=self._write_failed)
        self._stop: StopFlag = self._driver.event()
        self._handlers: list[ServerMessageHandler] = []
        self._workers: list[Worker] = []
        self._state_lock = threading.Lock()
        self._started = False
        self._closed = False
        # removals made while Redis was unreachable: connection id -> (what it was, reason)
        self._pending_removals: dict[str, tuple[RemovedConnection, str]] = {}
        self._pending_lock = threading.Lock()
        self._restored_at = 0.0
        self._counters: Counter[str] = Counter()
        self._tag = server_tag(self.server_id)  # the first 4 digits of its connection ids
        self._own_room_prefix = envelope_prefix("room", self.server_id)
        self._envelope = EnvelopeWriter(self.server_id, config.signing_keys, config.key_prefix)
        self._body_at = SIGNED_HEADER_LENGTH if self._envelope.signer else 0  # where the JSON body starts
        self._listener = Listener(
            self._backend, self._driver, self._stop, f"server:{self.server_id}",
            has_local_members=self.local.has_members,
            local_rooms=self.local.rooms, on_message=self._dispatch, on_reconnect=self._restore,
        )

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
        self._workers = [
            self._listener.worker,
            self._driver.spawn("dcm-heartbeat", self._heartbeat_loop),
            self._driver.spawn("dcm-cleanup", self._cleanup_loop),
        ]
        if self.config.probe_interval > 0:
            self._workers.append(self._driver.spawn("dcm-probe", self._probe_loop))

    def is_ready(self) -> bool:
        """True while registered, subscribed and running (until :meth:`shutdown`)."""
        return (self._started and not self._closed
                and all(w.is_alive() for w in self._workers) and bool(self._workers))

    def shutdown(self) -> None:
        """Stop the loops, remove every local connection (reason ``shutdown``: members on other
        servers are told), close the sockets and deregister. Idempotent."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._listener.close()  # wakes the listener out of its blocking read
        deadline = time.monotonic() + STOP_SECONDS
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                self._driver.kill(worker)
        conns = []
        for conn in self.local.connections():
            if self.local.remove(conn.connection_id) is not None:
                conns.append(conn)
        try:
            if self._started:
                removed = self._backend.remove_connections([c.connection_id for c in conns])
                items = self._notifications([r for r in removed if r], "shutdown", local=False)
                self._backend.publish_many(items)
                self._backend.deregister_server(self.server_id)
        except BackendError as exc:
            logger.warning("shutdown could not update shared state: %s", exc)
        for conn in conns:
            self._close_socket(conn)
        self._backend.close()

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
    def register_connection(self, ws: WebSocketLike, user_id: str,
                            auth_token: str | None = None) -> str:
        """Hold ``ws`` for ``user_id`` and return its cluster-wide connection id."""
        self._check_open()
        validate_id(user_id, "user_id")
        if not (callable(getattr(ws, "send", None)) and callable(getattr(ws, "close", None))):
            raise TypeError("ws must have send(str) and close() methods")
        auth = self.config.authenticate
        if auth is not None and not auth(auth_token, user_id):
            raise AuthenticationError(f"authentication refused for user {user_id!r}")
        for _ in range(ID_ATTEMPTS):  # a random id is taken once in ~10**18 draws: try again
            cid = new_connection_id(self._tag)
            if cid in self.local:
                continue
            conn = self.local.add(cid, ws, user_id)
            record = ConnectionRecord(cid, user_id, conn.connected_at)
            try:
                added = self._backend.add_connection(self.server_id, record,
                                                     self.config.connection_ttl)
            except Exception:
                self.local.remove(cid)
                raise
            if added:
                return cid
            self.local.remove(cid)
        raise DCMError(f"no free connection id after {ID_ATTEMPTS} random draws")

    def join_room(self, connection_id: str, room_id: str) -> None:
        """Put a connection (on any server) in a room. :class:`ConnectionLimitError` if it is
        in ``max_rooms_per_connection`` other rooms already."""
        self._room_change(connection_id, room_id, join=True)

    def leave_room(self, connection_id: str, room_id: str) -> None:
        """Take a connection (on any server) out of a room; leaving a room it is not in is a no-op."""
        self._room_change(connection_id, room_id, join=False)

    def _room_change(self, connection_id: str, room_id: str, join: bool) -> None:
        self._check_open()
        validate_id(connection_id, "connection_id")
        validate_id(room_id, "room_id")
        kind = "join" if join else "leave"
        local = connection_id in self.local
        route = b"" if local else self._envelope(kind, c=connection_id, r=room_id)
        if join:
            owner = self._backend.join_room(connection_id, room_id, self.server_id, route,
                                            self.config.max_rooms_per_connection)
        else:
            owner = self._backend.leave_room(connection_id, room_id, self.server_id, route)
        if owner is None:
            raise UnknownConnectionError(f"unknown connection {connection_id!r}")
        if owner == self.server_id:
            self._apply_local_room_change(connection_id, room_id, join,
                                          wait=self.config.subscribe_timeout)

    def _apply_local_room_change(self, connection_id: str, room_id: str, join: bool,
                                 wait: float | None) -> None:
        changed = (self.local.join if join else self.local.leave)(connection_id, room_id)
        if changed:  # first local member joined, or last one left
            self._listener.sync_rooms([room_id], wait=wait)

    def touch(self, connection_id: str) -> None:
        """Record activity on a connection (on any server), postponing its stale cleanup."""
        self._check_open()
        validate_id(connection_id, "connection_id")
        if self.local.touch(connection_id):
            return
        data = self._envelope("touch", c=connection_id)
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

    def close_connection(self, connection_id: str, code: int = 1000, reason: str = "") -> bool:
        """Close one of this server's sockets with ``code`` and ``reason``, after what is
        queued for it, never waiting for the client; False if this server does not hold it.
        The connection stays registered until its owner removes it (the Flask extension does
        when its view returns); :meth:`remove_connection` removes and closes in one step."""
        conn = self.local.get(connection_id)
        if conn is None:
            return False
        conn.close(code, reason)
        return True

    def remove_connection(self, connection_id: str) -> None:
        """Remove a connection on any server; its owner closes the socket. Rooms are told."""
        self._check_open()
        validate_id(connection_id, "connection_id")
        if self._remove_local(connection_id, "removed"):
            return
        removed = self._backend.remove_connections([connection_id])[0]
        if removed is None:
            raise UnknownConnectionError(f"unknown connection {connection_id!r}")
        items = []
        if removed.server_id != self.server_id:  # evict first: the owner closes it before notices
            items.append((f"server:{removed.server_id}",
                          self._envelope("evict", c=connection_id)))
        self._backend.publish_many(items + self._notifications([removed], "removed"))

    def _remove_local(self, connection_id: str, reason: str) -> bool:
        """Remove one of this server's connections everywhere; False if it is not local."""
        conn = self._drop_local(connection_id)
        if conn is None:
            return False
        try:
            removed = self._backend.remove_connections([connection_id])[0]
        except BackendError as exc:
            logger.warning("connection %s removed locally; shared state follows later: %s",
                           connection_id, exc)
            known = RemovedConnection(connection_id, conn.user_id, self.server_id, tuple(conn.rooms))
            with self._pending_lock:
                self._pending_removals[connection_id] = (known, reason)
            self._notifications([known], reason)  # local members now; the others once Redis is back
            return True
        if removed is not None:
            self._publish_quietly(self._notifications([removed], reason))
        return True

    def _drop_local(self, connection_id: str) -> LocalConnection | None:
        """Forget a local socket, close it and leave emptied room channels."""
        result = self.local.remove(connection_id)
        if result is None:
            return None
        conn, emptied = result
        if emptied:
            self._listener.sync_rooms(emptied)
        self._close_socket(conn)
        return conn

    @staticmethod
    def _close_socket(conn: LocalConnection) -> None:
        try:
            conn.close()
        except Exception as exc:  # the peer may already be gone
            logger.debug("closing socket of %s: %s", conn.connection_id, exc)

    # ----------------------------------------------------------------- messages
    def broadcast_to_room(self, room_id: str, message: Any,
                          exclude: Iterable[str] | None = None) -> None:
        """Send ``message`` to every member of the room on every server, less ``exclude``."""
        self._check_open()
        validate_id(room_id, "room_id")
        text = encode_message(message, self.config.max_message_bytes)
        skip = exclusions(exclude)
        # Publish first so that other servers see this message before any departure it causes
        # here; local members get it even when the bus is unreachable (the error is then raised).
        try:
            self._backend.publish(f"room:{room_id}", self._envelope(
                "room", r=room_id, m=text, x=sorted(skip)))
        finally:
            self._deliver_room(room_id, text, skip)

    def send_to_connection(self, connection_id: str, message: Any) -> bool:
        """Send to one connection on any server. True if it exists (delivered here or routed
        to its server), False if no server knows it or its local send failed."""
        self._check_open()
        validate_id(connection_id, "connection_id")
        text = encode_message(message, self.config.max_message_bytes)
        conn = self.local.get(connection_id)
        if conn is not None:
            return self._send(conn, text)
        data = self._envelope("direct", c=connection_id, m=text)
        return self._backend.route(connection_id, self.server_id, data) is not None

    def send_to_server(self, server_id: str, message: Any) -> bool:
        """Send a control message to a live server's :meth:`on_server_message` handlers.
        False if no such server is alive."""
        self._check_open()
        validate_id(server_id, "server_id")
        encode_message(message, self.config.max_message_bytes)  # type and size checks
        return self._backend.publish_to_server(
            server_id, self._envelope("server", p=message))

    def on_server_message(self, handler: ServerMessageHandler) -> ServerMessageHandler:
        """Call ``handler(origin_server_id, message)`` for each control message to this server."""
        if not callable(handler):
            raise TypeError("handler must be callable")
        self._handlers.append(handler)
        return handler

    def _send(self, conn: LocalConnection, text: str, encoded: bytes | None = None) -> bool:
        try:
            if conn.send(text, encoded):
                return True
        except Exception as exc:
            self._write_failed(conn.connection_id, exc)
            return False
        # its outbox is full: a client that does not read. Cut it, never wait for it.
        self._counters["slow_consumers"] += 1
        logger.warning("cutting slow consumer %s (user %s): its outbox is full",
                       conn.connection_id, conn.user_id)
        conn.close(SLOW_CONSUMER_CODE, "slow consumer", slow=True)
        self._remove_local(conn.connection_id, "removed")
        return False

    def _write_failed(self, connection_id: str, exc: BaseException) -> None:
        self._counters["send_errors"] += 1
        logger.info("send to %s failed (%s); removing it", connection_id, exc)
        try:
            self._remove_local(connection_id, "removed")
        except DCMError as err:  # called from a socket's writer: nobody to raise to
            logger.warning("could not remove %s after a failed send: %s", connection_id, err)

    def _deliver_room(self, room_id: str, text: str, exclude: Iterable[str] = ()) -> None:
        members = self.local.members(room_id, exclude)
        if len(members) < 2:
            for conn in members:
                self._send(conn, text)
            return
        # encoded once for every member whose socket encodes alike, not once per socket
        shared: dict[Hashable, bytes] = {}
        for conn in members:
            key = conn.encoding
            if key is None:
                self._send(conn, text)
                continue
            encoded = shared.get(key)
            if encoded is None:
                encoded = shared[key] = conn.encode(text)
            self._send(conn, text, encoded)

    # ----------------------------------------------------------------- notifications
    def _notifications(self, removed: Sequence[RemovedConnection], reason: str,
                       local: bool = True) -> list[tuple[str, bytes]]:
        """Tell the members left in each room; deliver here unless ``local`` is False and
        return the envelopes to publish for the other servers."""
        if not self.config.notify_on_disconnect:
            return []
        items = []
        for r in removed:
            for room in r.rooms_left:
                text = encode_message(disconnect_notice(room, r.user_id, r.connection_id, reason),
                                      self.config.max_message_bytes)
                if local:
                    self._deliver_room(room, text)
                items.append((f"room:{room}", self._envelope(
                    "room", r=room, m=text, x=[r.connection_id])))
        return items

    def _publish_quietly(self, items: list[tuple[str, bytes]]) -> None:
        if not items:
            return
        try:
            self._backend.publish_many(items)
        except BackendError as exc:
            logger.warning("could not tell other servers of %d departure(s): %s", len(items), exc)

    # ----------------------------------------------------------------- cluster
    def get_distributed_stats(self) -> DistributedStats:
        total, rooms, servers = self._backend.stats()
        return DistributedStats(total, rooms, len(servers), len(self.local), servers)

    def get_active_servers(self) -> list[ServerInfo]:
        return self._backend.stats()[2]

    def metrics(self) -> dict[str, int]:
        """Counters since start: reconnects, probes_failed, envelopes_dropped (of which
        signature_failures), send_errors, connections_cleaned, stale_removed, restores."""
        out = dict.fromkeys(("envelopes_dropped", "signature_failures", "send_errors",
                             "connections_cleaned", "stale_removed", "restores", "probes_failed",
                             "slow_consumers"), 0)
        out.update(self._counters)
        out["reconnects"] = self._listener.reconnects
        return out

    # ----------------------------------------------------------------- dispatch
    def _dispatch(self, channel: str, data: bytes) -> None:
        if data.startswith(self._own_room_prefix, self._body_at):
            # this server's own broadcast, delivered here when it was sent (with signing on, a
            # forgery that looks like one is dropped here too, unchecked: nothing is delivered)
            return
        try:
            env = decode_envelope(data, self._envelope.signer)
            if env.kind == "room" and channel != f"room:{env.fields['r']}":
                raise EnvelopeError(f"room envelope for {env.fields['r']!r} arrived on {channel!r}")
        except EnvelopeError as exc:
            self._counters["envelopes_dropped"] += 1
            if isinstance(exc, SignatureError):
                self._counters["signature_failures"] += 1
            logger.warning("dropped a message on %s: %s", channel, exc)
            return
        self._handle(env)

    def _handle(self, env: Envelope) -> None:
        f = env.fields
        if env.kind == "room":
            if env.origin != self.server_id:  # see _dispatch
                self._deliver_room(f["r"], f["m"], f["x"])
        elif env.kind == "direct":
            conn = self.local.get(f["c"])
            if conn is not None:
                self._send(conn, f["m"])
        elif env.kind == "server":
            for handler in list(self._handlers):
                try:
                    handler(env.origin, f["p"])
                except Exception:
                    logger.exception("server message handler %r failed", handler)
        elif env.kind in ("join", "leave"):
            self._apply_local_room_change(f["c"], f["r"], env.kind == "join", wait=None)
        elif env.kind == "evict":
            self._drop_local(f["c"])
        elif env.kind == "touch":
            self.local.touch(f["c"])
        elif env.kind == "probe":
            if env.origin == self.server_id:
                self._listener.probe_returned(f["n"])
