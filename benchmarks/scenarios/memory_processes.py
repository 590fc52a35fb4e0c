"""The processes of the ``memory`` scenario: the servers whose RSS per idle WebSocket it measures
(one gevent process each), and the client processes that hold the idle sockets.

    python benchmarks/scenarios/memory_processes.py dcm  PORT REDIS_URL KEY_PREFIX
    python benchmarks/scenarios/memory_processes.py peer PORT REDIS_URL CHANNEL
    python benchmarks/scenarios/memory_processes.py clients dcm|peer PORT COUNT

``dcm``: Flask + this project's extension (``flask_ext``) on ``gevent.pywsgi`` with
``DCMWebSocketHandler``; ``/ws`` registers each socket, sends it ``{"type": "welcome"}`` and
waits for messages, like a chat view.
``peer``: Flask-SocketIO with ``RedisManager`` (``message_queue=``) on ``gevent.pywsgi`` with
gevent-websocket's ``WebSocketHandler``; clients speak Engine.IO v4 on ``/socket.io/``.

Both answer ``GET /ready`` (dcm: once its manager has started) and ``GET /count`` (sockets held),
and run until killed. A client process opens COUNT sockets one after the other, each once the
server has answered the previous one (dcm: the welcome; peer: the Socket.IO connect answer),
prints ``connected COUNT``, answers Engine.IO pings, and exits when its stdin closes. Every
process raises its file descriptor limit to the hard limit.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[1:2] in (["dcm"], ["peer"]):
    from gevent import monkey

    monkey.patch_all()

import os
import resource
import selectors
import time
from pathlib import Path
from typing import Any

CLIENT_LIFETIME = 900.0  # seconds a client process waits at most before it exits on its own


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def dcm_app(redis_url: str, prefix: str) -> Any:
    from flask import Flask

    from flask_ext import DistributedWebSockets, WebSocketConnection

    app = Flask(__name__)
    app.config.update(DCM_REDIS_URL=redis_url, DCM_KEY_PREFIX=prefix, DCM_MAX_CONNECTIONS=100_000,
                      DCM_ALLOWED_ORIGINS="*")
    sockets = DistributedWebSockets(app)

    @sockets.route("/ws")
    def idle(conn: WebSocketConnection) -> None:
        conn.send({"type": "welcome"})  # registered: clients wait for this before the next socket
        while conn.receive() is not None:
            pass

    @app.get("/ready")
    def ready() -> tuple[str, int]:
        mgr = sockets.manager  # made on first use: here, before any socket is measured
        return ("ok", 200) if mgr.is_ready() else ("starting", 503)

    @app.get("/count")
    def count() -> dict[str, int]:
        return {"connections": len(sockets.manager.local)}

    return app


def peer_app(redis_url: str, channel: str) -> Any:
    from flask import Flask
    from flask_socketio import SocketIO

    app = Flask(__name__)
    app.config["SECRET_KEY"] = "benchmark"
    socketio = SocketIO(app, message_queue=redis_url, channel=channel, async_mode="gevent",
                        cors_allowed_origins="*")
    connected = {"count": 0}

    @socketio.on("connect")
    def on_connect() -> None:
        connected["count"] += 1

    @socketio.on("disconnect")
    def on_disconnect(*args: Any) -> None:
        connected["count"] -= 1

    @app.get("/ready")
    def ready() -> str:
        return "ok"

    @app.get("/count")
    def count() -> dict[str, int]:
        return {"connections": connected["count"]}

    return app


def main(argv: list[str]) -> int:
    if argv[0] == "clients":
        return clients_main(argv[1], int(argv[2]), int(argv[3]))
    from gevent import pywsgi

    kind, port, redis_url, prefix = argv[0], int(argv[1]), argv[2], argv[3]
    raise_nofile()
    if kind == "dcm":
        from flask_ext.handler import DCMWebSocketHandler

        app, handler = dcm_app(redis_url, prefix), DCMWebSocketHandler
    elif kind == "peer":
        from geventwebsocket.handler import WebSocketHandler

        app, handler = peer_app(redis_url, prefix), WebSocketHandler
    else:
        raise SystemExit(f"unknown server kind {kind!r}")
    server = pywsgi.WSGIServer(("127.0.0.1", port), app, handler_class=handler, log=None,
                               backlog=2048)
    print(f"serving {kind} on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


# ------------------------------------------------------------------------------- clients
def connect(side: str, port: int) -> Any:
    import websocket

    if side == "dcm":
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=30,
                                         suppress_origin=True, skip_utf8_validation=True)
        welcome = ws.recv()  # sent once the socket is registered: one registration at a time
        if "welcome" not in welcome:
            raise RuntimeError(f"expected the welcome message, got {welcome[:40]!r}")
        return ws
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", timeout=30,
        suppress_origin=True, skip_utf8_validation=True)
    opened = ws.recv()
    if not opened.startswith("0{"):
        raise RuntimeError(f"expected an Engine.IO open packet, got {opened[:40]!r}")
    ws.send("40")
    for _ in range(10):  # a ping may come first
        answer = ws.recv()
        if answer == "2":
            ws.send("3")
            continue
        if answer.startswith("40"):
            return ws
        raise RuntimeError(f"expected a Socket.IO connect answer, got {answer[:40]!r}")
    raise RuntimeError("no Socket.IO connect answer")


def clients_main(side: str, port: int, count: int) -> int:
    """Hold ``count`` idle sockets; answer Engine.IO pings (also while connecting the others);
    exit when stdin closes."""
    raise_nofile()
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
    for _ in range(count):
        ws = connect(side, port)
        sel.register(ws.sock, selectors.EVENT_READ, ws)
        if not _answer(sel, 0):
            return 0
    print(f"connected {count}", flush=True)
    deadline = time.monotonic() + CLIENT_LIFETIME
    while time.monotonic() < deadline:
        if not _answer(sel, 1.0):
            return 0
    return 0


def _answer(sel: selectors.BaseSelector, timeout: float) -> bool:
    """Answer what arrived (pings); False once stdin has closed."""
    for key, _ in sel.select(timeout=timeout):
        if key.data is None:
            if not os.read(sys.stdin.fileno(), 4096):
                return False
            continue
        ws = key.data
        try:
            message = ws.recv()
        except Exception:  # the server went away
            message = None
        if not message:
            sel.unregister(key.fileobj)
        elif message == "2":
            ws.send("3")
    return True


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
    raise SystemExit(main(sys.argv[1:]))
