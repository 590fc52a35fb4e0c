"""Redis Cluster: the second step of a removal, in the slots other than the connection's.

The first step (a script on the server's slot) deletes the connection's record and, if it was in
rooms, notes it in ``removing:{T}``. `SecondSteps` then takes it out of its room sets (room
bucket slots) and its user's bucket (a user bucket slot), and deletes the note. A note left
behind (a process killed between the steps, a room's shard unreachable) is finished by whoever
reads it next: `.redis_cluster` reads the notes of a tag at each heartbeat of a server of that
tag, and before each batch of a dead server's cleanup.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from ..models import RemovedConnection
from .redis_base import CHUNK, as_str, translate_errors
from .redis_keys import KeyLayout

__all__ = ["SecondSteps"]

logger = logging.getLogger(__name__)

RunMany = Callable[[str, Sequence[tuple[Sequence[str], Sequence[Any]]]], list[Any]]


def noted(cid: bytes, note: bytes) -> RemovedConnection:
    """A ``removing:{T}`` note (``[user, server, the connection's JSON room list]``)."""
    try:
        user, server, rooms_json = json.loads(note)
        rooms = json.loads(rooms_json)
    except (ValueError, TypeError):
        user, server, rooms = "", "", []
    if not isinstance(rooms, list):
        rooms = []
    return RemovedConnection(as_str(cid), str(user), str(server),
                             tuple(r for r in rooms if isinstance(r, str)))


class SecondSteps:
    """Handed the cluster client, the key layout, the backend's pipelined script runner, a
    room's three keys and the scripts' flag for counting users (both read at each call: the
    backend learns whether it counts users after it is made)."""

    def __init__(self, client: Any, keys: KeyLayout, run_many: RunMany,
                 room_keys: Callable[[str], list[str]], counted: Callable[[], str]) -> None:
        self._r, self._keys, self._run_many = client, keys, run_many
        self._room_keys, self._counted = room_keys, counted

    def finish_tag(self, tag: str) -> list[RemovedConnection]:
        """Finish the removals noted in ``removing:{tag}``; returns them, ``rooms_left`` as for
        a removal."""
        with translate_errors("finishing interrupted removals"):
            notes = self._r.hgetall(self._keys.removing(tag))
        return self.finish(tag, notes) if notes else []

    def finish(self, tag: str, notes: dict[bytes, bytes]) -> list[RemovedConnection]:
        """Finish the removals of ``notes`` (read from ``removing:{tag}``)."""
        with translate_errors("finishing interrupted removals"):
            done = self.empty_rooms([noted(cid, note) for cid, note in notes.items()])
        logger.warning("finished %d interrupted connection removal(s) (tag %s)", len(done), tag)
        return done

    def empty_rooms(self, removed: list[RemovedConnection]) -> list[RemovedConnection]:
        """Take removed connections out of their room sets and their users' buckets, and
        delete their notes; their ``rooms_left`` become the rooms that still have members."""
        k, counted = self._keys, self._counted()
        calls = [(self._room_keys(room), [r.connection_id, room, r.user_id, counted])
                 for r in removed for room in r.rooms_left]
        still = iter(self._run_many("room_del", calls))
        out = []
        notes: dict[str, list[str]] = defaultdict(list)  # the removals' notes, by tag
        users: dict[str, list[str]] = defaultdict(list)  # their ids, by user
        for r in removed:
            left = tuple(room for room in r.rooms_left if next(still))
            out.append(RemovedConnection(r.connection_id, r.user_id, r.server_id, left))
            if r.rooms_left:
                notes[r.connection_id[:4]].append(r.connection_id)
            if r.user_id:
                users[r.user_id].append(r.connection_id)
        self._run_many("user_drop", [([k.user(user)], [user, *ids]) for user, ids in users.items()])
        if notes:
            pipe = self._r.pipeline(transaction=False)
            for tag, ids in notes.items():
                for start in range(0, len(ids), CHUNK):
                    pipe.hdel(k.removing(tag), *ids[start:start + CHUNK])
            pipe.execute()
        return out
