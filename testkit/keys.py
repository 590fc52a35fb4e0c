"""Reading the Redis key layout (:class:`dcm_sync.backends.redis_keys.KeyLayout`) in tests and
benchmarks: the room index is 256 bucket sets, and a room's key carries its bucket's hash tag."""

from __future__ import annotations

from typing import Any

from dcm_sync.backends.redis_keys import KeyLayout
from testkit.redis_server import RedisServer


def indexed_rooms(r: Any, prefix: str) -> set[str]:
    """Every room in the room index: the union of the 256 ``P index:rooms:{rXX}`` buckets."""
    pipe = r.pipeline(transaction=False)
    for key in KeyLayout(prefix).all_rooms_indexes():
        pipe.smembers(key)
    return {m.decode() if isinstance(m, bytes) else m for members in pipe.execute() for m in members}


def indexed_room_count(r: Any, prefix: str) -> int:
    """How many rooms the room index holds: the sum of the buckets' SCARD."""
    pipe = r.pipeline(transaction=False)
    for key in KeyLayout(prefix).all_rooms_indexes():
        pipe.scard(key)
    return sum(pipe.execute())


def room_of_key(key: str | bytes, prefix: str) -> str:
    """The room a ``P rooms:{rXX}<room>`` key (as SCAN returns it) is the set of."""
    name = key.decode() if isinstance(key, bytes) else key
    head = prefix + "rooms:{"
    if not name.startswith(head):
        raise ValueError(f"not a room key under {prefix!r}: {name!r}")
    return name[name.index("}", len(head)) + 1:]


def text(value: bytes | str) -> str:
    """A reply decoded, whether the client decodes replies or not."""
    return value.decode() if isinstance(value, bytes) else value


def redis_rooms_naming(redis_server: RedisServer, prefix: str, cids: set[str]) -> dict[str, set[str]]:
    """Room sets in Redis that still name one of ``cids``."""
    r = redis_server.client()
    found = {}
    for key in r.scan_iter(match=f"{prefix}rooms:*", count=1000):
        members = {text(m) for m in r.smembers(key)}
        if members & cids:
            found[text(key)] = members & cids
    return found


def index_servers(redis_server: RedisServer, prefix: str) -> set[str]:
    """The server ids in the server index."""
    return {text(s) for s in redis_server.client().smembers(KeyLayout(prefix).servers_index)}


def server_connection_ids(r: Any, prefix: str, sid: str) -> set[str]:
    """The connection ids a server's 256 sets hold (``P server-connections:{T}<sid>:XX``)."""
    pipe = r.pipeline(transaction=False)
    for key in KeyLayout(prefix).server_connection_sets(sid):
        pipe.smembers(key)
    return {text(m) for members in pipe.execute() for m in members}


def server_connection_count(r: Any, prefix: str, sid: str) -> int:
    """How many connection ids a server's 256 sets hold."""
    pipe = r.pipeline(transaction=False)
    for key in KeyLayout(prefix).server_connection_sets(sid):
        pipe.scard(key)
    return sum(pipe.execute())
