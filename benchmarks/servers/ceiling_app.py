"""The ceiling: no library, the fastest straightforward implementation of the same behaviour.

gevent-websocket + one redis-py PubSub per process read by one subscriber greenlet; room
membership in a local dict; a room's channel subscribed while the room has a local member.
A broadcast is published once and delivered here at once (the subscriber skips its own); a
direct message goes to its owner's channel (the owner is part of the connection id).
Bus frames: ``origin \\n excluded-id \\n text`` on ``room:<room>``, ``id \\n text`` on ``srv:<sid>``.
"""

from __future__ import annotations

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import itertools
import json
import os
import threading
import uuid
from typing import Any

import gevent
import redis
from geventwebsocket.handler import WebSocketHandler

from benchmarks.servers.common import BusCounter, serve

SID = uuid.uuid4().hex[:8]
SERVER_CHANNEL = f"srv:{SID}".encode()

bus = BusCounter()
# one connection for every publish (greenlets take turns): redis-py's pool checks each checkout
# with select.poll(), which gevent makes costly
r = redis.Redis.from_url(os.environ["REDIS_URL"], single_connection_client=True)
pubsub = r.pubsub()
sub_lock = threading.Lock()           # one writer at a time on the subscriber's connection
pending: dict[bytes, threading.Event] = {}
rooms: dict[str, set[Client]] = {}
clients: dict[str, Client] = {}
ids = itertools.count()


class Client:
    __slots__ = ("id", "ws", "lock")

    def __init__(self, ws: Any) -> None:
        self.id = f"{SID}.{next(ids)}"
        self.ws = ws
        self.lock = threading.Lock()

    def send(self, text: str) -> None:
        with self.lock:
            self.ws.send(text)


def deliver(room: str, text: str, exclude: str) -> None:
    for c in list(rooms.get(room, ())):
        if c.id != exclude:
            try:
                c.send(text)
            except Exception:  # noqa: S110 - a dead socket is removed by its own handler
                pass


def subscriber() -> None:
    for msg in pubsub.listen():
        kind, channel = msg["type"], msg["channel"]
        if kind == "message":
            if channel == SERVER_CHANNEL:
                target, text = msg["data"].split(b"\n", 1)
                c = clients.get(target.decode())
                if c is not None:
                    c.send(text.decode())
            else:
                room = channel[5:].decode()
                bus.count(room)
                origin, exclude, text = msg["data"].split(b"\n", 2)
                if origin.decode() != SID:
                    deliver(room, text.decode(), exclude.decode())
        elif kind == "subscribe":
            ev = pending.pop(channel, None)
            if ev is not None:
                ev.set()


def join(c: Client, room: str) -> None:
    members = rooms.get(room)
    if members is None:
        members = rooms[room] = set()
        channel = f"room:{room}".encode()
        ev = pending[channel] = threading.Event()
        with sub_lock:
            pubsub.subscribe(channel)
        members.add(c)
        ev.wait(5)
    else:
        members.add(c)


def leave_all(c: Client) -> None:
    clients.pop(c.id, None)
    for room, members in list(rooms.items()):
        members.discard(c)
        if not members:
            del rooms[room]
            with sub_lock:
                pubsub.unsubscribe(f"room:{room}")


def handle(ws: Any) -> None:
    c = Client(ws)
    clients[c.id] = c
    try:
        c.send(json.dumps({"t": "hello", "id": c.id}, separators=(",", ":")))
        while (text := ws.receive()) is not None:
            cmd = json.loads(text)
            op = cmd["op"]
            if op == "fanout":
                room, data = cmd["room"], cmd["data"]
                r.publish(f"room:{room}", f"{SID}\n{c.id}\n{data}")
                deliver(room, data, c.id)
            elif op == "direct":
                target, data = cmd["to"], cmd["data"]
                local = clients.get(target)
                if local is not None:
                    local.send(data)
                else:
                    r.publish(f"srv:{target.split('.', 1)[0]}", f"{target}\n{data}")
            elif op == "join":
                for room in cmd["rooms"]:
                    join(c, room)
                c.send(json.dumps({"t": "joined", "n": len(cmd["rooms"])}, separators=(",", ":")))
    finally:
        leave_all(c)


def application(environ: dict[str, Any], start_response: Any) -> Any:
    if environ["PATH_INFO"] == "/bench-stats":
        if "reset=1" in environ.get("QUERY_STRING", ""):
            bus.reset()
        body = json.dumps({"ready": listener is not None and not listener.dead, "pid": os.getpid(),
                           **bus.stats(lambda room: bool(rooms.get(room)))}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    ws = environ.get("wsgi.websocket")
    if ws is None:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"WebSocket only\n"]
    handle(ws)
    return []


listener: gevent.Greenlet | None = None

if __name__ == "__main__":
    pubsub.subscribe(SERVER_CHANNEL)
    listener = gevent.spawn(subscriber)
    serve(application, WebSocketHandler)
