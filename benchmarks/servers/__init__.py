"""The benchmark's server apps, one per side, each run as its own process under gevent.

All three speak the same tiny protocol over one WebSocket (JSON text frames):

- the server first sends the client its connection id: ``{"t": "hello", "id": ID}`` (the
  peer's Socket.IO handshake carries it instead: ``40{"sid": ID}``);
- ``{"op": "join", "rooms": [ROOM, ...]}`` joins rooms, answered ``{"t": "joined", "n": COUNT}``
  once every join is in effect;
- ``{"op": "fanout", "room": ROOM, "data": TEXT}`` broadcasts TEXT to the room on every server,
  the sender excluded;
- ``{"op": "direct", "to": ID, "data": TEXT}`` sends TEXT to one connection on any server.

Clients receive TEXT as one text frame (the peer wraps it in its ``42["m", TEXT]`` event frame).
``GET /bench-stats`` answers ``{"ready": bool, "pid": int, "bus_room_msgs": int,
"bus_nonmember_msgs": int}``: bus messages this process received for rooms, and those for rooms
it held no member of when asked (``?reset=1`` zeroes the counters).
"""
