"""A gunicorn worker: gevent-websocket's worker with :class:`~flask_ext.handler.DCMWebSocketHandler`,
so refused tokens get HTTP 401 and foreign origins 403 before any handshake.

    gunicorn -k flask_ext.gunicorn_worker.DCMGeventWebSocketWorker -w 4 --no-control-socket app:app
"""

from __future__ import annotations

from geventwebsocket.gunicorn.workers import GeventWebSocketWorker

from .handler import DCMWebSocketHandler

__all__ = ["DCMGeventWebSocketWorker"]


class DCMGeventWebSocketWorker(GeventWebSocketWorker):  # type: ignore[misc]
    wsgi_handler = DCMWebSocketHandler
