"""Key and channel names in Redis, the same on a single Redis, Sentinel and Redis Cluster.

Every name carries a hash tag (the part in braces, which alone picks a Cluster slot) so that
what one atomic script touches lives in one slot:

    server slot {T}    T = the server's 4-digit tag (`server_tag`); a connection id's
                       first 4 digits are its server's tag (`.ids`)
        P servers:{T}<sid>             hash  the server's record, PEXPIRE heartbeat_ttl
        P server-connections:{T}<sid>:XX  set  the server's connection ids, in 256 sets by
                                             the id (XX: its last 15 digits mod 256, in hex),
                                             small enough to stay intsets: 8 bytes an id
        P lock:cleanup:{T}<sid>        str   who cleans the dead server
        P connections:{T}:XX           hash  the records of the connections with tag T, in 256
                                             buckets by id (XX as above): field the id, value
                                             `<len(user)>:<user><server id>` (`+` instead of
                                             `:` for a recoverable one). No TTL: its id in its
                                             server's set bounds its life (removed with the
                                             connection, or by the cleanup of its server's
                                             failure)
        P connection-rooms:{T}:XX      hash  the same buckets for the rooms of the connections
                                             in any: field the id, value a JSON array
        P recovery:{T}<rest>           hash  a recoverable connection (id = T + rest): k: its
                                             resume secret, n: the last message number given,
                                             x: suspended until (ms), t: its server's tag once
                                             it moved to a server of another tag (one Redis
                                             only). A suspended one: PEXPIRE recovery_window +
                                             60 s; once it expired the connection is gone
        P mailbox:{T}<rest>            stream a recoverable connection's last messages:
                                             entry id <n>-0, field d: the envelope
        P removing:{T}                 hash  Cluster: removals whose room sets are not done
        channel P server:{T}<sid>            the server's bus channel
      -> registering a connection, routing a direct message or a join/leave notice to the
         owner, a liveness-checked message to a server and a dead server's cleanup batch are
         each one script on one shard.
    room bucket slot {rXX}   XX = the first 2 hex digits of sha1(room): 256 buckets
        P rooms:{rXX}<room>            set   the room's connection ids
        P index:rooms:{rXX}            set   the bucket's rooms with members
        P room-users:{rXX}<room>       hash  user -> their connections in the room (only
                                             with room_notices="users")
        P history:{rXX}<room>          stream the room's last messages (history rooms only):
                                             entry id <offset>-0, field d: the envelope
        P history-meta:{rXX}<room>     hash  e: the history's epoch, s: its last offset
                                             (both keys PEXPIRE history_ttl at each append)
        channel P room:{rXX}<room>     the room's bus channel
      -> a room's first join and last leave update the room index in the same script; a
         history room's message is appended and published in one script.
    user bucket slot {uXX}   XX = the first 2 hex digits of sha1(user): 256 buckets
        P users:{uXX}                  hash  field a user, value their connection ids (every
                                             server), separated by spaces; '*' for a user
                                             with 4 or more, whose ids are then in:
        P users:{uXX}<user>            set   the connection ids of a user with many (back
                                             into the field once fewer than 3 are left)
    P index:servers                    set   every registered server id: one global key

Why buckets: a key of its own costs ~90 bytes before its content (its name, its entry in the
keyspace, its object header), more than a connection's record itself. As fields of a few
hundred per hash, records stay in a listpack (`hash-max-listpack-entries`, 512 by default, and
fields and values up to `hash-max-listpack-value`, 64 bytes): ~70 bytes a record with a
29-character server id, and a connection id (19 digits, below 2**63) is stored as an 8-byte
integer. A bucket that outgrows either limit (a connection in more than a few rooms, a user
and server id of more than ~60 bytes together, more than 512 records in one bucket; not a
user with many connections: theirs move to a set) turns into a hash table for good and keeps
working, at about twice the bytes a record (~150 instead of ~70 for connection records). The rooms are
apart from the records so that a connection in many rooms turns only its rooms' bucket into
a hash table; a connection in no room costs nothing there.

The 4-digit server tags (8,223 values) spread servers, and with them their connections, over
the slots; the 256 buckets spread the rooms and the users.
"""

from __future__ import annotations

import functools
import hashlib
import re

from .ids import TAG_COUNT, TAG_LOW, server_tag

__all__ = ["KeyLayout", "server_tag", "room_bucket", "user_bucket", "connection_bucket",
           "unpack_record", "TAG_LOW", "TAG_COUNT"]

_RECORD = re.compile(rb"(\d+)[:+]")  # a record's head: its user's length, then : or +


@functools.lru_cache(maxsize=4096)  # on every broadcast (the channel's name): hash a room once
def room_bucket(room: str) -> str:
    """The hash tag of a room's set and of its room-index bucket: ``r`` + 2 hex digits."""
    return "r" + hashlib.sha1(room.encode("utf-8")).hexdigest()[:2]


def user_bucket(user: str) -> str:
    """The hash tag of a user's bucket of connections: ``u`` + 2 hex digits."""
    return "u" + hashlib.sha1(user.encode("utf-8")).hexdigest()[:2]


def connection_bucket(cid: str) -> str:
    """The bucket of a connection id among its tag's 256: 2 hex digits (``00`` for an id that
    no backend mints, which no bucket holds: asked for by a client, say)."""
    rest = cid[4:]
    if not (0 < len(rest) <= 15 and rest.isascii() and rest.isdigit()):
        return "00"
    return f"{int(rest) % 256:02x}"


def unpack_record(value: bytes | str | None) -> tuple[str, str] | None:
    """``(user, server)`` of a connection's record as its bucket holds it (written by the
    scripts: ``<len(user) in bytes>:<user><server>``, ``+`` for ``:`` if recoverable), or None
    for none (or garbage)."""
    if value is None:
        return None
    raw = value.encode("utf-8") if isinstance(value, str) else value
    found = _RECORD.match(raw)
    if found is None or int(found[1]) > len(raw) - found.end():
        return None
    cut = found.end() + int(found[1])
    return raw[found.end():cut].decode("utf-8", "replace"), raw[cut:].decode("utf-8", "replace")


class KeyLayout:
    """Names under ``prefix`` (which holds no braces: Config refuses them)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.servers_index = prefix + "index:servers"
        self._cut = len(prefix)

    def _of_server(self, kind: str, sid: str) -> str:
        return f"{self.prefix}{kind}:{{{server_tag(sid)}}}{sid}"

    def server(self, sid: str) -> str:
        return self._of_server("servers", sid)

    def server_connections(self, sid: str, cid: str) -> str:
        """The one of the server's 256 sets of connection ids that holds ``cid``."""
        return self._of_server("server-connections", sid) + ":" + connection_bucket(cid)

    def server_connection_sets(self, sid: str) -> list[str]:
        """All 256 sets of the server's connection ids (most scripts name the first alone)."""
        base = self._of_server("server-connections", sid)
        return [f"{base}:{b:02x}" for b in range(256)]

    def cleanup_lock(self, sid: str) -> str:
        return self._of_server("lock:cleanup", sid)

    def removing(self, tag: str) -> str:
        """Cluster: removals of connections with tag ``tag`` whose room sets are not done yet."""
        return f"{self.prefix}removing:{{{tag}}}"

    def connection(self, cid: str) -> str:
        """The bucket hash that holds ``cid``'s record (its field: the id)."""
        return f"{self.prefix}connections:{{{cid[:4]}}}:{connection_bucket(cid)}"

    def connection_rooms(self, cid: str) -> str:
        """The bucket hash that holds ``cid``'s rooms, if it is in any (its field: the id)."""
        return f"{self.prefix}connection-rooms:{{{cid[:4]}}}:{connection_bucket(cid)}"

    def recovery(self, cid: str) -> str:
        """A recoverable connection's own hash: its secret, message number, suspension, tag."""
        return f"{self.prefix}recovery:{{{cid[:4]}}}{cid[4:]}"

    def mailbox(self, cid: str) -> str:
        return f"{self.prefix}mailbox:{{{cid[:4]}}}{cid[4:]}"

    def room(self, room: str) -> str:
        return f"{self.prefix}rooms:{{{room_bucket(room)}}}{room}"

    def room_users(self, room: str) -> str:
        return f"{self.prefix}room-users:{{{room_bucket(room)}}}{room}"

    def history(self, room: str) -> str:
        return f"{self.prefix}history:{{{room_bucket(room)}}}{room}"

    def history_meta(self, room: str) -> str:
        return f"{self.prefix}history-meta:{{{room_bucket(room)}}}{room}"

    def user(self, user: str) -> str:
        """The bucket hash that holds ``user``'s connection ids (its field: the user)."""
        return f"{self.prefix}users:{{{user_bucket(user)}}}"

    def user_set(self, user: str) -> str:
        """The set of ``user``'s connection ids, while they are too many for the field (its
        value in the bucket is then ``*``)."""
        return self.user(user) + user

    def rooms_index(self, bucket: str) -> str:
        return f"{self.prefix}index:rooms:{{{bucket}}}"

    def all_rooms_indexes(self) -> list[str]:
        return [self.rooms_index(f"r{i:02x}") for i in range(256)]

    def channel(self, logical: str) -> str:
        """``room:<room>`` -> ``P room:{rXX}<room>``; ``server:<sid>`` -> ``P server:{T}<sid>``."""
        if logical.startswith("server:"):
            return self._of_server("server", logical[7:])
        if logical.startswith("room:"):
            room = logical[5:]
            return f"{self.prefix}room:{{{room_bucket(room)}}}{room}"
        return self.prefix + logical

    def logical(self, channel: str) -> str:
        """The inverse of `channel`."""
        name = channel[self._cut:]
        if name.startswith(("server:{", "room:{")):
            kind, _, rest = name.partition(":")
            return f"{kind}:{rest[rest.index('}') + 1:]}"
        return name
