"""A broadcast stream for the slow-consumer test: ``python -m tests.flask.stream_app PORT``.

``/ws`` (token = user id): ``{"op": "join"}`` joins room ``hall`` (answer ``joined``);
``{"op": "blast", "n": N, "size": S}`` broadcasts N text messages ``"%06d" % i + "x" * S``
to the room, as fast as the server can.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from flask import Flask  # noqa: E402

from flask_ext import DistributedWebSockets, WebSocketConnection  # noqa: E402

app = Flask(__name__)
sockets = DistributedWebSockets(app)
app.register_blueprint(sockets.health_blueprint, url_prefix="/dcm")


@sockets.authenticate
def authenticate(token: str | None) -> str | None:
    return token


@sockets.route("/ws")
def stream(conn: WebSocketConnection) -> None:
    while (text := conn.receive()) is not None:
        cmd = json.loads(text)
        if cmd["op"] == "join":
            conn.join("hall")
            conn.send("joined")
        elif cmd["op"] == "blast":
            for i in range(int(cmd["n"])):
                sockets.broadcast_to_room("hall", f"{i:06d}" + "x" * int(cmd["size"]))


def main() -> None:
    from gevent import pywsgi

    from flask_ext.handler import DCMWebSocketHandler

    port = int(sys.argv[1])
    os.environ.setdefault("PORT", str(port))
    server = pywsgi.WSGIServer(("127.0.0.1", port), app, handler_class=DCMWebSocketHandler)
    server.serve_forever()


if __name__ == "__main__":
    main()
