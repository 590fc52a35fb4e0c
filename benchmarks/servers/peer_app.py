"""The peer: Flask-SocketIO with async_mode="gevent" and python-socketio's RedisManager on
REDIS_URL (what ``message_queue=REDIS_URL`` makes), under gevent.pywsgi with gevent-websocket's
WebSocketHandler, which is what ``socketio.run(app)`` does under gevent. Same protocol as the
other sides, as Socket.IO events: ``join``, ``fanout``, ``direct`` in; ``joined`` and ``m`` out.

The RedisManager is made here rather than by ``message_queue=`` for two settings: a redis-py
pool without redis-py 8's default cap of 100 connections (python-socketio handles each event in
its own greenlet and takes a pooled connection per publish; past 100 at once redis-py raises
"Too many connections", RedisManager then reconnects and its listener drops messages for a
second), and a JSON module that counts the bus messages it decodes (see ``_CountingJson``).
"""

from __future__ import annotations

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import json
import os
from typing import Any

from flask import Flask, jsonify, request
from flask_socketio import SocketIO, emit, join_room
from geventwebsocket.handler import WebSocketHandler
from socketio import RedisManager

from benchmarks.servers.common import BusCounter, serve

app = Flask(__name__)
bus = BusCounter()


class _CountingJson:
    """The JSON module RedisManager uses for the bus, counting the payload emits (event "m")
    it decodes, per room."""

    dumps = staticmethod(json.dumps)

    @staticmethod
    def loads(s: Any, *args: Any, **kwargs: Any) -> Any:
        data = json.loads(s, *args, **kwargs)
        if isinstance(data, dict) and data.get("event") == "m" and data.get("room") is not None:
            bus.count(data["room"])
        return data


queue = RedisManager(os.environ["REDIS_URL"], channel="flask-socketio",
                     redis_options={"max_connections": 10_000})
# Pings every 25 s (the default) would only add noise to runs a few seconds long; the load
# generator answers them anyway.
socketio = SocketIO(app, async_mode="gevent", client_manager=queue,
                    ping_interval=300, ping_timeout=60, cors_allowed_origins="*")
queue.json = _CountingJson  # after SocketIO(): the server sets its manager's JSON module


@socketio.on("join")
def on_join(data: dict[str, Any]) -> None:
    for room in data["rooms"]:
        join_room(room)
    emit("joined", len(data["rooms"]))


@socketio.on("fanout")
def on_fanout(data: dict[str, Any]) -> None:
    emit("m", data["data"], to=data["room"], include_self=False)


@socketio.on("direct")
def on_direct(data: dict[str, Any]) -> None:
    emit("m", data["data"], to=data["to"])


@app.get("/bench-stats")
def bench_stats() -> Any:
    if request.args.get("reset"):
        bus.reset()
    mgr = socketio.server.manager
    rooms = mgr.rooms.get("/", {})
    # the listener starts with the first client; "ready" means the app answers
    return jsonify(ready=True, pid=os.getpid(), **bus.stats(lambda room: bool(rooms.get(room))))


if __name__ == "__main__":
    serve(app, WebSocketHandler)
