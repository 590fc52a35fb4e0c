"""Lua scripts run by the Redis backend: each multi-key change is one atomic script.

Every script that removes a connection shares ``REMOVE_ONE`` so that the rules (drop the
hash, the server index entry, every room membership, the room from the room index when it
empties) are written once.
"""

from __future__ import annotations

# ARGV-independent helper: remove one connection, return {userId, serverId, {rooms left}} or nil.
REMOVE_ONE = """
local function remove_one(prefix, cid)
  local ckey = prefix .. 'connections:' .. cid
  local f = redis.call('HMGET', ckey, 'userId', 'serverId', 'rooms')
  if not f[2] then return nil end
  redis.call('DEL', ckey)
  redis.call('SREM', prefix .. 'server-connections:' .. f[2], cid)
  local left = {}
  local ok, rooms = pcall(cjson.decode, f[3] or '[]')
  if not ok or type(rooms) ~= 'table' then rooms = {} end
  for _, room in ipairs(rooms) do
    local rkey = prefix .. 'rooms:' .. room
    redis.call('SREM', rkey, cid)
    if redis.call('EXISTS', rkey) == 1 then
      left[#left + 1] = room
    else
      redis.call('SREM', prefix .. 'index:rooms', room)
    end
  end
  return {cid, f[1] or '', f[2], left}
end
"""

# KEYS: none. ARGV: prefix, cid...  -> list of {cid, user, server, {rooms left}} or false
REMOVE = REMOVE_ONE + """
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = remove_one(ARGV[1], ARGV[i]) or false
end
return out
"""

# KEYS[1]: server-connections:<sid>. ARGV: prefix, count -> list of removed records
POP_SERVER = REMOVE_ONE + """
local out = {}
local ids = redis.call('SPOP', KEYS[1], tonumber(ARGV[2]))
for _, cid in ipairs(ids) do
  local r = remove_one(ARGV[1], cid)
  if r then out[#out + 1] = r end
end
return out
"""

_OWNER = """
local owner = redis.call('HGET', KEYS[1], 'serverId')
if not owner then return false end
"""
_ROUTE = """
if owner ~= ARGV[3] then redis.call('PUBLISH', ARGV[1] .. 'server:' .. owner, ARGV[4]) end
return owner
"""

# KEYS: connections:<cid>, rooms:<room>, index:rooms. ARGV: prefix, cid/room, caller, route, room
JOIN = _OWNER + """
if redis.call('SADD', KEYS[2], ARGV[2]) == 1 then
  local ok, rooms = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'rooms') or '[]')
  if not ok or type(rooms) ~= 'table' then rooms = {} end
  rooms[#rooms + 1] = ARGV[5]
  redis.call('HSET', KEYS[1], 'rooms', cjson.encode(rooms))
  redis.call('SADD', KEYS[3], ARGV[5])
end
""" + _ROUTE

LEAVE = _OWNER + """
if redis.call('SREM', KEYS[2], ARGV[2]) == 1 then
  local ok, rooms = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'rooms') or '[]')
  if not ok or type(rooms) ~= 'table' then rooms = {} end
  local kept = {}
  for _, room in ipairs(rooms) do
    if room ~= ARGV[5] then kept[#kept + 1] = room end
  end
  redis.call('HSET', KEYS[1], 'rooms', #kept == 0 and '[]' or cjson.encode(kept))
  if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[5]) end
end
""" + _ROUTE

# KEYS: connections:<cid>. ARGV: prefix, unused, caller, data
ROUTE = _OWNER + _ROUTE

# KEYS: connections:<cid>, server-connections:<sid>. ARGV: cid, user, sid, timestamp, ttl ms
# -> 1 added, 0 the id is taken (nothing written)
ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'userId', ARGV[2], 'serverId', ARGV[3], 'timestamp', ARGV[4],
           'rooms', '[]')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# KEYS: servers:<sid>. ARGV: ttl ms, now, active -> 1 refreshed, 0 gone
HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'lastHeartbeat', ARGV[2], 'activeConnections', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: servers:<sid>. ARGV: its channel, data -> 1 published, 0 no such live server
TO_LIVE_SERVER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""
