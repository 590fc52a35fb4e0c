"""The chat example: a Flask app with a browser page, rooms, messages, and who is in the room.

Run on the embedded memory:// backend (one process):

    python examples/chat/app.py                # then open http://127.0.0.1:5000/

Run a cluster: start Redis, then two or three copies on different ports with the same REDIS_URL:

    REDIS_URL=redis://127.0.0.1:6379/0 PORT=5001 python examples/chat/app.py
    REDIS_URL=redis://127.0.0.1:6379/0 PORT=5002 python examples/chat/app.py

Under gunicorn (several workers): ``gunicorn -c examples/gunicorn.conf.py examples.chat.app:app``.
The page's name field is the token: ``authenticate`` below accepts any short name (a demo;
a real app checks a session or a signed token there).
"""

from __future__ import annotations

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from flask import Flask, send_from_directory

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from dcm_sync import ConnectionLimitError  # noqa: E402
from dcm_sync.messages import validate_id  # noqa: E402
from flask_ext import DistributedWebSockets, WebSocketConnection  # noqa: E402

NAME = re.compile(r"[\w .-]{1,32}")
HERE = Path(__file__).resolve().parent

app = Flask(__name__)
app.config["DCM_ALLOWED_ORIGINS"] = os.environ.get("DCM_ALLOWED_ORIGINS")  # None: same origin only
# The page lists the people in the room: a user's first tab in a room is a "user-joined", their
# last one out a "user-left" or "user-disconnected" (every server of the app must agree)
app.config["DCM_ROOM_NOTICES"] = os.environ.get("DCM_ROOM_NOTICES", "users")
# Every room keeps its last 100 messages, and a page whose socket drops (a deploy, a network
# loss, its server killed) has two minutes to come back, to any server, and get what it missed
app.config["DCM_HISTORY_ROOMS"] = os.environ.get("DCM_HISTORY_ROOMS", "*")
app.config["DCM_RECOVERY_WINDOW"] = os.environ.get("DCM_RECOVERY_WINDOW", "120")
sockets = DistributedWebSockets(app)
app.register_blueprint(sockets.health_blueprint, url_prefix="/dcm")
app.register_blueprint(sockets.client_blueprint, url_prefix="/dcm")  # /dcm/client.js


@sockets.authenticate
def authenticate(token: str | None) -> str | None:
    return token if token and NAME.fullmatch(token) else None


@app.get("/")
def index() -> Any:
    return send_from_directory(HERE / "static", "index.html")


@app.post("/notify/<conn_id>")
def notify(conn_id: str) -> dict[str, bool]:
    """An ordinary HTTP view reaching a socket on any server."""
    return {"sent": sockets.send_to_connection(conn_id, {"type": "notification", "text": "ping"})}


# The page's route: the recovery protocol (the browser client resumes across drops). /ws is the
# same chat for clients that do not speak that protocol (wscat, scripts): plain JSON messages.
@sockets.route("/ws/resumable", recovery=True)
@sockets.route("/ws", endpoint="chat_plain")
def chat(conn: WebSocketConnection) -> None:
    # resumed: the same connection, still in its rooms (the page does not join again)
    conn.send({"type": "welcome", "connectionId": conn.id, "user": conn.user_id,
               "serverId": sockets.manager.server_id, "port": os.environ.get("PORT", "5000"),
               "resumed": conn.resumed})
    while (text := conn.receive()) is not None:
        try:
            data = json.loads(text)
            op, room = data["op"], data["room"]
        except (ValueError, KeyError, TypeError):
            conn.send({"type": "error", "error": "expected {\"op\": ..., \"room\": ...}"})
            continue
        try:
            validate_id(room, "room")  # what the manager would refuse, refused here with a reply
        except (TypeError, ValueError) as exc:
            conn.send({"type": "error", "error": str(exc)})
            continue
        try:
            act(conn, op, room, data)
        except (TypeError, ValueError, ConnectionLimitError) as exc:  # the client's input
            conn.send({"type": "error", "error": str(exc)})


def act(conn: WebSocketConnection, op: object, room: str, data: dict[str, Any]) -> None:
    """One client request. The library's ``TypeError``/``ValueError`` (text that is not
    valid Unicode, a message too big) and ``ConnectionLimitError`` (too many rooms) go back to
    the client as an error."""
    if op == "join":
        conn.join(room)  # the others hear "user-joined" (the user's first tab in the room)
        sockets.broadcast_to_room(room, {"type": "joined", "room": room, "user": conn.user_id})
        # who is in the room, on every server: the page keeps it up to date from the notices
        conn.send({"type": "people", "room": room, "users": sorted(sockets.get_room_users(room))})
    elif op == "leave":
        conn.leave(room)
    elif op == "say":
        sockets.broadcast_to_room(room, {"type": "message", "room": room, "from": conn.user_id,
                                         "text": str(data.get("text", ""))[:2000]})
    else:
        conn.send({"type": "error", "error": f"unknown op {op!r}"})


def main(handler_class: type | None = None) -> None:
    """Serve on $HOST:$PORT with gevent.pywsgi and the project's pre-handshake handler
    (``handler_class`` overrides it, e.g. gevent-websocket's stock handler)."""
    import signal

    import gevent
    from gevent import pywsgi

    from flask_ext.handler import DCMWebSocketHandler

    port = int(os.environ.get("PORT", "5000"))
    host = os.environ.get("HOST", "127.0.0.1")
    server = pywsgi.WSGIServer((host, port), app, handler_class=handler_class or DCMWebSocketHandler)

    def stop() -> None:
        sockets.shutdown()
        server.stop(timeout=1)

    gevent.signal_handler(signal.SIGTERM, stop)
    gevent.signal_handler(signal.SIGINT, stop)
    print(f"chat on http://{host}:{port}/ (backend: {os.environ.get('REDIS_URL') or 'memory://'})",
          flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
