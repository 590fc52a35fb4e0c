"""A WebSocket chat server on gevent + dcm_sync, without Flask.

Run several against one Redis (without ``REDIS_URL``: the in-process ``memory://`` backend),
from a checkout after ``pip install -e .`` (or with ``PYTHONPATH=.``)::

    REDIS_URL=redis://127.0.0.1:6379/0 PORT=8001 python examples/gevent_chat_server.py
    REDIS_URL=redis://127.0.0.1:6379/0 PORT=8002 python examples/gevent_chat_server.py

It listens on 127.0.0.1:$PORT (default 8000); other settings come from ``Config.from_env()``
(``DCM_HEARTBEAT_INTERVAL``, ``DCM_KEY_PREFIX``, ...). ``ws://127.0.0.1:PORT/ws?user=NAME``
first sends ``{"type": "welcome", "connectionId", "serverId"}``, then takes JSON commands::

    {"op": "join" | "leave", "room": R}      -> {"type": "joined" | "left", "room": R}
    {"op": "say", "room": R, "text": T, ...} -> the room, sender included, gets
                                                {"type": "message", "room", "from", "text", ...}
    {"op": "direct", "to": CID, "text": T}   -> {"type": "direct-result", "sent": bool}
    anything else                            -> {"type": "error", "error": ...}

``GET /stats`` returns the cluster's figures as JSON. SIGTERM or SIGINT removes every
connection (their rooms are told, reason ``shutdown``), stops the server and exits 0.
"""
# ruff: noqa: E402  (monkey-patching must come before every other import)
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import dataclasses
import json
import logging
import os
import signal
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.handler import WebSocketHandler

from dcm_sync import (
    Config,
    DCMError,
    DistributedConnectionManager,
    UnknownConnectionError,
    create_distributed_connection_manager,
)

logger = logging.getLogger("gevent_chat_server")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
Reply = dict[str, Any]


def user_of(environ: Environ) -> str:
    return parse_qs(str(environ.get("QUERY_STRING", ""))).get("user", [""])[0]


class ChatHandler(WebSocketHandler):  # type: ignore[misc]
    """Leaves ``/ws`` without ``?user=`` un-upgraded, so that the app can answer 400
    (``WebSocketHandler`` sends ``101`` before the app runs)."""

    def upgrade_websocket(self) -> Any:
        if self.environ.get("PATH_INFO") == "/ws" and not user_of(self.environ):
            return None
        return super().upgrade_websocket()


def handle_command(mgr: DistributedConnectionManager, cid: str, user: str,
                   frame: str | bytes) -> Reply | None:
    """Carry out one client command; return the reply to the sender, if any."""
    try:
        mgr.touch(cid)
        cmd = json.loads(frame)
        if not isinstance(cmd, dict):
            raise ValueError("a command is a JSON object")
        op = cmd.get("op")
        if op in ("join", "leave"):
            (mgr.join_room if op == "join" else mgr.leave_room)(cid, cmd["room"])
            return {"type": "joined" if op == "join" else "left", "room": cmd["room"]}
        if op == "say":
            message = {k: v for k, v in cmd.items() if k != "op"}  # seq, ts, ... pass through
            message.update({"type": "message", "room": cmd["room"], "from": user, "text": cmd.get("text")})
            mgr.broadcast_to_room(cmd["room"], message)
            return None
        if op == "direct":
            sent = mgr.send_to_connection(cmd["to"], {"type": "direct", "from": user, "connectionId": cid,
                                                      "text": cmd.get("text")})
            return {"type": "direct-result", "sent": sent}
        raise ValueError(f"unknown op {op!r}")
    except (DCMError, ValueError, TypeError) as exc:  # first: UnknownConnectionError is a KeyError
        return {"type": "error", "error": str(exc)}
    except KeyError as exc:
        return {"type": "error", "error": f"missing field {exc}"}


def serve_socket(mgr: DistributedConnectionManager, ws: Any, user: str) -> None:
    try:
        cid = mgr.register_connection(ws, user)
    except (DCMError, ValueError, TypeError) as exc:
        ws.send(json.dumps({"type": "error", "error": str(exc)}))
        return
    try:
        mgr.send_to_connection(cid, {"type": "welcome", "connectionId": cid, "serverId": mgr.server_id})
        while True:
            try:
                frame = ws.receive()
            except WebSocketError:
                break
            if frame is None:  # closed by the peer
                break
            reply = handle_command(mgr, cid, user, frame)
            if reply is not None:
                mgr.send_to_connection(cid, reply)
    except DCMError as exc:  # shut down meanwhile, or the backend failed
        logger.info("connection %s ends: %s", cid, exc)
    finally:
        try:
            if mgr.is_ready():  # else shutdown() has removed every connection
                mgr.remove_connection(cid)
        except UnknownConnectionError:
            logger.debug("connection %s was already removed", cid)
        except DCMError as exc:
            logger.warning("could not remove connection %s: %s", cid, exc)


def make_app(mgr: DistributedConnectionManager) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    def respond(start_response: StartResponse, status: str, body: Reply) -> list[bytes]:
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/stats":
            try:
                stats = dataclasses.asdict(mgr.get_distributed_stats())
            except DCMError as exc:
                return respond(start_response, "503 Service Unavailable", {"error": str(exc)})
            stats.update(driver=mgr._driver.name, server_id=mgr.server_id)
            return respond(start_response, "200 OK", stats)
        if path == "/ws":
            ws, user = environ.get("wsgi.websocket"), user_of(environ)
            if ws is None or not user:
                return respond(start_response, "400 Bad Request",
                               {"error": "a WebSocket upgrade to /ws?user=NAME is required"})
            serve_socket(mgr, ws, user)
            return []
        return respond(start_response, "404 Not Found", {"error": f"no route {path!r}"})

    return app


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    port = int(os.environ.get("PORT", "8000"))
    mgr = create_distributed_connection_manager(None, Config.from_env(server_port=port))
    server = WSGIServer(("127.0.0.1", port), make_app(mgr), handler_class=ChatHandler,
                        spawn=Pool(), log=None)

    def stop(signum: int) -> None:
        logger.info("signal %d: shutting down %s", signum, mgr.server_id)
        mgr.shutdown()
        server.stop(timeout=2)

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop, signum)
    logger.info("serving on 127.0.0.1:%d as %s (%s)", port, mgr.server_id, mgr._driver.name)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
