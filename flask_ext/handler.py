"""A gevent-websocket handler that asks the app before the handshake.

gevent-websocket's stock ``WebSocketHandler`` answers ``101 Switching Protocols`` before the
WSGI app runs, so an app can only refuse by closing the socket. ``DCMWebSocketHandler`` first
calls the app with ``environ["dcm.precheck"] = True``; a ``DistributedWebSockets`` route then
checks origin and token without registering anything and answers ``204`` with
``X-DCM-Precheck: accepted`` (or ``pass`` for other routes). Any other answer (401, 403, 404,
...) is sent as a plain HTTP response and no handshake happens.

    from gevent import pywsgi
    from flask_ext.handler import DCMWebSocketHandler
    pywsgi.WSGIServer(("127.0.0.1", 8000), app, handler_class=DCMWebSocketHandler).serve_forever()

When the app has ``DCM_COMPRESSION`` on and the client offers permessage-deflate, the route's
precheck leaves its agreement (`flask_ext.deflate`) in the environ, and the ``101`` carries it.

Its access and error log lines never show a token: the value of any ``token`` (or
``access_token``, ...) or ``resume`` query parameter is replaced by ``[redacted]``, whatever
the answer.

It also gives each request ``DCM_HANDSHAKE_TIMEOUT`` seconds (the app's config; default 10; 0 for
none) to send its request line and headers, then drops the connection: a client that opens TCP
and never finishes its request (slowloris) holds a greenlet and a descriptor only that long.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import gevent
from geventwebsocket.handler import WebSocketHandler

from dcm_sync import ConfigError

from .deflate import ENVIRON_KEY
from .extension import PRECHECK_HEADER, PRECHECK_KEY
from .gate import redact_tokens
from .limits import DEFAULTS, handshake_timeout

__all__ = ["DCMWebSocketHandler"]

logger = logging.getLogger(__name__)

#: pywsgi reads each connection through an 8 KiB buffer, kept for as long as the connection
#: lasts (a kept-alive one's between requests). 1 KiB reads request lines and frames just as well
#: (a read bigger than the buffer bypasses it). A WebSocket's reader is closed, which frees its
#: buffer, once the gevent transport has taken what it held.
READ_BUFFER_BYTES = 1024


class _RequestTimeout(TimeoutError):
    """A request line and headers not received within ``DCM_HANDSHAKE_TIMEOUT``."""


class DCMWebSocketHandler(WebSocketHandler):  # type: ignore[misc]
    """gevent-websocket's handler, asking the app before the handshake (401/403 as HTTP
    answers), with ``DCM_HANDSHAKE_TIMEOUT`` and access logs without tokens (the module
    docstring tells how):

        pywsgi.WSGIServer(("127.0.0.1", 8000), app, handler_class=DCMWebSocketHandler)
    """

    rfile: Any  # set by pywsgi's WSGIHandler
    server: Any

    #: seconds to read a request's line and headers when the app has no ``DCM_HANDSHAKE_TIMEOUT``
    #: (e.g. a middleware wraps the Flask app); None: no limit
    handshake_timeout: float | None = DEFAULTS["DCM_HANDSHAKE_TIMEOUT"]

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        super().__init__(sock, address, server, rfile)
        if rfile is None:
            default = self.rfile
            self.rfile = sock.makefile("rb", READ_BUFFER_BYTES)
            default.close()  # nothing was read through it yet
        self._request_timer: Any = None

    def handle(self) -> None:
        try:
            super().handle()
        finally:
            self._stop_request_timer()

    def read_requestline(self) -> str:
        # the clock starts when the handler waits for a request (a new connection, or the
        # next request on a kept-alive one) and stops once its headers are read
        self._stop_request_timer()
        seconds = self._handshake_timeout()
        if seconds is not None:
            self._request_timer = gevent.Timeout(
                seconds, _RequestTimeout(f"request not received within {seconds}s"))
            self._request_timer.start()
        return super().read_requestline()  # type: ignore[no-any-return]

    def read_request(self, raw_requestline: str) -> Any:
        try:
            return super().read_request(raw_requestline)
        finally:
            self._stop_request_timer()

    def format_request(self) -> str:
        """The access log line (pywsgi's, and gevent-websocket's for refused upgrades), with
        the value of any ``token`` query parameter replaced by ``[redacted]``."""
        return redact_tokens(super().format_request())

    def log_error(self, msg: str, *args: Any) -> None:
        """pywsgi's error log (a malformed request quotes its request line), redacted too."""
        try:
            message = msg % args if args else msg
        except (TypeError, ValueError):
            message = " ".join([msg, *map(str, args)])
        super().log_error(redact_tokens(message))

    def _handle_client_error(self, ex: BaseException) -> Any:
        if isinstance(ex, _RequestTimeout):  # pywsgi would print a traceback and answer 400
            logger.debug("dropping %s: %s", self.client_address, ex)
            return None  # close the connection
        return super()._handle_client_error(ex)

    def _stop_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.close()
            self._request_timer = None

    def _handshake_timeout(self) -> float | None:
        config = getattr(getattr(self.server, "application", None), "config", None)
        if isinstance(config, Mapping) and "DCM_HANDSHAKE_TIMEOUT" in config:
            try:
                return handshake_timeout(config)
            except ConfigError:
                return self.handshake_timeout  # checked at init_app, so changed since
        return self.handshake_timeout

    def run_application(self) -> Any:
        env = self.environ
        if (env.get("REQUEST_METHOD") == "GET"
                and env.get("HTTP_UPGRADE", "").lower() == "websocket"):
            answer = self._precheck(env)
            if answer is not None:
                status, headers, body = answer
                self.start_response(status, headers)
                self.result = body
                self.process_result()
                return None
        return super().run_application()

    def run_websocket(self) -> None:
        # The 101 is sent and the view is about to hold the socket, for as long as the client
        # stays: let go of the request's parsed headers (their values are in the environ) and
        # of the response's, which pywsgi reads only for a next request on the connection, and
        # an upgraded one has none. Both return to pywsgi's defaults.
        self.__dict__.pop("headers", None)
        self.__dict__.pop("response_headers", None)
        super().run_websocket()

    def _precheck(self, env: dict[str, Any]) -> tuple[str, list[tuple[str, str]], list[bytes]] | None:
        """None to go on with the handshake, else the HTTP refusal to send."""
        seen: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen["status"], seen["headers"] = status, headers
            return lambda data: None

        env[PRECHECK_KEY] = True
        try:
            result = self.application(env, start_response)
            try:
                body = [chunk for chunk in result]
            finally:
                if hasattr(result, "close"):
                    result.close()
        finally:
            del env[PRECHECK_KEY]
        headers = seen.get("headers", [])
        if any(k.lower() == PRECHECK_HEADER.lower() for k, _ in headers):
            return None
        return seen.get("status", "500 Internal Server Error"), headers, body

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        """gevent-websocket's, with permessage-deflate in the ``101`` answer when the precheck
        agreed on it (the gevent transport reads the same agreement from this environ)."""
        agreed = self.environ.get(ENVIRON_KEY) if status.startswith("101") else None
        if agreed is not None:
            headers = [*headers, ("Sec-WebSocket-Extensions", agreed.header)]
        return super().start_response(status, headers, exc_info)
