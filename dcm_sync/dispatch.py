"""Incoming bus messages: decoded (and verified, with signing on), checked, and handed to the
handler of their body's type. A new kind of envelope is one body class in
`dcm_sync.envelopes` and one entry in `Dispatcher.table`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from .delivery import Delivery
from .departures import Departures
from .envelopes import (
    Body,
    DirectMessage,
    DirectMessages,
    Disconnect,
    JoinRoom,
    LeaveRoom,
    Probe,
    Reply,
    Request,
    RoomMessage,
    ServerMessage,
    Touch,
    decode_body,
    envelope_prefix,
)
from .history import Position, split_position
from .listener import Listener
from .local import LocalConnectionManager
from .requests import Requests
from .signing import SIGNED_HEADER_LENGTH, EnvelopeError, EnvelopeSigner, SignatureError

__all__ = ["Dispatcher", "ServerMessageHandler"]

logger = logging.getLogger(__name__)

ServerMessageHandler = Callable[[str, Any], None]
Handler = Callable[[str, Any], None]  # (origin server id, body)


class Dispatcher:
    """Called by the listener with each ``(channel, data)`` read off the bus."""

    def __init__(self, server_id: str, signer: EnvelopeSigner | None, counters: Counter[str],
                 local: LocalConnectionManager, listener: Listener, delivery: Delivery,
                 departures: Departures,
                 room_change: Callable[[str, str, bool, float | None], None],
                 requests: Requests) -> None:
        self._server_id = server_id
        self._signer = signer
        self._counters = counters
        self._local = local
        self._listener = listener
        self._delivery = delivery
        self._departures = departures
        self._room_change = room_change  # (connection, room, join, wait): a local change
        self.server_handlers: list[ServerMessageHandler] = []
        self._own_rooms = envelope_prefix("room", server_id)
        self._body_at = SIGNED_HEADER_LENGTH if signer is not None else 0  # where the JSON starts
        #: body type -> handler
        self.table: dict[type[Body], Handler] = {
            RoomMessage: self._room,
            DirectMessage: self._direct,
            DirectMessages: self._directs,
            Disconnect: self._disconnect,
            ServerMessage: self._server,
            JoinRoom: self._join,
            LeaveRoom: self._leave,
            Touch: self._touch,
            Probe: self._probe,
            Request: requests.received,  # queued for a worker: handlers never run here
            Reply: requests.replied,
        }

    def __call__(self, channel: str, data: bytes) -> None:
        try:
            position, data = split_position(data)
            if position is None and data.startswith(self._own_rooms, self._body_at):
                # this server's own broadcast, delivered here when it was sent (with signing
                # on, a forgery that looks like one is dropped here too, unchecked: nothing is
                # delivered). A history room's (with a position) is delivered from the bus.
                return
            received = decode_body(data, self._signer)
            body = received.body
            if isinstance(body, RoomMessage) and channel != f"room:{body.room}":
                raise EnvelopeError(f"room envelope for {body.room!r} arrived on {channel!r}")
            if position is not None and not isinstance(body, (RoomMessage, DirectMessage)):
                raise EnvelopeError(f"a position in front of a {body.KIND} envelope")
        except EnvelopeError as exc:
            self._counters["envelopes_dropped"] += 1
            if isinstance(exc, SignatureError):
                self._counters["signature_failures"] += 1
            logger.warning("dropped a message on %s: %s", channel, exc)
            return
        if isinstance(body, RoomMessage):
            self._room(received.origin, body, position)
        elif isinstance(body, DirectMessage):
            self._direct(received.origin, body, position)
        else:
            self.table[type(body)](received.origin, body)

    # ------------------------------------------------------------- handlers
    def _room(self, origin: str, body: RoomMessage, position: Position | None = None) -> None:
        if origin != self._server_id or position is not None:  # see __call__
            self._delivery.to_room(body.room, body.text, body.exclude, position)

    def _direct(self, origin: str, body: DirectMessage, position: Position | None = None) -> None:
        conn = self._local.get(body.connection)
        if conn is not None:  # numbered (position) when its mailbox keeps it
            self._delivery.direct(conn, body.text, None if position is None else position.offset)

    def _directs(self, origin: str, body: DirectMessages) -> None:
        for connection_id in body.connections:
            conn = self._local.get(connection_id)
            if conn is not None:
                self._delivery.direct(conn, body.text)

    def _disconnect(self, origin: str, body: Disconnect) -> None:
        for connection_id in body.connections:
            self._departures.drop_local(connection_id, body.code, body.reason)

    def _server(self, origin: str, body: ServerMessage) -> None:
        for handler in list(self.server_handlers):
            try:
                handler(origin, body.payload)
            except Exception:
                logger.exception("server message handler %r failed", handler)

    def _join(self, origin: str, body: JoinRoom) -> None:
        self._room_change(body.connection, body.room, True, None)

    def _leave(self, origin: str, body: LeaveRoom) -> None:
        self._room_change(body.connection, body.room, False, None)

    def _touch(self, origin: str, body: Touch) -> None:
        self._local.touch(body.connection)

    def _probe(self, origin: str, body: Probe) -> None:
        if origin == self._server_id:
            self._listener.probe_returned(body.number)
