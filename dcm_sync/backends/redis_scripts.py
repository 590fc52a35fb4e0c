"""Lua scripts run by the Redis backends; the key names follow `.redis_keys`.

A script only touches keys of one Cluster slot: a server's slot (its record, its connection set,
its connections' hashes, its channel) or a room bucket's slot (room sets and their index). On a
single Redis (or Sentinel) a join, a leave and a removal are one script over both; in Cluster
they are two, run in an order that never leaves a connection id in a room set without the room
in the connection's list, a removal noting its rooms in ``removing:{T}`` until its second step
is done (see `.redis_cluster`).

Scripts that publish say ``%PUBLISH%``: ``PUBLISH`` on a single Redis, ``SPUBLISH`` (sharded
pub/sub, on the channel's own shard) in Cluster. `Scripts` fills it in.
"""

from __future__ import annotations

__all__ = ["Scripts"]

_KEYS = """
local function ckey(prefix, cid)
  return prefix .. 'connections:{' .. string.sub(cid, 1, 4) .. '}' .. string.sub(cid, 5)
end
-- the one of a server's 256 sets of connection ids that holds cid (sets of a few hundred ids
-- stay intsets: 8 bytes an id). tag: the server's tag, when it is not the id's own (field t
-- of a connection that moved to another server: resumed there, or adopted by a cleaner)
local function sckey(prefix, sid, cid, tag)
  return prefix .. 'server-connections:{' .. (tag or string.sub(cid, 1, 4)) .. '}' .. sid .. ':'
    .. string.format('%02x', tonumber(string.sub(cid, 5)) % 256)
end
local function mailbox_key(prefix, cid)
  return prefix .. 'mailbox:{' .. string.sub(cid, 1, 4) .. '}' .. string.sub(cid, 5)
end
local function bucket(room) return 'r' .. string.sub(redis.sha1hex(room), 1, 2) end
local function rkey(prefix, room) return prefix .. 'rooms:{' .. bucket(room) .. '}' .. room end
local function ikey(prefix, room) return prefix .. 'index:rooms:{' .. bucket(room) .. '}' end
local function ukey(prefix, user)
  return prefix .. 'users:{u' .. string.sub(redis.sha1hex(user), 1, 2) .. '}' .. user
end
local function rooms_of(ckey_)
  local ok, rooms = pcall(cjson.decode, redis.call('HGET', ckey_, 'r') or '[]')
  if not ok or type(rooms) ~= 'table' then return {} end
  return rooms
end
"""

# Room bucket slot. With ``uk`` (the room's user counts, kept when notices go per user) each
# member's user is counted. room_add -> 0 if the id was in the room already, 1 added, 2 added
# and the other members are to be told (there are some, and, with counts, it is the user's
# first connection there); room_del -> 1 if the members left are to be told (there are some,
# and, with counts, the user has no other connection there)
_ROOM = """
local function room_add(rk, ik, cid, room, uk, user)
  if redis.call('SADD', rk, cid) == 0 then return 0 end
  local size = redis.call('SCARD', rk)
  if size == 1 then redis.call('SADD', ik, room) end
  if uk ~= '' and redis.call('HINCRBY', uk, user, 1) > 1 then return 1 end
  if size > 1 then return 2 end
  return 1
end
local function room_del(rk, ik, cid, room, uk, user)
  local removed = redis.call('SREM', rk, cid)
  if removed == 1 and redis.call('EXISTS', rk) == 0 then
    redis.call('SREM', ik, room)
  end
  if uk ~= '' then
    if removed == 1 and redis.call('HINCRBY', uk, user, -1) <= 0 then redis.call('HDEL', uk, user) end
    if redis.call('HEXISTS', uk, user) == 1 then return 0 end
  end
  return redis.call('EXISTS', rk)
end
local function uckey(prefix, room, counted)
  if counted ~= '1' then return '' end
  return prefix .. 'room-users:{' .. bucket(room) .. '}' .. room
end
"""

# Server slot: a connection's room list, the notice to its owner, its removal.
_CONN = """
local function full(ck, max_rooms)
  local limit = tonumber(max_rooms)
  return limit > 0 and #rooms_of(ck) >= limit
end
local function in_list(ck, room)
  for _, r in ipairs(rooms_of(ck)) do
    if r == room then return true end
  end
  return false
end
local function list_edit(ck, room, add)
  local kept = {}
  for _, r in ipairs(rooms_of(ck)) do
    if r ~= room then kept[#kept + 1] = r end
  end
  if add then kept[#kept + 1] = room end
  redis.call('HSET', ck, 'r', #kept == 0 and '[]' or cjson.encode(kept))
end
local function tell_room(prefix, room, tell, notice)
  if tell == 1 and notice ~= '' then
    redis.call('%PUBLISH%', prefix .. 'room:{' .. bucket(room) .. '}' .. room, notice)
  end
end
local function server_channel(prefix, owner, cid, tag)
  return prefix .. 'server:{' .. (tag or string.sub(cid, 1, 4)) .. '}' .. owner
end
local function notify(prefix, owner, caller, data, cid, tag)
  if owner ~= caller then
    redis.call('%PUBLISH%', server_channel(prefix, owner, cid, tag), data)
  end
end
-- {cid, user, server, {every room}} or nil; the room sets are left to the caller. With
-- journal (Cluster), a connection that had rooms is noted in removing:{T} (same slot) as
-- [user, server, rooms JSON] until the caller has taken it out of them: whoever finds the note
-- later finishes the removal.
local function conn_remove(prefix, cid, journal)
  local ck = ckey(prefix, cid)
  local f = redis.call('HMGET', ck, 'u', 's', 'r', 't')
  if not f[2] then return nil end
  local rooms = rooms_of(ck)
  local tag = string.sub(cid, 1, 4)
  if journal and #rooms > 0 then
    redis.call('HSET', prefix .. 'removing:{' .. tag .. '}', cid, cjson.encode({f[1] or '', f[2], f[3]}))
  end
  redis.call('DEL', ck, mailbox_key(prefix, cid))
  redis.call('SREM', sckey(prefix, f[2], cid, f[4]), cid)
  if not journal and f[1] then redis.call('SREM', ukey(prefix, f[1]), cid) end
  return {cid, f[1] or '', f[2], rooms}
end
-- the user's set of connections has room for one more (0: no limit). With prune (single
-- Redis), ids whose connection is gone (a suspended one's hash expired) are dropped first
local function user_has_room(uk, max, prefix, prune)
  local limit = tonumber(max)
  if limit <= 0 or redis.call('SCARD', uk) < limit then return true end
  if prune then
    for _, cid in ipairs(redis.call('SMEMBERS', uk)) do
      if redis.call('EXISTS', ckey(prefix, cid)) == 0 then redis.call('SREM', uk, cid) end
    end
  end
  return redis.call('SCARD', uk) < limit
end
"""

# One Redis: a connection and its memberships, both slots at once -> {cid, user, server,
# {rooms whose members are to be told}} or nil
_REMOVE_ALL = """
local function remove_all(prefix, cid, counted)
  local r = conn_remove(prefix, cid, false)
  if not r then return nil end
  local left = {}
  for _, room in ipairs(r[4]) do
    if room_del(rkey(prefix, room), ikey(prefix, room), r[1], room, uckey(prefix, room, counted),
                r[2]) == 1 then
      left[#left + 1] = room
    end
  end
  r[4] = left
  return r
end
"""

_HEAD = _KEYS + _ROOM + _CONN + _REMOVE_ALL

# ---------------------------------------------------------------- single Redis: one script each
# ARGV: prefix, '1' to count users, cid... -> per id {cid, user, server, {rooms to tell}} or false
REMOVE = _HEAD + """
local out = {}
for i = 3, #ARGV do out[#out + 1] = remove_all(ARGV[1], ARGV[i], ARGV[2]) or false end
return out
"""

# KEYS: connections:<cid>, rooms:<room>, its index bucket. ARGV: prefix, cid, caller, route,
# room, max rooms (0: no limit), '1' to count users, the notice to publish to the room's
# channel if the other members are to be told ('' for none) -> {owner, user, 1 if they are};
# false if the connection is unknown; 0 (nothing changed) if it is not in the room and in max
# rooms already
JOIN = _HEAD + """
local f = redis.call('HMGET', KEYS[1], 's', 'u', 't')
if not f[1] then return false end
local tell = 0
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 0 then
  if full(KEYS[1], ARGV[6]) then return 0 end
  if room_add(KEYS[2], KEYS[3], ARGV[2], ARGV[5], uckey(ARGV[1], ARGV[5], ARGV[7]), f[2]) == 2 then
    tell = 1
  end
  list_edit(KEYS[1], ARGV[5], true)
end
notify(ARGV[1], f[1], ARGV[3], ARGV[4], ARGV[2], f[3])
tell_room(ARGV[1], ARGV[5], tell, ARGV[8])
return {f[1], f[2] or '', tell}
"""

# ARGV: prefix, cid, caller, route, room, (unused), '1' to count users, notice -> as JOIN
LEAVE = _HEAD + """
local f = redis.call('HMGET', KEYS[1], 's', 'u', 't')
if not f[1] then return false end
local tell = 0
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then
  tell = room_del(KEYS[2], KEYS[3], ARGV[2], ARGV[5], uckey(ARGV[1], ARGV[5], ARGV[7]), f[2])
  list_edit(KEYS[1], ARGV[5], false)
end
notify(ARGV[1], f[1], ARGV[3], ARGV[4], ARGV[2], f[3])
tell_room(ARGV[1], ARGV[5], tell, ARGV[8])
return {f[1], f[2] or '', tell}
"""

# ARGV: prefix, room -> {cid, user, server, ...} of the room's members whose connection exists
ROOM_MEMBERS = _HEAD + """
local out = {}
for _, cid in ipairs(redis.call('SMEMBERS', rkey(ARGV[1], ARGV[2]))) do
  local f = redis.call('HMGET', ckey(ARGV[1], cid), 'u', 's')
  if f[2] then
    out[#out + 1] = cid; out[#out + 1] = f[1] or ''; out[#out + 1] = f[2]
  end
end
return out
"""

# ARGV: prefix, user -> {cid, server, ...} of the user's connections (ids whose connection is
# gone are dropped from the set)
USER_CONNECTIONS = _HEAD + """
local uk = ukey(ARGV[1], ARGV[2])
local out = {}
for _, cid in ipairs(redis.call('SMEMBERS', uk)) do
  local owner = redis.call('HGET', ckey(ARGV[1], cid), 's')
  if owner then
    out[#out + 1] = cid; out[#out + 1] = owner
  else
    redis.call('SREM', uk, cid)
  end
end
return out
"""

# ARGV: prefix, room -> {cid, user, server, ...}: every member taken out of the room (the set
# and each connection's room list), the room out of the index
CLEAR_ROOM = _HEAD + """
local rk = rkey(ARGV[1], ARGV[2])
local members = redis.call('SMEMBERS', rk)
redis.call('DEL', rk, uckey(ARGV[1], ARGV[2], '1'))
redis.call('SREM', ikey(ARGV[1], ARGV[2]), ARGV[2])
local out = {}
for _, cid in ipairs(members) do
  local ck = ckey(ARGV[1], cid)
  local f = redis.call('HMGET', ck, 'u', 's')
  if f[2] then
    list_edit(ck, ARGV[2], false)
    out[#out + 1] = cid; out[#out + 1] = f[1] or ''; out[#out + 1] = f[2]
  end
end
return out
"""

# ---------------------------------------------------------------- Cluster: one slot per script
# KEYS: rooms:<room>, its index bucket, its user counts (or the room again: not counted).
# ARGV: cid, room, user, '1' to count users
ROOM_ADD = _KEYS + _ROOM + """
local uk = ''
if ARGV[4] == '1' then uk = KEYS[3] end
return room_add(KEYS[1], KEYS[2], ARGV[1], ARGV[2], uk, ARGV[3])
"""
# ROOM_DEL -> 0 as well when the id was not in the room (a leave of a non-member, a removal
# finished twice: nobody is told again)
ROOM_DEL = _KEYS + _ROOM + """
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

# KEYS: users:<user>. ARGV: cid, max per user (0: no limit) -> 1 added, 0 the user is at the cap
USER_ADD = _HEAD + """
if not user_has_room(KEYS[1], ARGV[2], '', false) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""

# KEYS: connections:<cid>. ARGV: room -> {user, server} with the room out of the connection's
# list, or false if the connection is gone
CONN_LEAVE = _HEAD + """
local f = redis.call('HMGET', KEYS[1], 'u', 's')
if not f[2] then return false end
list_edit(KEYS[1], ARGV[1], false)
return {f[1] or '', f[2]}
"""

# KEYS: connections:<cid>. ARGV: prefix, cid, caller, route, room, 1 join / 0 leave, max rooms
# (0: no limit) -> {owner, user}; false if unknown; 0 (nothing changed) if a join would pass
# max rooms
CONN_ROOM = _HEAD + """
local f = redis.call('HMGET', KEYS[1], 's', 'u', 't')
if not f[1] then return false end
if ARGV[6] == '1' and not in_list(KEYS[1], ARGV[5]) and full(KEYS[1], ARGV[7]) then return 0 end
list_edit(KEYS[1], ARGV[5], ARGV[6] == '1')
notify(ARGV[1], f[1], ARGV[3], ARGV[4], ARGV[2], f[3])
return {f[1], f[2] or ''}
"""

# KEYS: the connections' hashes (one server slot). ARGV: prefix, cid... -> rows or false
CONN_REMOVE = _HEAD + """
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
# nothing is removed under it). With an adopter (recovery on), a recoverable connection (one
# with a resume secret) is not removed but suspended until `until` (or when it was already)
# and moved to the adopter: its row is {cid, user, adopter, {}, until}. An id whose connection
# moved to another server (resumed there) is only dropped from the set.
POP_SERVER = _HEAD + """
local out = {}
if redis.call('EXISTS', KEYS[2]) == 1 then return out end
local ids, want = {}, tonumber(ARGV[2])
local base = string.sub(KEYS[1], 1, -3)
for b = 0, 255 do
  if #ids >= want then break end
  for _, cid in ipairs(redis.call('SPOP', base .. string.format('%02x', b), want - #ids)) do
    ids[#ids + 1] = cid
  end
end
for _, cid in ipairs(ids) do
  local ck = ckey(ARGV[1], cid)
  local f = redis.call('HMGET', ck, 's', 'k', 'x', 'u')
  if f[1] and f[1] ~= ARGV[5] then
    -- held by another server now
  elseif f[1] and f[2] and ARGV[6] ~= '' then
    local untill = f[3] or ARGV[8]
    redis.call('HSET', ck, 's', ARGV[6], 'x', untill)
    if ARGV[7] == string.sub(cid, 1, 4) then redis.call('HDEL', ck, 't')
    else redis.call('HSET', ck, 't', ARGV[7]) end
    redis.call('SADD', sckey(ARGV[1], ARGV[6], cid, ARGV[7]), cid)
    redis.call('PEXPIRE', ck, ARGV[9])
    out[#out + 1] = {cid, f[4] or '', ARGV[6], {}, tonumber(untill)}
  elseif ARGV[3] == '1' then
    local r = remove_all(ARGV[1], cid, ARGV[4])
    if r then out[#out + 1] = r end
  else
    local r = conn_remove(ARGV[1], cid, true)
    if r then out[#out + 1] = r end
  end
end
return out
"""

# KEYS: connections:<cid>. ARGV: prefix, cid, caller, data, mailbox size (0: none kept), its
# ttl ms -> owner or false. A recoverable connection's message (it has a resume secret, k) is
# numbered (n), kept in its mailbox (the last `size`) and published to its owner even when
# that is the caller, marked "\30:<n>\30": the owner delivers in that order
ROUTE = _HEAD + """
local f = redis.call('HMGET', KEYS[1], 's', 't', 'k')
if not f[1] then return false end
if f[3] and tonumber(ARGV[5]) > 0 then
  local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
  local mk = mailbox_key(ARGV[1], ARGV[2])
  redis.call('XADD', mk, 'MAXLEN', ARGV[5], n .. '-0', 'd', ARGV[4])
  redis.call('PEXPIRE', mk, ARGV[6])
  redis.call('%PUBLISH%', server_channel(ARGV[1], f[1], ARGV[2], f[2]),
             '\\30:' .. n .. '\\30' .. ARGV[4])
  return f[1]
end
notify(ARGV[1], f[1], ARGV[3], ARGV[4], ARGV[2], f[2])
return f[1]
"""

# KEYS: connections:<cid>, its server's set of ids that holds it (Cluster: the user's set is
# the second step, USER_ADD), and on a single Redis users:<user>. ARGV: cid, user, sid,
# prefix, max connections per user (0: no limit), its resume secret ('' for none) -> 1 added,
# 0 the id is taken, -1 the user is at the cap (nothing written either way). The hash gets no
# TTL: the id in its server's set bounds its life (failure cleanup removes it)
ADD = _HEAD + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if KEYS[3] and not user_has_room(KEYS[3], ARGV[5], ARGV[4], true) then return -1 end
redis.call('HSET', KEYS[1], 'u', ARGV[2], 's', ARGV[3], 'r', '[]')
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'k', ARGV[6]) end
redis.call('SADD', KEYS[2], ARGV[1])
if KEYS[3] then redis.call('SADD', KEYS[3], ARGV[1]) end
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


# ---------------------------------------------------------------- room history (one room's slot)
# KEYS: history-meta:<room>, history:<room>. ARGV: the room's channel, the envelope, history
# size, ttl ms -> {epoch, offset}: the envelope kept as entry <offset>-0 (the last `size`
# kept) and published as "\30<epoch>:<offset>\30<envelope>". A history that expired (or was
# lost) starts again at offset 1 under a new epoch.
_EPOCH = """
local function epoch_of(meta, stream)
  local epoch = redis.call('HGET', meta, 'e')
  if not epoch then
    local t = redis.call('TIME')
    epoch = string.format('%x%05x', tonumber(t[1]), tonumber(t[2]))
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', epoch, 's', 0)
  end
  return epoch
end
"""
HISTORY_APPEND = _EPOCH + """
local epoch = epoch_of(KEYS[1], KEYS[2])
local offset = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-0', 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('%PUBLISH%', ARGV[1], '\\30' .. epoch .. ':' .. offset .. '\\30' .. ARGV[2])
return {epoch, offset}
"""

# KEYS: history-meta:<room>, history:<room>. ARGV: ttl ms -> {epoch, last offset}, starting
# an empty history (offset 0 of a new epoch) if the room has none
HISTORY_START = _EPOCH + """
local epoch = epoch_of(KEYS[1], KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {epoch, tonumber(redis.call('HGET', KEYS[1], 's'))}
"""

# KEYS: history-meta:<room>, history:<room>. ARGV: after (an offset; -1 for the latest
# entries), count -> {epoch, last offset, offset, envelope, ...} oldest first, at most `count`
# entries (those after `after`, or the latest); {} when the room has no history
HISTORY_READ = """
local m = redis.call('HMGET', KEYS[1], 'e', 's')
if not m[1] then return {} end
local out = {m[1], tonumber(m[2])}
local rows = {}
if tonumber(ARGV[2]) <= 0 then
  -- the epoch and last offset only
elseif tonumber(ARGV[1]) < 0 then
  local latest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])
  rows = {}
  for i = #latest, 1, -1 do rows[#rows + 1] = latest[i] end
else
  rows = redis.call('XRANGE', KEYS[2], '(' .. ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
end
for _, row in ipairs(rows) do
  out[#out + 1] = tonumber(string.match(row[1], '^(%d+)'))
  out[#out + 1] = row[2][2]
end
return out
"""


# ---------------------------------------------------------------- recovery (one Redis)
# KEYS: connections:<cid>. ARGV: server, until ms, ttl ms -> 1 suspended; 0 not (gone, held by
# another server, or not recoverable)
SUSPEND = """
local f = redis.call('HMGET', KEYS[1], 's', 'k')
if f[1] ~= ARGV[1] or not f[2] then return 0 end
redis.call('HSET', KEYS[1], 'x', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# ARGV: prefix, '1' to count users, server, cid -> the removal's row (as REMOVE's), or false
# if the connection is not suspended on that server (resumed, moved, or gone)
REMOVE_SUSPENDED = _HEAD + """
local f = redis.call('HMGET', ckey(ARGV[1], ARGV[4]), 's', 'x')
if f[1] ~= ARGV[3] or not f[2] then return false end
return remove_all(ARGV[1], ARGV[4], ARGV[2]) or false
"""

# KEYS: connections:<cid>, the new owner's set of ids that is to hold it. ARGV: prefix, cid,
# secret, user, server, its tag, new secret -> {old owner, 1 if it was suspended, its rooms
# (JSON), the last message number given}; false (nothing changed) if the connection is unknown
# or not recoverable, or the secret or the user is not its own. A live connection's hash has no
# TTL (a suspended one's, set by SUSPEND or POP_SERVER, is taken off)
RESUME = _HEAD + """
local f = redis.call('HMGET', KEYS[1], 'u', 's', 'k', 'x', 'n', 't', 'r')
if not f[2] or not f[3] or f[3] ~= ARGV[3] or f[1] ~= ARGV[4] then return false end
if f[2] ~= ARGV[5] or (f[6] or string.sub(ARGV[2], 1, 4)) ~= ARGV[6] then
  redis.call('SREM', sckey(ARGV[1], f[2], ARGV[2], f[6]), ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('HSET', KEYS[1], 's', ARGV[5])
  if ARGV[6] == string.sub(ARGV[2], 1, 4) then redis.call('HDEL', KEYS[1], 't')
  else redis.call('HSET', KEYS[1], 't', ARGV[6]) end
end
redis.call('HDEL', KEYS[1], 'x')
redis.call('HSET', KEYS[1], 'k', ARGV[7])
redis.call('PERSIST', KEYS[1])
return {f[2], f[4] and 1 or 0, f[7] or '[]', tonumber(f[5] or '0')}
"""

# KEYS: connections:<cid>, mailbox:<cid>. ARGV: after, count -> {last number given, number,
# message, ...} (those after `after`, oldest first); {} if the connection is gone
MAILBOX_READ = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local out = {tonumber(redis.call('HGET', KEYS[1], 'n') or '0')}
for _, row in ipairs(redis.call('XRANGE', KEYS[2], '(' .. ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])) do
  out[#out + 1] = tonumber(string.match(row[1], '^(%d+)'))
  out[#out + 1] = row[2][2]
end
return out
"""


class Scripts:
    """The scripts' texts with ``%PUBLISH%`` filled in."""

    def __init__(self, publish: str) -> None:
        def fill(text: str) -> str:
            return text.replace("%PUBLISH%", publish)

        self.remove, self.join, self.leave = fill(REMOVE), fill(JOIN), fill(LEAVE)
        self.room_add, self.room_del = ROOM_ADD, ROOM_DEL
        self.conn_room, self.conn_remove = fill(CONN_ROOM), fill(CONN_REMOVE)
        self.pop_server, self.route, self.add = fill(POP_SERVER), fill(ROUTE), fill(ADD)
        self.heartbeat, self.to_live_server = HEARTBEAT, fill(TO_LIVE_SERVER)
        self.forget = FORGET
        self.room_members, self.user_connections = fill(ROOM_MEMBERS), fill(USER_CONNECTIONS)
        self.clear_room, self.room_clear = fill(CLEAR_ROOM), ROOM_CLEAR
        self.user_add, self.conn_leave = fill(USER_ADD), fill(CONN_LEAVE)
        self.server_count = SERVER_COUNT
        self.history_append, self.history_read = fill(HISTORY_APPEND), HISTORY_READ
        self.history_start = HISTORY_START
        self.suspend, self.remove_suspended = SUSPEND, fill(REMOVE_SUSPENDED)
        self.resume, self.mailbox_read = fill(RESUME), MAILBOX_READ

