"""Reading the Redis key layout (:class:`dcm_sync.backends.redis_keys.KeyLayout`) in tests and
benchmarks: the room index is 256 bucket sets, and a room's key carries its bucket's hash tag."""

from __future__ import annotations

from typing import Any

from dcm_sync.backends.redis_keys import KeyLayout


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
