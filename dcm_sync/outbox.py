"""Bounded outgoing queues: what keeps one slow client from holding up the others.

A socket object that can write without blocking (the Flask extension's transports can: see
`OutboxSocket`) gets an `Outbox`. The core never builds wire bytes itself: the
socket encodes each text (``encode_text``), and says through ``encoding`` which sockets encode
alike, so that a room delivery encodes a message once for all of them.

A message is written at once when the socket takes it whole; what does not fit waits in the
outbox, in order, and a writer of the socket's own (a greenlet or thread, started on demand,
gone when the outbox is empty) writes it. The delivering thread never waits for a client.
When an outbox would hold more than ``max_messages`` messages or ``max_bytes`` bytes, it
refuses the message (``put`` returns False): the caller cuts the client (``close`` with
``drop``).

When several messages wait, the writer sends them in one write (one system call), joined, up
to ``COALESCE_BYTES``: whole frames, in order, never cut or interleaved. Those being written
still count towards the bounds until the write returns, so a slow consumer is cut at the same
limits.

A thread (or greenlet) that delivers a batch of messages, as the bus listener does with what
it read from Redis at once, can hold its room deliveries back with a `Cork`: each socket gets
the batch's frames in one write when the cork is flushed (or when what it holds reaches
``COALESCE_BYTES``), instead of one write per frame. Only frames encoded once for several
sockets (a room's) start a hold; a message to a socket that holds frames joins them, in order.

Sockets that only have ``send(str)`` are written by the delivering thread, as they always were.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["OutboxSocket", "KeepaliveSocket", "ControlSink", "SendPolicy", "Outbox", "Cork"]

logger = logging.getLogger(__name__)

#: at most this many bytes of waiting messages go out in one write (a bigger message alone)
COALESCE_BYTES = 64 * 1024

#: the installed corks, by the thread or greenlet that installed them (``SendPolicy.current``)
_corks: dict[object, Cork] = {}


class Cork:
    """Writes held back while one thread (or greenlet) delivers a batch: `install` it there,
    and `flush` it at the end of each batch. While it is installed, a message it sends to a
    socket that is not writing already is kept in the socket's outbox (whole frames, in
    order: any other thread's message to that socket is kept behind it) until the flush.
    ``owner``: the installing thread's or greenlet's id, as ``SendPolicy.current`` gives it."""

    __slots__ = ("held", "owner", "active")

    def __init__(self, owner: object) -> None:
        self.held: list[Outbox] = []
        self.owner = owner
        self.active = True  # False: messages go out at once (those held keep their turn)

    def install(self) -> None:
        _corks[self.owner] = self

    def uninstall(self) -> None:
        self.flush()
        _corks.pop(self.owner, None)

    def flush(self) -> None:
        """Write what each socket holds, one write each (what does not fit waits as usual)."""
        held, self.held = self.held, []
        for outbox in held:
            outbox.uncork()


class ControlSink(Protocol):
    """What the outbox offers the socket it writes to (`OutboxSocket.attach`)."""

    def put_control(self, frame: bytes) -> None:
        """Send a control frame (a pong) in order with the messages, never inside one."""
        ...

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until what was queued is written or given up (``None``: as long as a closed
        client may take, ``abort_grace``, and a second more)."""
        ...


@runtime_checkable
class OutboxSocket(Protocol):
    """What a socket needs for a bounded outbox (``encoding`` is an attribute)."""

    #: Sockets whose ``encoding`` is equal (and not None) turn the same text into the same
    #: bytes, whatever the socket: a room delivery calls ``encode_text`` once for all of them.
    #: None: this socket's bytes are its own (per-socket compression, say).
    encoding: Hashable | None

    def encode_text(self, text: str) -> bytes:
        """The bytes to write for one text message."""
        ...

    def attach(self, control: ControlSink) -> None:
        """From now on, send control frames through ``control`` (called once, by the outbox)."""
        ...

    def write_nowait(self, data: bytes | bytearray) -> int:
        """Write what fits without blocking; how many bytes were written (0 when none)."""
        ...

    def write(self, data: bytes | bytearray) -> None:
        """Write all of ``data``, waiting as needed; raise when the peer is gone."""
        ...

    def closing(self, code: int, reason: str) -> bytes:
        """The socket is closing with ``code`` and ``reason``: return the bytes to write last
        (its close frame); from now on it neither closes again nor returns messages."""
        ...

    def finish(self) -> None:
        """Shut the connection down (after the close frame, or when it could not be written)."""
        ...

    def abort(self) -> None:
        """Drop the connection at once, discarding what the kernel still holds for it (a
        reset), and wake a `write` blocked on it: the client took nothing for
        ``abort_grace`` seconds after it was cut or closed."""
        ...


@runtime_checkable
class KeepaliveSocket(Protocol):
    """A socket the manager can ping (``Config.ping_interval``): it says when the client last
    sent anything, and gives the bytes that ask the client to answer."""

    #: ``time.monotonic()`` when the client last sent anything (a message, a ping, a pong)
    last_received: float

    def keepalive(self) -> bytes:
        """The bytes that ask the client to answer at once (a ping)."""
        ...


def _thread_spawn(name: str, target: Callable[[], None]) -> object:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def _log_error(connection_id: str, exc: BaseException) -> None:
    logger.info("writing to %s failed: %s", connection_id, exc)


@dataclass
class SendPolicy:
    """Limits and hooks shared by the outboxes of one `LocalConnectionManager`."""

    max_messages: int = 1000
    max_bytes: int = 1024 * 1024
    #: how long a cut client's writer may still try to hand over the close frame
    abort_grace: float = 5.0
    spawn: Callable[[str, Callable[[], None]], object] = field(default=_thread_spawn, repr=False)
    #: the id of the calling thread or greenlet (the driver's ``current_id``): whose `Cork`
    current: Callable[[], object] = field(default=threading.get_ident, repr=False)
    #: called (from the writer) when a queued write failed: the peer is gone
    on_error: Callable[[str, BaseException], None] = field(default=_log_error, repr=False)


class Outbox:
    __slots__ = ("_ws", "_policy", "_cid", "_lock", "_pending", "_bytes", "_writing", "_closed",
                 "_shared", "_idle", "_partial", "_pong", "_in_flight", "_in_flight_bytes", "_corked")

    def __init__(self, ws: OutboxSocket, policy: SendPolicy, connection_id: str,
                 lock: threading.Lock) -> None:
        self._ws = ws
        self._policy = policy
        self._cid = connection_id
        self._lock = lock
        self._pending: deque[bytes | bytearray] | None = None  # made on first need: most never queue
        self._bytes = 0
        self._writing = False  # a writer owns the socket's write side
        self._closed = False
        self._idle: threading.Event | None = None  # made by wait_idle, set when the writer ends
        self._partial = False  # the first item waiting is the rest of a frame partly written
        self._pong: bytearray | None = None  # the one control frame waiting whole, if any
        # messages (after the first) and their bytes in the write under way: they still count
        self._in_flight, self._in_flight_bytes = 0, 0
        self._corked: bytearray | None = None  # frames a Cork holds back, in order
        self._shared = ws.encoding is not None  # takes an encoding made for another socket
        ws.attach(self)  # the socket sends its control frames (pongs) through here

    @property
    def queued(self) -> tuple[int, int]:
        """Messages and bytes waiting (a write under way holds those after its first)."""
        return ((len(self._pending) if self._pending else 0) + self._in_flight,
                self._bytes + self._in_flight_bytes)

    def put(self, text: str, encoded: bytes | None = None) -> bool:
        """Write ``text`` now or queue it; False (nothing queued) if the outbox is full. After
        `close` (or a failed write) messages are dropped (True: nothing to do).
        ``encoded``: ``text`` as encoded by a socket of the same ``encoding`` (a room
        delivery's one encoding), ignored by a socket whose ``encoding`` is None. Encoding
        happens under the lock otherwise: per-socket compression needs messages in write
        order."""
        with self._lock:
            if self._closed:
                return True
            data = encoded if encoded is not None and self._shared else self._ws.encode_text(text)
            corked = self._corked
            # only a room's frames (encoded once for several sockets) start being held back
            if corked is None and encoded is not None and not self._writing and _corks:
                cork = _corks.get(self._policy.current())
                if cork is not None and cork.active:
                    corked = self._corked = bytearray()
                    cork.held.append(self)
            if corked is None:
                return self._push(data, bounded=True)
            corked += data
            if len(corked) >= COALESCE_BYTES:
                self._release()
            return True

    def uncork(self) -> None:
        """Write what a `Cork` held back (called by its flush)."""
        try:
            with self._lock:
                self._release()
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        """A write failed (the peer is gone): drop what waits, report it once, shut down."""
        with self._lock:
            self._pending, self._bytes, self._writing, self._pong = None, 0, False, None
            self._in_flight, self._in_flight_bytes, self._corked = 0, 0, None
            closed, self._closed = self._closed, True
        if not closed:
            self._policy.on_error(self._cid, exc)
        self._ws.finish()

    def _release(self, quiet: bool = False) -> None:
        """With the lock held: write (or queue) the frames a cork held, if any. ``quiet``: a
        failed write is only logged (the socket is closing, or a pong is on its way: the
        next message, or the reader, finds the socket gone)."""
        corked, self._corked = self._corked, None
        if not corked:
            return
        try:
            self._push(bytes(corked), bounded=False)
        except Exception as exc:
            if not quiet:
                raise
            logger.debug("held-back frames to %s not written: %s", self._cid, exc)

    def put_control(self, frame: bytes) -> None:
        """A control frame (a pong): in order with the messages, never inside one; dropped once
        closed. At most one waits: a newer one takes the place of the one not yet begun (RFC
        6455 5.5.3 lets a pong answer only the most recent ping), so a client that pings and
        never reads cannot grow the outbox. Its bytes count toward ``max_bytes``; it is never
        refused itself (it is at most 127 bytes)."""
        with self._lock:
            if self._closed:
                return
            self._release(quiet=True)  # after the messages held back, never inside one
            if self._pong is not None:  # one waits, whole: this one replaces it
                self._bytes += len(frame) - len(self._pong)
                self._pong[:] = frame
                return
            if self._writing:
                self._pong = bytearray(frame)
                self._push(self._pong, bounded=False)
            else:
                self._push(frame, bounded=False)

    def _push(self, data: bytes | bytearray, bounded: bool) -> bool:
        """With the lock held: write what the socket takes now, queue the rest (starting a
        writer if none runs); False, queueing nothing, if ``bounded`` and the outbox is full."""
        if not self._writing:
            sent = self._ws.write_nowait(data)
            if sent == len(data):
                return True
            self._pending = deque([data[sent:]])
            self._bytes = len(data) - sent
            self._writing, self._idle, self._partial = True, None, sent > 0
            self._policy.spawn(f"dcm-writer-{self._cid}", self._drain)  # it waits for the lock
            return True
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        elif bounded and (pending or self._in_flight) and (
                len(pending) + self._in_flight >= self._policy.max_messages
                or self._bytes + self._in_flight_bytes + len(data) > self._policy.max_bytes):
            return False  # an empty outbox takes any one message, however big
        pending.append(data)
        self._bytes += len(data)
        return True

    def close(self, code: int, reason: str, drop: bool = False) -> None:
        """Close with ``code``/``reason`` after what waits (``drop``: instead of it; a slow
        consumer), then shut the connection down. Never blocks the caller; a writer still
        busy gives up after the policy's ``abort_grace``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not drop:
                self._release(quiet=True)  # what a cork held goes before the close frame
            else:  # a slow consumer: what waits and what a cork held are dropped, but never
                # the rest of a frame already begun: the stream stays whole
                self._corked = None
                rest = self._pending[0] if self._partial and self._pending else None
                self._pending = deque([rest]) if rest is not None else None
                self._bytes = len(rest) if rest is not None else 0
            if drop or self._pending is None:
                self._pong = None
            close_frame = self._ws.closing(code, reason)
            if self._writing:  # the writer sends it after what it has, then finishes
                if self._pending is None:
                    self._pending = deque()
                self._pending.append(close_frame)
                self._bytes += len(close_frame)
                # the client may not read at all: it gets abort_grace seconds to take the rest
                self._policy.spawn(f"dcm-closing-{self._cid}", self._abort_after_grace)
                return
        try:  # no writer: nothing waits, and nothing is queued once closed
            self._ws.write_nowait(close_frame)
        except OSError as exc:
            logger.debug("close frame to %s not written: %s", self._cid, exc)
        self._ws.finish()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no writer is busy (what was queued is written, or given up); whoever owns
        the connection calls this before closing it under the writer (the WSGI handler).
        ``None``: ``abort_grace`` and a second more, by when a closed client was dropped."""
        if timeout is None:
            timeout = self._policy.abort_grace + 1.0
        with self._lock:
            if not self._writing:
                return True
            if self._idle is None:
                self._idle = threading.Event()
            idle = self._idle
        return idle.wait(timeout)

    def _abort_after_grace(self) -> None:
        grace = self._policy.abort_grace
        if not self.wait_idle(grace):
            logger.info("%s took nothing of its last %d bytes for %.1fs after it was closed; "
                        "dropping the connection", self._cid, self.queued[1], grace)
            self._ws.abort()

    def _drain(self) -> None:
        try:
            self._write_all()
        finally:
            idle = self._idle
            if idle is not None:
                idle.set()

    def _write_all(self) -> None:
        while True:
            with self._lock:
                pending = self._pending
                if not pending:
                    self._writing = False
                    closed = self._closed
                    break
                data = self._take(pending)
            try:
                self._ws.write(data)
            except Exception as exc:
                self._failed(exc)
                return
            if self._in_flight:
                with self._lock:
                    self._in_flight, self._in_flight_bytes = 0, 0
        if closed:
            self._ws.finish()

    def _take(self, pending: deque[bytes | bytearray]) -> bytes | bytearray:
        """With the lock held: the next write, the first item waiting and as many whole ones
        after it as fit in ``COALESCE_BYTES``, joined; those after the first stay counted
        (``_in_flight``) until it is written."""
        parts = [pending.popleft()]
        size = len(parts[0])
        while pending and size + len(pending[0]) <= COALESCE_BYTES:
            parts.append(pending.popleft())
            size += len(parts[-1])
        if self._pong is not None and any(part is self._pong for part in parts):
            self._pong = None  # taken whole: a newer pong now waits on its own
        self._partial = False
        self._in_flight, self._in_flight_bytes = len(parts) - 1, size - len(parts[0])
        self._bytes -= size
        return parts[0] if len(parts) == 1 else b"".join(parts)
