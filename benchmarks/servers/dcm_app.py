"""This project's side: Flask + flask_ext.DistributedWebSockets under gevent.pywsgi with the
project's DCMWebSocketHandler (REDIS_URL, DCM_KEY_PREFIX and PORT from the environment).

Bus messages are counted where redis-py parses them (``PubSub.handle_message``), per room channel.
"""

from __future__ import annotations

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import json
import os
from typing import Any

import redis.client
from flask import Flask, jsonify, request

from benchmarks.servers.common import BusCounter, serve
from dcm_sync.backends.redis_keys import KeyLayout
from flask_ext import DistributedWebSockets, WebSocketConnection
from flask_ext.handler import DCMWebSocketHandler

app = Flask(__name__)
app.config["DCM_RATE_LIMIT"] = 0  # load generators send far more than a person's 50 messages/s
# The load generator reads its sockets only during a phase, and the sides run in turn: between
# two runs of this side its clients sit unread for a minute, miss the keepalive's ping (every
# 25 s) and would be dropped for not answering it within 20 s, ending the side's later runs.
app.config["DCM_PING_INTERVAL"] = 0
# join and leave notices as configured by default; BENCH_ROOM_NOTICES=off measures without them
app.config["DCM_ROOM_NOTICES"] = os.environ.get("BENCH_ROOM_NOTICES", "connections")
sockets = DistributedWebSockets(app)
bus = BusCounter()

_LAYOUT = KeyLayout(os.environ.get("DCM_KEY_PREFIX", "dcm:"))
_ROOM_CHANNEL = (_LAYOUT.prefix + "room:").encode()  # P room:{rXX}<room>
_handle_message = redis.client.PubSub.handle_message


def _counting_handle_message(self: Any, response: Any, ignore_subscribe_messages: bool = False) -> Any:
    message = _handle_message(self, response, ignore_subscribe_messages)
    if message is not None and message["type"] == "message":
        channel = message["channel"]
        if channel.startswith(_ROOM_CHANNEL):
            bus.count(_LAYOUT.logical(channel.decode())[5:])
    return message


redis.client.PubSub.handle_message = _counting_handle_message


@sockets.route("/ws")
def bench(conn: WebSocketConnection) -> None:
    conn.send({"t": "hello", "id": conn.id})
    exclude = [conn.id]
    while (text := conn.receive()) is not None:
        cmd = json.loads(text)
        op = cmd["op"]
        if op == "fanout":
            sockets.broadcast_to_room(cmd["room"], cmd["data"], exclude=exclude)
        elif op == "direct":
            sockets.send_to_connection(cmd["to"], cmd["data"])
        elif op == "join":
            for room in cmd["rooms"]:
                conn.join(room)
            conn.send({"t": "joined", "n": len(cmd["rooms"])})


@app.get("/bench-stats")
def bench_stats() -> Any:
    mgr = sockets.manager  # made on first use: the first poll starts the manager
    if request.args.get("reset"):
        bus.reset()
    return jsonify(ready=mgr.is_ready(), pid=os.getpid(),
                   **bus.stats(lambda room: bool(mgr.local.members(room))))


if __name__ == "__main__":
    serve(app, DCMWebSocketHandler, on_stop=sockets.shutdown)
