"""Connection ids, minted by the backends (`Backend.new_connection_id`).

A connection id is its server's 4-digit tag (1000..9222) then 15 random decimal digits (about
50 random bits; an id that is taken is drawn again by the manager). The tag puts a connection's
records in its server's Redis Cluster slot (`.redis_keys`); decimal integers below 2**63
let Redis keep the small sets of ids (rooms of up to 512 members) as intsets, 8 bytes per member
instead of about 90. The memory backend mints the same ids, so ids look alike everywhere.
"""

from __future__ import annotations

import secrets
import zlib

__all__ = ["server_tag", "new_connection_id", "draw_connection_id", "TAG_LOW", "TAG_COUNT"]

TAG_LOW = 1000
TAG_COUNT = 8223  # tags 1000..9222: a tag followed by 15 digits stays below 2**63
_RANDOM_DIGITS = 10**15


def server_tag(server_id: str) -> str:
    """The 4-digit hash tag of a server (and the first 4 digits of its connection ids)."""
    return str(TAG_LOW + zlib.crc32(server_id.encode("utf-8")) % TAG_COUNT)


def draw_connection_id(tag: str) -> str:
    """``tag`` then 15 random decimal digits."""
    return f"{tag}{secrets.randbelow(_RANDOM_DIGITS):015d}"


def new_connection_id(server_id: str) -> str:
    """A fresh connection id for a connection of ``server_id``."""
    return draw_connection_id(server_tag(server_id))
