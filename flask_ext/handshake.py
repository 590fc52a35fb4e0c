"""The WebSocket handshake on the threaded servers (Werkzeug's with ``threaded=True``, gunicorn's
``gthread``), which leave it to the app: wsproto's handshake, fed the request from the WSGI
environ, answers ``101 Switching Protocols`` on the connection's socket, which these servers
put in the environ. gevent-websocket's handler does its own (``environ["wsgi.websocket"]``).
"""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import Mapping
from typing import Any

from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import ProtocolError

from .deflate import Agreement, negotiate

__all__ = ["HandshakeError", "accept", "server_socket"]

logger = logging.getLogger(__name__)

#: the environ key of each server's socket, and the name the transport reports (``mode``)
SOCKET_KEYS = (("werkzeug.socket", "werkzeug"), ("gunicorn.socket", "gunicorn"))


class HandshakeError(ValueError):
    """The request is not a valid WebSocket upgrade: it is answered ``400`` (nothing was sent)."""


def server_socket(environ: Mapping[str, Any]) -> tuple[socket.socket, str]:
    """The connection's socket and the server's name; ``RuntimeError`` on a server that
    exposes neither (serve with gevent-websocket's handler, Werkzeug or gunicorn)."""
    for key, mode in SOCKET_KEYS:
        sock = environ.get(key)
        if sock is not None:
            return sock, mode
    raise RuntimeError("no WebSocket support on this server: use gevent.pywsgi with "
                       "flask_ext.handler.DCMWebSocketHandler, gunicorn, or Werkzeug's threaded server")


def _request_head(environ: Mapping[str, Any]) -> bytes:
    """The request's line and headers again, from the environ: what the handshake reads (the
    target does not matter to it)."""
    lines = ["GET / HTTP/1.1"]
    for key, value in environ.items():
        if key.startswith("HTTP_") and isinstance(value, str):
            lines.append(f"{key[5:].replace('_', '-')}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _valid_key(key: str) -> bool:
    """RFC 6455 4.2.1: the key is 16 bytes in base64 (wsproto takes any value)."""
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except ValueError:  # binascii.Error
        return False


def accept(environ: Mapping[str, Any], sock: socket.socket,
           compression: bool = False) -> Agreement | None:
    """Answer the upgrade in ``environ`` with ``101 Switching Protocols`` on ``sock`` (no
    subprotocol; permessage-deflate when ``compression`` is on and the client offers it: the
    agreement is returned, None for plain RFC 6455 frames); `HandshakeError`, with nothing
    sent, if it is not a valid one."""
    if not _valid_key(str(environ.get("HTTP_SEC_WEBSOCKET_KEY", ""))):
        raise HandshakeError("not a valid WebSocket upgrade: Sec-WebSocket-Key is not 16 bytes "
                             "in base64")
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        handshake.receive_data(_request_head(environ))
        for event in handshake.events():
            if isinstance(event, Request):
                agreed = negotiate(environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS")) if compression else None
                extra = [] if agreed is None else [(b"Sec-WebSocket-Extensions", agreed.header.encode())]
                sock.sendall(handshake.send(AcceptConnection(extra_headers=extra)))
                return agreed
    except (ProtocolError, UnicodeEncodeError) as exc:
        raise HandshakeError(f"not a valid WebSocket upgrade: {exc}") from exc
    raise HandshakeError("not a valid WebSocket upgrade")
