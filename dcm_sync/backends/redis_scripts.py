"""Lua scripts run by the Redis backends; the key names follow `.redis_keys`, the functions
they share are in `.redis_lua`.

A script only touches keys of one Cluster slot: a server's slot (its record, its connection
sets, the buckets of its connections' records and rooms, its channel) or a room bucket's slot
(room sets and their index) or a user bucket's. On a single Redis (or Sentinel) a join, a
leave and a removal are one script over all of them; in Cluster they are two or three, run in
an order that never leaves a connection id in a room set without the room in the connection's
list, a removal noting its rooms in ``removing:{T}`` until its second step is done (see
`.redis_cluster`).

Scripts that publish say ``%PUBLISH%``: ``PUBLISH`` on a single Redis, ``SPUBLISH`` (sharded
pub/sub, on the channel's own shard) in Cluster. `Scripts` fills it in.
"""

from __future__ import annotations

from . import redis_scripts_streams as streams
from .redis_lua import HEAD, KEYS, ROOM, lean

__all__ = ["Scripts"]

# ---------------------------------------------------------------- single Redis: one script each
# ARGV: prefix, '1' to count users, cid... -> per id {cid, user, server, {rooms to tell}} or false
REMOVE = HEAD + """
local out = {}
for i = 3, #ARGV do out[#out + 1] = remove_all(ARGV[1], ARGV[i], ARGV[2]) or false end
return out
"""

# KEYS: the bucket of the connection's record, rooms:<room>, its index bucket. ARGV: prefix,
# cid, caller, route, room, max rooms (0: no limit), '1' to count users, the notice to publish
# to the room's channel if the other members are to be told ('' for none) -> {owner, user, 1
# if they are}; false if the connection is unknown; 0 (nothing changed) if it is not in the
# room and in max rooms already
JOIN = HEAD + """
local c = conn_get(ARGV[1], ARGV[2])
if not c then return false end
local tell = 0
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 0 then
  local rooms = rooms_of(ARGV[1], ARGV[2])
  if full(rooms, ARGV[6]) then return 0 end
  if room_add(KEYS[2], KEYS[3], ARGV[2], ARGV[5], uckey(ARGV[1], ARGV[5], ARGV[7]), c[1]) == 2 then
    tell = 1
  end
  list_edit(ARGV[1], ARGV[2], ARGV[5], true, rooms)
end
notify(ARGV[1], c[2], ARGV[3], ARGV[4], ARGV[2], c[3])
tell_room(ARGV[1], ARGV[5], tell, ARGV[8])
return {c[2], c[1], tell}
"""

# ARGV: prefix, cid, caller, route, room, (unused), '1' to count users, notice -> as JOIN
LEAVE = HEAD + """
local c = conn_get(ARGV[1], ARGV[2])
if not c then return false end
local tell = 0
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then
  tell = room_del(KEYS[2], KEYS[3], ARGV[2], ARGV[5], uckey(ARGV[1], ARGV[5], ARGV[7]), c[1])
  list_edit(ARGV[1], ARGV[2], ARGV[5], false)
end
notify(ARGV[1], c[2], ARGV[3], ARGV[4], ARGV[2], c[3])
tell_room(ARGV[1], ARGV[5], tell, ARGV[8])
return {c[2], c[1], tell}
"""

# ARGV: prefix, room -> {cid, user, server, ...} of the room's members whose connection exists
ROOM_MEMBERS = HEAD + """
local out = {}
for _, cid in ipairs(redis.call('SMEMBERS', rkey(ARGV[1], ARGV[2]))) do
  local c = conn_get(ARGV[1], cid)
  if c then
    out[#out + 1] = cid; out[#out + 1] = c[1]; out[#out + 1] = c[2]
  end
end
return out
"""

# ARGV: prefix, user -> {cid, server, ...} of the user's connections (ids whose connection is
# gone are dropped from the user's bucket)
USER_CONNECTIONS = HEAD + """
local uk = ukey(ARGV[1], ARGV[2])
local out, gone = {}, {}
for _, cid in ipairs(user_ids(uk, ARGV[2])) do
  local c = conn_get(ARGV[1], cid)
  if c then
    out[#out + 1] = cid; out[#out + 1] = c[2]
  else
    gone[cid] = true
  end
end
user_drop(uk, ARGV[2], gone)
return out
"""

# ARGV: prefix, room -> {cid, user, server, ...}: every member taken out of the room (the set
# and each connection's room list), the room out of the index
CLEAR_ROOM = HEAD + """
local rk = rkey(ARGV[1], ARGV[2])
local members = redis.call('SMEMBERS', rk)
redis.call('DEL', rk, uckey(ARGV[1], ARGV[2], '1'))
redis.call('SREM', ikey(ARGV[1], ARGV[2]), ARGV[2])
local out = {}
for _, cid in ipairs(members) do
  local c = conn_get(ARGV[1], cid)
  if c then
    list_edit(ARGV[1], cid, ARGV[2], false)
    out[#out + 1] = cid; out[#out + 1] = c[1]; out[#out + 1] = c[2]
  end
end
return out
"""

# ---------------------------------------------------------------- Cluster: one slot per script
# KEYS: rooms:<room>, its index bucket, its user counts (or the room again: not counted).
# ARGV: cid, room, user, '1' to count users
ROOM_ADD = KEYS + ROOM + """
local uk = ''
if ARGV[4] == '1' then uk = KEYS[3] end
return room_add(KEYS[1], KEYS[2], ARGV[1], ARGV[2], uk, ARGV[3])
"""
# ROOM_DEL -> 0 as well when the id was not in the room (a leave of a non-member, a removal
# finished twice: nobody is told again)
ROOM_DEL = KEYS + ROOM + """
local uk = ''
if ARGV[4] == '1' then uk = KEYS[3] end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
return room_del(KEYS[1], KEYS[2], ARGV[1], ARGV[2], uk, ARGV[3])
"""

# KEYS: rooms:<room>, its index bucket, its user counts. ARGV: room -> the members, all taken out
ROOM_CLEAR = """
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SREM', KEYS[2], ARGV[1])
return members
"""

# KEYS: the user's bucket. ARGV: cid, max per user (0: no limit), user -> 1 added, 0 the user
# is at the cap
USER_ADD = HEAD + """
if not user_has_room(KEYS[1], ARGV[3], ARGV[2], '', false) then return 0 end
user_add(KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: the user's bucket. ARGV: user, cid... -> those ids out of the user's connections
USER_DROP = HEAD + """
local gone = {}
for i = 2, #ARGV do gone[ARGV[i]] = true end
user_drop(KEYS[1], ARGV[1], gone)
return 1
"""

# KEYS: the user's bucket. ARGV: user -> the user's connection ids (Cluster: the records are
# read in their own slots)
USER_IDS = HEAD + """
return user_ids(KEYS[1], ARGV[1])
"""

# KEYS: the bucket of the connection's record. ARGV: prefix, cid, room -> {user, server} with
# the room out of the connection's list, or false if the connection is gone
CONN_LEAVE = HEAD + """
local c = conn_get(ARGV[1], ARGV[2])
if not c then return false end
list_edit(ARGV[1], ARGV[2], ARGV[3], false)
return {c[1], c[2]}
"""

# KEYS: the bucket of the connection's record. ARGV: prefix, cid, caller, route, room, 1 join /
# 0 leave, max rooms (0: no limit) -> {owner, user}; false if unknown; 0 (nothing changed) if a
# join would pass max rooms
CONN_ROOM = HEAD + """
local c = conn_get(ARGV[1], ARGV[2])
if not c then return false end
local rooms = rooms_of(ARGV[1], ARGV[2])
if ARGV[6] == '1' and not in_list(rooms, ARGV[5]) and full(rooms, ARGV[7]) then return 0 end
list_edit(ARGV[1], ARGV[2], ARGV[5], ARGV[6] == '1', rooms)
notify(ARGV[1], c[2], ARGV[3], ARGV[4], ARGV[2], c[3])
return {c[2], c[1]}
"""

# KEYS: the buckets of the connections' records (one server slot). ARGV: prefix, cid... ->
# rows or false
CONN_REMOVE = HEAD + """
local out = {}
for i = 2, #ARGV do out[#out + 1] = conn_remove(ARGV[1], ARGV[i], true) or false end
return out
"""

# ---------------------------------------------------------------- both
# KEYS: server-connections:<sid>:00 (the first of the server's 256 sets: the others are named
# like it), servers:<sid>. ARGV: prefix, count, 1 to also empty the room sets (single Redis;
# 0 in Cluster: the rows are noted in removing:{T}), '1' to count users, the server's id, the
# adopter ('' for none), its tag, until ms, ttl ms -> rows {cid, user, server, {rooms to tell
# (single) or every room (Cluster)}}; none once the server is back (it writes its own state:
# nothing is removed under it). With an adopter (recovery on), a recoverable connection is not
# removed but suspended until `until` (or when it was already) and moved to the adopter: its
# row is {cid, user, adopter, {}, until}. An id whose connection moved to another server
# (resumed there) is only dropped from the set.
POP_SERVER = HEAD + """
local out = {}
if redis.call('EXISTS', KEYS[2]) == 1 then return out end
local function pop(cid)
  local c = conn_get(ARGV[1], cid)
  if c and c[2] ~= ARGV[5] then
    -- held by another server now
  elseif c and c[4] and ARGV[6] ~= '' then
    local xk = xkey(ARGV[1], cid)
    local untill = redis.call('HGET', xk, 'x') or ARGV[8]
    redis.call('HSET', ckey(ARGV[1], cid), cid, pack(c[1], ARGV[6], true))
    redis.call('HSET', xk, 'x', untill)
    if ARGV[7] == tag_of(cid) then redis.call('HDEL', xk, 't')
    else redis.call('HSET', xk, 't', ARGV[7]) end
    redis.call('SADD', sckey(ARGV[1], ARGV[6], cid, ARGV[7]), cid)
    redis.call('PEXPIRE', xk, ARGV[9])
    out[#out + 1] = {cid, c[1], ARGV[6], {}, tonumber(untill)}
  elseif ARGV[3] == '1' then
    local r = remove_all(ARGV[1], cid, ARGV[4], c)
    if r then out[#out + 1] = r end
  else
    local r = conn_remove(ARGV[1], cid, true, c)
    if r then out[#out + 1] = r end
  end
end
-- whole sets, as many as fit in `count`, so that the buckets of their connections (the same
-- bucket number) empty at once: read whole, then deleted. Part of a set only when it alone
-- holds more than `count`
local want, taken = tonumber(ARGV[2]), 0
local base = string.sub(KEYS[1], 1, -3)
for b = 0, 255 do
  if taken >= want then break end
  local set = base .. string.format('%02x', b)
  local n = redis.call('SCARD', set)
  if n > 0 then
    if taken + n > want then
      if taken > 0 then break end
      n = want
    end
    local ids = redis.call('SPOP', set, n)
    taken = taken + #ids
    local keys = {}
    if #ids >= 8 then keys = {ckey(ARGV[1], ids[1]), crkey(ARGV[1], ids[1])} end
    for _, key in ipairs(keys) do preload(key, 4 * #ids) end
    for _, cid in ipairs(ids) do pop(cid) end
    for _, key in ipairs(keys) do flush(key) end
  end
end
return out
"""

# KEYS: the bucket of the connection's record. ARGV: prefix, cid, caller, data, mailbox size
# (0: none kept), its ttl ms -> owner or false. A recoverable connection's message is numbered
# (n), kept in its mailbox (the last `size`) and published to its owner even when that is the
# caller, marked "\30:<n>\30": the owner delivers in that order
ROUTE = HEAD + """
local c = conn_get(ARGV[1], ARGV[2])
if not c then return false end
if c[4] and tonumber(ARGV[5]) > 0 then
  local n = redis.call('HINCRBY', xkey(ARGV[1], ARGV[2]), 'n', 1)
  local mk = mailbox_key(ARGV[1], ARGV[2])
  redis.call('XADD', mk, 'MAXLEN', ARGV[5], n .. '-0', 'd', ARGV[4])
  redis.call('PEXPIRE', mk, ARGV[6])
  redis.call('%PUBLISH%', server_channel(ARGV[1], c[2], ARGV[2], c[3]),
             '\\30:' .. n .. '\\30' .. ARGV[4])
  return c[2]
end
notify(ARGV[1], c[2], ARGV[3], ARGV[4], ARGV[2], c[3])
return c[2]
"""

# KEYS: the bucket of the connection's record, its server's set of ids that holds it (Cluster:
# the user's bucket is the second step, USER_ADD), and on a single Redis the user's bucket.
# ARGV: cid, user, sid, prefix, max connections per user (0: no limit), its resume secret ('' for
# none) -> 1 added, 0 the id is taken, -1 the user is at the cap (nothing written either way,
# but the ids of the user's connections that are gone, dropped when the user is at the cap).
# The record gets no TTL: the id in its server's set bounds its life (failure cleanup removes it)
ADD = HEAD + """
if KEYS[3] and not user_has_room(KEYS[3], ARGV[2], ARGV[5], ARGV[4], true) then return -1 end
if redis.call('HSETNX', KEYS[1], ARGV[1], pack(ARGV[2], ARGV[3], ARGV[6] ~= '')) == 0 then
  return 0
end
if ARGV[6] ~= '' then
  local xk = xkey(ARGV[4], ARGV[1])
  redis.call('DEL', xk)
  redis.call('HSET', xk, 'k', ARGV[6])
end
redis.call('SADD', KEYS[2], ARGV[1])
if KEYS[3] then user_add(KEYS[3], ARGV[2], ARGV[1]) end
return 1
"""

# KEYS: the bucket of the connection's record, its server's set of ids that holds it. ARGV:
# prefix, cid, user, sid, its rooms (JSON), its resume secret ('' for none), its server's tag
# if it moved there ('' if not) -> 1. A server writing its connections back (after Redis lost
# them): the user's bucket and the room sets are the caller's other steps
RESTORE = HEAD + """
local rec = ARGV[6] ~= ''
redis.call('HSET', KEYS[1], ARGV[2], pack(ARGV[3], ARGV[4], rec))
if ARGV[5] == '[]' then redis.call('HDEL', crkey(ARGV[1], ARGV[2]), ARGV[2])
else redis.call('HSET', crkey(ARGV[1], ARGV[2]), ARGV[2], ARGV[5]) end
local xk = xkey(ARGV[1], ARGV[2])
if rec then
  redis.call('HSET', xk, 'k', ARGV[6])
  if ARGV[7] ~= '' then redis.call('HSET', xk, 't', ARGV[7]) end
else
  redis.call('DEL', xk)
end
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

# KEYS: servers:<sid>. ARGV: ttl ms, now, active -> 1 refreshed, 0 gone
HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'lastHeartbeat', ARGV[2], 'activeConnections', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: servers:<sid>, server-connections:<sid>:00 -> 1 forgotten, 0 the server is back
FORGET = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local base, sets = string.sub(KEYS[2], 1, -3), {}
for b = 0, 255 do sets[#sets + 1] = base .. string.format('%02x', b) end
redis.call('DEL', unpack(sets))
return 1
"""

# KEYS: server-connections:<sid>:00 -> how many connections the server has
SERVER_COUNT = """
local base, n = string.sub(KEYS[1], 1, -3), 0
for b = 0, 255 do n = n + redis.call('SCARD', base .. string.format('%02x', b)) end
return n
"""

# KEYS: servers:<sid>. ARGV: its channel, data -> 1 published, 0 no such live server
TO_LIVE_SERVER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('%PUBLISH%', ARGV[1], ARGV[2])
return 1
"""


class Scripts:
    """The scripts' texts with ``%PUBLISH%`` filled in, each with only the shared functions it
    uses (`.redis_lua.lean`)."""

    def __init__(self, publish: str) -> None:
        def fill(text: str) -> str:
            return lean(text).replace("%PUBLISH%", publish)

        self.remove, self.join, self.leave = fill(REMOVE), fill(JOIN), fill(LEAVE)
        self.room_add, self.room_del = fill(ROOM_ADD), fill(ROOM_DEL)
        self.conn_room, self.conn_remove = fill(CONN_ROOM), fill(CONN_REMOVE)
        self.pop_server, self.route, self.add = fill(POP_SERVER), fill(ROUTE), fill(ADD)
        self.restore = fill(RESTORE)
        self.heartbeat, self.to_live_server = HEARTBEAT, fill(TO_LIVE_SERVER)
        self.forget = FORGET
        self.room_members, self.user_connections = fill(ROOM_MEMBERS), fill(USER_CONNECTIONS)
        self.clear_room, self.room_clear = fill(CLEAR_ROOM), ROOM_CLEAR
        self.user_add, self.user_drop = fill(USER_ADD), fill(USER_DROP)
        self.user_ids = fill(USER_IDS)
        self.conn_leave = fill(CONN_LEAVE)
        self.server_count = SERVER_COUNT
        self.history_append = fill(streams.HISTORY_APPEND)
        self.history_read, self.history_start = streams.HISTORY_READ, streams.HISTORY_START
        self.suspend, self.remove_suspended = fill(streams.SUSPEND), fill(streams.REMOVE_SUSPENDED)
        self.resume, self.mailbox_read = fill(streams.RESUME), fill(streams.MAILBOX_READ)
