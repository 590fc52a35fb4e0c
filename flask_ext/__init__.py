"""flask_ext: the Flask binding of dcm_sync (WebSocket routes on the distributed manager).

The gevent-websocket handler and gunicorn worker that refuse before the handshake live in
``flask_ext.handler`` and ``flask_ext.gunicorn_worker`` (imported on demand: they need gevent).
"""

from __future__ import annotations

from .connection import WebSocketConnection
from .extension import DistributedWebSockets

__all__ = ["DistributedWebSockets", "WebSocketConnection"]
