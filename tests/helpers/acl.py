"""The Redis ACL rules the documentation gives for a manager's user, as the tests grant them."""

from __future__ import annotations

#: What a manager's Redis user needs besides its key and channel patterns, in the README's two
#: forms: by category, and the exact commands the library sends.
BY_CATEGORY = ("+@all", "-@dangerous")
EXACT = ("-@all", "+evalsha", "+script|load", "+hset", "+hget", "+hgetall",
         "+hmget", "+hlen", "+hdel", "+hsetnx", "+pexpire", "+sadd", "+srem", "+sismember", "+smembers",
         "+spop", "+scard",
         "+exists", "+del",
         "+set", "+publish", "+subscribe", "+unsubscribe")
