"""Connection-state recovery: a recoverable connection whose socket drops is suspended, not
removed, for ``recovery_window`` seconds; a client that comes back in time, to any server,
with the token it was given, gets the same connection id and rooms and what it missed.

* Suspending keeps the shared state as it is (the id, the user, the rooms: nobody is told)
  and marks it suspended until the window's end; this server removes it then (its rooms hear
  ``user-disconnected``, reason ``timeout``) unless a server resumed it. A dead server's
  recoverable connections are suspended by the server that cleans up after it, which removes
  them at their window's end.
* Resuming takes the connection over in one step of the backend (the secret must match and is
  replaced: a token works once), subscribes to its rooms, holds back what arrives live, sends
  what the client missed (room messages from history, direct messages from its mailbox, in
  pages), then what was held back less repeats.
* Room messages are known by their room's epoch and offset, direct messages by their number;
  the client tells what it has (``rooms``: room -> ``(epoch, offset)``, ``directs``: number).
  A gap that cannot be filled (a room without history, a lost or trimmed history, an
  overflowed mailbox) makes ``recovered`` False: the app decides what to reload.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from .backends import Backend, ConnectionRecord
from .backends.base import Resumed
from .concurrency import StopFlag
from .delivery import Delivery
from .departures import Departures
from .envelopes import DirectMessage, Disconnect, EnvelopeError, EnvelopeWriter, decode_body
from .errors import BackendError, ResumeRefusedError
from .history import PAGE, HistoryEntry, Position, RoomHistory
from .listener import Listener
from .local import Held, Hold, LocalConnection, LocalConnectionManager, WebSocketLike
from .models import RemovedConnection
from .outbox import SendPolicy
from .protocol import direct_frame, hello, joined_frame, room_frame

__all__ = ["Recovery", "RESUMED_ELSEWHERE", "MARGIN", "token_of"]

logger = logging.getLogger(__name__)

MARGIN = 60.0  # seconds a suspended connection's record outlives its window
RESUMED_ELSEWHERE = (4000, "resumed on another connection")
_ID_LENGTH = 19


def token_of(connection_id: str, secret: str) -> str:
    """The resume token a client is given: the connection id and its current secret."""
    return f"{connection_id}.{secret}"


class Recovery:
    def __init__(self, server_id: str, window: float,
                 subscribe_timeout: float, local: LocalConnectionManager, backend: Backend,
                 listener: Listener, delivery: Delivery, departures: Departures,
                 history: RoomHistory, envelope: EnvelopeWriter, stop: StopFlag,
                 policy: Callable[[], SendPolicy]) -> None:
        self.window = window
        self._server_id = server_id
        self._subscribe_timeout = subscribe_timeout
        self._local = local
        self._backend = backend
        self._listener = listener
        self._delivery = delivery
        self._departures = departures
        self._history = history
        self._envelope = envelope
        self._stop = stop
        self._policy = policy
        self._lock = threading.Lock()
        self._suspended: dict[str, float] = {}  # connection id -> until (epoch seconds)

    @property
    def on(self) -> bool:
        return self.window > 0

    def suspended(self) -> dict[str, float]:
        """The connections this server will remove when their window ends, and when."""
        with self._lock:
            return dict(self._suspended)

    # ----------------------------------------------------------------- new connections
    def register(self, add: Callable[[ConnectionRecord], bool], cid: str, ws: WebSocketLike,
                 user_id: str) -> bool:
        """Register a recoverable connection: held back until its hello is its first frame."""
        secret = secrets.token_urlsafe(16)
        conn = self._local.add(cid, ws, user_id, policy=self._policy(), secret=secret,
                               hold=Hold())
        try:
            added = add(ConnectionRecord(cid, user_id, conn.connected_at, secret=secret))
        except Exception:
            self._local.remove(cid)
            raise
        if not added:
            self._local.remove(cid)
            return False
        self._open(conn, hello(cid, token_of(cid, secret)))
        return True

    def joined(self, connection_id: str, room_id: str) -> None:
        """A recoverable connection here joined a history room: tell it the room's position,
        so that a resume knows where it started even if nothing came since."""
        conn = self._local.get(connection_id)
        if conn is None or conn.secret is None or not self._history.keeps(room_id):
            return
        self._delivery.framed(conn, room_id, None,
                              joined_frame(room_id, self._history.position(room_id)))

    # ----------------------------------------------------------------- dropping
    def suspend(self, connection_id: str) -> bool:
        """A recoverable connection's socket dropped: keep it for the window. False (nothing
        done) if recovery is off, or it is not a recoverable connection held here."""
        conn = self._local.get(connection_id)
        if not self.on or conn is None or conn.secret is None:
            return False
        self._departures.drop_local(connection_id)
        until = time.time() + self.window
        try:
            self._backend.suspend_connection(connection_id, self._server_id, until,
                                             self.window + MARGIN)
        except BackendError as exc:  # still ours in the shared state: removed at the end
            logger.warning("could not mark %s suspended: %s", connection_id, exc)
        with self._lock:
            self._suspended[connection_id] = until
        return True

    def adopt(self, adopted: list[RemovedConnection]) -> None:
        """A dead server's recoverable connections, suspended by this server's cleanup."""
        with self._lock:
            for r in adopted:
                self._suspended[r.connection_id] = r.suspended_until

    def expire_loop(self) -> None:
        """Remove the suspended connections whose window ended (their rooms are told)."""
        tick = max(0.05, min(1.0, self.window / 10))
        while not self._stop.wait(tick):
            try:
                self.expire(time.time())
            except Exception:
                logger.exception("removing suspended connections failed")

    def expire(self, now: float) -> None:
        with self._lock:
            due = [cid for cid, until in self._suspended.items() if until <= now]
        for cid in due:
            try:
                removed = self._backend.remove_suspended(cid, self._server_id)
            except BackendError as exc:
                logger.warning("suspended connection %s not removed yet: %s", cid, exc)
                continue
            with self._lock:
                self._suspended.pop(cid, None)
            if removed is not None:
                self._departures.publish_quietly(self._departures.notices([removed], "timeout"))

    # ----------------------------------------------------------------- resuming
    def resume(self, ws: WebSocketLike, user_id: str, token: str,
               rooms_seen: Mapping[str, Position], directs_seen: int) -> tuple[str, bool]:
        """Take a connection back for ``ws``: ``(connection id, recovered)``.
        `ResumeRefusedError` if it cannot be (register a new connection then)."""
        cid, _, secret = token.partition(".")
        if not (self.on and len(cid) == _ID_LENGTH and cid.isdigit() and secret):
            raise ResumeRefusedError("no such connection to resume" if self.on
                                     else "recovery is off (recovery_window is 0)")
        new_secret = secrets.token_urlsafe(16)
        found = self._backend.resume_connection(cid, secret, user_id, self._server_id,
                                                new_secret)
        if found is None:
            raise ResumeRefusedError("the resume token is unknown, used or not this user's")
        with self._lock:
            self._suspended.pop(cid, None)
        self._departures.drop_local(cid, *RESUMED_ELSEWHERE)  # a half-open old socket here
        if found.owner != self._server_id and not found.suspended:
            # its old socket may still be open there: its server lets it go (nothing removed)
            self._departures.publish_quietly([(f"server:{found.owner}", self._envelope(
                Disconnect((cid,), *RESUMED_ELSEWHERE)))])
        conn = self._local.add(cid, ws, user_id, policy=self._policy(), secret=new_secret,
                               hold=Hold())
        # what the client has: a repeat of it (live, or replayed) is never sent
        for room, known in rooms_seen.items():
            conn.marks[room] = (known.epoch, known.offset)
        conn.marks[""] = ("", directs_seen)
        first = [room for room in found.rooms if self._local.join(cid, room)]
        if first:
            self._listener.sync_rooms(first, wait=self._subscribe_timeout)
        # subscribed before reading what was missed: newer messages are held back meanwhile
        recovered, replay = self._missed(cid, found, rooms_seen, directs_seen)
        self._open(conn, hello(cid, token_of(cid, new_secret), recovered), replay)
        return cid, recovered

    def _missed(self, cid: str, found: Resumed, rooms_seen: Mapping[str, Position],
                directs_seen: int) -> tuple[bool, Iterator[Held]]:
        """Whether every gap can be filled, and the frames that fill them (read lazily, page
        by page)."""
        recovered = True
        parts: list[Iterator[Held]] = []
        for room in found.rooms:
            known = rooms_seen.get(room)
            if known is None or not self._history.keeps(room):
                recovered = False
                continue
            complete, pages = self._history.since(room, known)
            recovered = recovered and complete
            if pages is not None:  # None: another epoch, nothing to replay
                parts.append(self._room_frames(cid, room, pages))
        page = self._backend.read_mailbox(cid, directs_seen, PAGE)
        if page is not None:
            complete = page.last <= directs_seen or (
                bool(page.entries) and page.entries[0][0] == directs_seen + 1)
            recovered = recovered and complete and directs_seen <= page.last
            parts.append(self._direct_frames(cid, page.entries))
        return recovered, (frame for part in parts for frame in part)

    def _room_frames(self, cid: str, room: str,
                     pages: Iterator[list[HistoryEntry]]) -> Iterator[Held]:
        for entries in pages:
            for e in entries:
                if cid not in e.exclude:
                    yield room, (e.epoch, e.offset), room_frame(room, e.message,
                                                                Position(e.epoch, e.offset))

    def _direct_frames(self, cid: str, rows: list[tuple[int, bytes]]) -> Iterator[Held]:
        while rows:
            for number, data in rows:
                try:
                    body = decode_body(data, self._envelope.signer).body
                except EnvelopeError as exc:
                    logger.warning("skipped message %d of %s's mailbox: %s", number, cid, exc)
                    continue
                if isinstance(body, DirectMessage) and body.connection == cid:
                    yield "", ("", number), direct_frame(body.text, number)
            if len(rows) < PAGE:
                return
            page = self._backend.read_mailbox(cid, rows[-1][0], PAGE)
            rows = page.entries if page is not None else []

    def _open(self, conn: LocalConnection, first: str, replay: Iterable[Held] = ()) -> None:
        """Send ``first`` (the hello) and the replay, then release what was held back."""
        deliver = self._delivery
        try:
            deliver.send(conn, first)
            for held in replay:
                deliver.unique(conn, held)
        finally:
            hold = conn.hold
            if hold is not None:  # frames offered meanwhile join it until it closes
                hold.release(lambda held: deliver.unique(conn, held))
            conn.hold = None
