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
"""

from __future__ import annotations

from typing import Any

from geventwebsocket.handler import WebSocketHandler

from .extension import PRECHECK_HEADER, PRECHECK_KEY

__all__ = ["DCMWebSocketHandler"]

#: pywsgi reads each connection through an 8 KiB buffer, which a WebSocket keeps for its whole
#: life: most of what an idle socket costs. 1 KiB reads request lines and frames just as well
#: (a read bigger than the buffer bypasses it).
READ_BUFFER_BYTES = 1024


class DCMWebSocketHandler(WebSocketHandler):  # type: ignore[misc]
    rfile: Any  # set by pywsgi's WSGIHandler

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        super().__init__(sock, address, server, rfile)
        if rfile is None:
            default = self.rfile
            self.rfile = sock.makefile("rb", READ_BUFFER_BYTES)
            default.close()  # nothing was read through it yet

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
