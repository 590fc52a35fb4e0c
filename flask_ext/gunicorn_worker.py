"""A gunicorn worker: gevent-websocket's worker with `DCMWebSocketHandler`,
so refused tokens get HTTP 401 and foreign origins 403 before any handshake.

    gunicorn -k flask_ext.gunicorn_worker.DCMGeventWebSocketWorker -w 4 --no-control-socket app:app

(``--no-control-socket``: gunicorn 27 and newer; older releases have no control socket.)

On SIGTERM it also shuts the app's ``DistributedWebSockets`` down at once: WebSockets never end
by themselves, and a worker still holding them when ``graceful_timeout`` runs out is killed by
the master before any exit hook runs. Shutting down closes them (their rooms are told, reason
``shutdown``) and deregisters the worker, so it drains and exits in time.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker

from .handler import DCMWebSocketHandler

__all__ = ["DCMGeventWebSocketWorker"]

logger = logging.getLogger(__name__)


class DCMGeventWebSocketWorker(GeventWebSocketWorker):  # type: ignore[misc]
    """gevent-websocket's gunicorn worker with [`DCMWebSocketHandler`][flask_ext.handler.DCMWebSocketHandler],
    which shuts the app's ``DistributedWebSockets`` down on SIGTERM:

        gunicorn -k flask_ext.gunicorn_worker.DCMGeventWebSocketWorker -w 4 app:app
    """

    wsgi_handler = DCMWebSocketHandler

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)  # stop accepting
        extensions = getattr(getattr(self, "wsgi", None), "extensions", None) or {}
        ext = extensions.get("dcm")
        if ext is not None:
            gevent.spawn(self._shutdown_extension, ext)  # blocking calls: not in the handler

    @staticmethod
    def _shutdown_extension(ext: Any) -> None:
        try:
            ext.shutdown()
        except Exception:
            logger.exception("shutting down the distributed manager failed")
