"""Requests between servers: one server asks another (or every one) and waits for the reply.

The asking side keeps a table of pending calls keyed by request id; each call is removed when
its caller stops waiting (reply, timeout or shutdown), so the table holds only calls in flight.
A reply for an id not in it (late, after a timeout) or from a server the call did not ask is
dropped and logged at debug level.

The answering side never runs the handler on the listener: each request is queued and handed
to a worker spawned through the manager's driver (a thread, or a greenlet under gevent). At
most `MAX_HANDLERS` handler calls run at once per server; up to `MAX_WAITING` more wait
in the queue, and a request beyond that is answered at once with a "busy" error.

Requests and replies are envelopes like any other (signed when signing is on), and both travel
on server channels: a request on the channel of the server asked, its reply on the asker's.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .backends import Backend
from .concurrency import Driver, StopFlag
from .envelopes import EnvelopeWriter, Reply, Request
from .errors import DCMError, RequestFailedError, UnknownServerError
from .messages import encode_message

__all__ = ["Requests", "RequestHandler", "MAX_HANDLERS", "MAX_WAITING"]

logger = logging.getLogger(__name__)

RequestHandler = Callable[[str, Any], Any]  # (asking server id, message) -> reply

MAX_HANDLERS = 16
"""Request handler calls that run at once on one server, each in a ``dcm-request`` worker of
its own (a thread, or a greenlet under gevent)."""
MAX_WAITING = 1000
"""Requests to one server that wait for a free worker; one more is answered at once with a
"busy" error ([`RequestFailedError`][dcm_sync.RequestFailedError] for its asker)."""


class _Call:
    """One pending `request` or `survey`: who is to answer and what came back."""

    __slots__ = ("waiting", "replies", "failures", "done", "closed")

    def __init__(self, servers: set[str], done: StopFlag) -> None:
        self.waiting = servers  # servers that have not answered yet
        self.replies: dict[str, Any] = {}
        self.failures: dict[str, str] = {}  # server id -> error text
        self.done = done  # set when nobody is left to wait for, or on shutdown
        self.closed = False


def check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
    return float(timeout)


class Requests:
    """The request handler of this server, and its calls to others waiting for replies."""

    def __init__(self, server_id: str, backend: Backend, envelope: EnvelopeWriter,
                 driver: Driver, max_message_bytes: int) -> None:
        self._server_id = server_id
        self._backend = backend
        self._envelope = envelope
        self._driver = driver
        self._max_bytes = max_message_bytes
        self.handler: RequestHandler | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, _Call] = {}
        # unique per asker: a random part, so that a restarted server with the same id cannot
        # take a reply meant for its previous life; a counter for the rest
        # (next() of itertools.count is atomic; a generator is not safe across threads)
        self._id_prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._queue: deque[tuple[str, Request]] = deque()
        self._workers = 0
        self._closed = False

    # ----------------------------------------------------------------- asking
    def request(self, server_id: str, message: Any, timeout: float) -> Any:
        call, request_id = self._open({server_id})
        try:
            if not self._backend.publish_to_server(server_id, self._envelope(
                    Request(request_id, message))):
                raise UnknownServerError(f"no live server {server_id!r}")
            self._wait(call, timeout)
        finally:
            self._forget(request_id)
        if server_id in call.replies:
            return call.replies[server_id]
        if server_id in call.failures:
            raise RequestFailedError(call.failures[server_id])
        raise TimeoutError(f"no reply from server {server_id!r} within {timeout} s")

    def survey(self, server_ids: Sequence[str], message: Any, timeout: float) -> dict[str, Any]:
        call, request_id = self._open(set(server_ids))
        try:
            if server_ids:
                data = self._envelope(Request(request_id, message))
                self._backend.publish_many([(f"server:{sid}", data) for sid in server_ids])
                self._wait(call, timeout)
        finally:
            self._forget(request_id)
        for sid, error in call.failures.items():
            logger.debug("survey %s: server %s answered with an error: %s",
                         request_id, sid, error)
        return dict(call.replies)

    def _open(self, servers: set[str]) -> tuple[_Call, str]:
        call = _Call(servers, self._driver.event())
        request_id = f"{self._id_prefix}.{next(self._ids)}"
        with self._lock:
            if self._closed:
                raise DCMError("this manager is shut down")
            self._pending[request_id] = call
        if not servers:
            call.done.set()
        return call, request_id

    def _wait(self, call: _Call, timeout: float) -> None:
        call.done.wait(timeout)
        if call.closed and call.waiting:
            raise DCMError("this manager was shut down while waiting for a reply")

    def _forget(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def replied(self, origin: str, body: Reply) -> None:
        """A reply arrived (on the listener: it only records it)."""
        with self._lock:
            call = self._pending.get(body.id)
            if call is None or origin not in call.waiting:
                logger.debug("dropped a reply from %s to request %s: not waited for",
                             origin, body.id)
                return
            call.waiting.discard(origin)
            if body.ok:
                call.replies[origin] = body.payload
            else:
                call.failures[origin] = str(body.payload)
            finished = not call.waiting
        if finished:
            call.done.set()

    def close(self) -> None:
        """Shutdown: every caller still waiting gets `DCMError` at once; queued requests are
        dropped (their askers time out)."""
        with self._lock:
            self._closed = True
            calls = list(self._pending.values())
            self._queue.clear()
        for call in calls:
            call.closed = True
            call.done.set()

    # ----------------------------------------------------------------- answering
    def received(self, origin: str, body: Request) -> None:
        """A request arrived (on the listener): queue it for a worker, never run it here."""
        spawn = False
        with self._lock:
            if self._closed:
                return
            busy = len(self._queue) >= MAX_WAITING
            if not busy:
                self._queue.append((origin, body))
                spawn = self._workers < MAX_HANDLERS
                if spawn:
                    self._workers += 1
        if busy:
            self._send(origin, Reply(body.id, False, f"server {self._server_id} is busy: "
                                     f"{MAX_HANDLERS} requests running, {MAX_WAITING} waiting"))
        elif spawn:
            try:
                self._driver.spawn("dcm-request", self._work)
            except Exception:
                with self._lock:
                    self._workers -= 1
                logger.exception("could not start a request worker")

    def _work(self) -> None:
        counted = True
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        self._workers -= 1
                        counted = False
                        return
                    origin, body = self._queue.popleft()
                self._send(origin, self._answer(origin, body))
        finally:
            if counted:  # left through an exception (the worker was killed)
                with self._lock:
                    self._workers -= 1

    def _answer(self, origin: str, body: Request) -> Reply:
        handler = self.handler
        if handler is None:
            return Reply(body.id, False, f"no request handler on server {self._server_id}")
        started = time.monotonic()
        try:
            result = handler(origin, body.payload)
        except Exception as exc:
            logger.exception("request handler %r failed on a request from %s", handler, origin)
            return Reply(body.id, False, f"request handler on server {self._server_id} "
                                         f"raised {type(exc).__name__}: {exc}")
        try:
            encode_message(result, self._max_bytes)  # what a sendable reply must pass
        except (TypeError, ValueError) as exc:  # MessageTooLargeError is a ValueError
            logger.warning("request handler %r returned a reply that cannot be sent: %s",
                           handler, exc)
            return Reply(body.id, False, f"the reply of server {self._server_id} cannot be "
                                         f"sent: {exc}")
        logger.debug("request %s from %s answered in %.3f s", body.id, origin,
                     time.monotonic() - started)
        return Reply(body.id, True, result)

    def _send(self, origin: str, reply: Reply) -> None:
        try:
            self._backend.publish(f"server:{origin}", self._envelope(reply))
        except Exception as exc:  # the asker times out; this server goes on
            logger.warning("could not send the reply to request %s to %s: %s",
                           reply.id, origin, exc)
