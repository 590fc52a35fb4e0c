"""The Lua functions every script of the Redis backends shares: the key names of `.redis_keys`,
a connection's record in its bucket, a user's connection ids, a room's set.

A connection's record is read through ``conn_get``, which also answers "is it still there": a
recoverable connection whose ``recovery`` hash expired (suspended past its window) is gone, and
its leftovers in the buckets are deleted as it is found so.
"""

from __future__ import annotations

import functools
import re

__all__ = ["KEYS", "ROOM", "CONN", "REMOVE_ALL", "HEAD", "lean"]

KEYS = """
local function tag_of(cid) return string.sub(cid, 1, 4) end
-- a connection's bucket among its tag's 256 (its last 15 digits mod 256: exact in a double);
-- '00' for an id that no backend mints (a client's guess): as `connection_bucket` says. The
-- last one is kept: a script names the same connection's buckets several times
local last_cid, last_bucket
local function bucket_of(cid)
  if cid == last_cid then return last_bucket end
  local rest = string.sub(cid, 5)
  last_cid, last_bucket = cid, '00'
  if #rest <= 15 and string.match(rest, '^%d+$') then
    last_bucket = string.format('%02x', tonumber(rest) % 256)
  end
  return last_bucket
end
local function ckey(prefix, cid)
  return prefix .. 'connections:{' .. tag_of(cid) .. '}:' .. bucket_of(cid)
end
local function crkey(prefix, cid)
  return prefix .. 'connection-rooms:{' .. tag_of(cid) .. '}:' .. bucket_of(cid)
end
local function xkey(prefix, cid)
  return prefix .. 'recovery:{' .. tag_of(cid) .. '}' .. string.sub(cid, 5)
end
-- the one of a server's 256 sets of connection ids that holds cid (sets of a few hundred ids
-- stay intsets: 8 bytes an id). tag: the server's tag, when it is not the id's own (field t
-- of a connection that moved to another server: resumed there, or adopted by a cleaner)
local function sckey(prefix, sid, cid, tag)
  return prefix .. 'server-connections:{' .. (tag or tag_of(cid)) .. '}' .. sid .. ':'
    .. bucket_of(cid)
end
local function mailbox_key(prefix, cid)
  return prefix .. 'mailbox:{' .. tag_of(cid) .. '}' .. string.sub(cid, 5)
end
-- a room's bucket; the last one is kept, as for bucket_of
local last_room, last_room_bucket
local function bucket(room)
  if room ~= last_room then
    last_room, last_room_bucket = room, 'r' .. string.sub(redis.sha1hex(room), 1, 2)
  end
  return last_room_bucket
end
local function rkey(prefix, room) return prefix .. 'rooms:{' .. bucket(room) .. '}' .. room end
local function ikey(prefix, room) return prefix .. 'index:rooms:{' .. bucket(room) .. '}' end
local function ukey(prefix, user)
  return prefix .. 'users:{u' .. string.sub(redis.sha1hex(user), 1, 2) .. '}'
end

-- buckets read whole by a cleanup batch (`preload`): key -> {field -> value}, and the fields
-- deleted from them since. hget and hdel read and delete there: one HGETALL instead of a scan
-- of the bucket's listpack for each of its connections
local loaded, dropped = {}, {}
local function hget(key, field)
  local t = loaded[key]
  if t then return t[field] or false end
  return redis.call('HGET', key, field)
end
local function hdel(key, field)
  local t = loaded[key]
  if not t then return redis.call('HDEL', key, field) end
  if t[field] then
    t[field] = nil
    dropped[key][#dropped[key] + 1] = field
  end
end
-- read a bucket whole, unless it holds more than `most` fields (others' too: a hash table)
local function preload(key, most)
  if redis.call('HLEN', key) > most then return end
  local t, flat = {}, redis.call('HGETALL', key)
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  loaded[key], dropped[key] = t, {}
end
-- write a preloaded bucket back: deleted if nothing is left in it, else its dropped fields
local function flush(key)
  local t, gone = loaded[key], dropped[key]
  if not t then return end
  loaded[key], dropped[key] = nil, nil
  if #gone == 0 then return end
  if next(t) == nil then
    redis.call('DEL', key)
    return
  end
  for i = 1, #gone, 1000 do redis.call('HDEL', key, unpack(gone, i, math.min(i + 999, #gone))) end
end

-- a record: the user's length in bytes, ':' (or '+' if recoverable), the user, the server id.
-- Short, so that a bucket stays a listpack (values up to 64 bytes)
local function pack(user, server, rec)
  return #user .. (rec and '+' or ':') .. user .. server
end
-- {user, server, the tag it moved to or false, true if recoverable} or nil
local function conn_get(prefix, cid)
  local ck = ckey(prefix, cid)
  local v = hget(ck, cid)
  if not v then return nil end
  local n, mark, rest = string.match(v, '^(%d+)([:+])(.*)$')
  if not n then return nil end
  n = tonumber(n)
  local c = {string.sub(rest, 1, n), string.sub(rest, n + 1), false, mark == '+'}
  if c[4] then
    local x = redis.call('HMGET', xkey(prefix, cid), 'k', 't')
    if not x[1] then  -- suspended past its window: gone
      hdel(ck, cid)
      hdel(crkey(prefix, cid), cid)
      return nil
    end
    c[3] = x[2] or false
  end
  return c
end
-- a connection's rooms: its field's JSON, or false if it is in none
local function rooms_raw(prefix, cid)
  return hget(crkey(prefix, cid), cid)
end
local function decoded(raw)
  local ok, rooms = pcall(cjson.decode, raw or '[]')
  if not ok or type(rooms) ~= 'table' then return {} end
  return rooms
end
local function rooms_of(prefix, cid) return decoded(rooms_raw(prefix, cid)) end

-- a user's connection ids: their field in their bucket, the ids separated by spaces (one id
-- alone is stored as an integer). From the 4th on the field holds '*' and the ids are in a set
-- of their own, <bucket><user> (the same slot), until fewer than 3 are left: 4 ids would pass
-- the 64 bytes that keep the bucket compact, and a user with thousands of connections (one id
-- for every guest, say) would have their whole list rewritten at each change.
local SPILL = 4
local function user_ids(uk, user)
  local v = redis.call('HGET', uk, user)
  if v == '*' then return redis.call('SMEMBERS', uk .. user) end
  local out = {}
  for cid in string.gmatch(v or '', '%S+') do out[#out + 1] = cid end
  return out
end
local function user_count(uk, user)
  local v = redis.call('HGET', uk, user)
  if v == '*' then return redis.call('SCARD', uk .. user) end
  local n = 0
  for _ in string.gmatch(v or '', '%S+') do n = n + 1 end
  return n
end
local function user_save(uk, user, ids)
  if #ids == 0 then redis.call('HDEL', uk, user)
  else redis.call('HSET', uk, user, table.concat(ids, ' ')) end
end
local function user_add(uk, user, cid)
  if redis.call('HSETNX', uk, user, cid) == 1 then return end  -- the user's first connection
  local v = redis.call('HGET', uk, user)
  if v == '*' then
    redis.call('SADD', uk .. user, cid)
    return
  end
  local ids = {}
  for c in string.gmatch(v or '', '%S+') do
    if c == cid then return end
    ids[#ids + 1] = c
  end
  ids[#ids + 1] = cid
  if #ids < SPILL then
    user_save(uk, user, ids)
  else
    redis.call('SADD', uk .. user, unpack(ids))
    redis.call('HSET', uk, user, '*')
  end
end
-- gone: a table of ids to drop
local function user_drop(uk, user, gone)
  if next(gone) == nil then return end
  local v = redis.call('HGET', uk, user)
  if v == '*' then
    local sk = uk .. user
    for cid in pairs(gone) do redis.call('SREM', sk, cid) end
    if redis.call('SCARD', sk) < SPILL - 1 then
      local ids = redis.call('SMEMBERS', sk)
      redis.call('DEL', sk)
      user_save(uk, user, ids)
    end
    return
  end
  local n, kept = 0, {}
  for c in string.gmatch(v or '', '%S+') do
    n = n + 1
    if not gone[c] then kept[#kept + 1] = c end
  end
  if #kept ~= n then user_save(uk, user, kept) end
end
"""

# Room bucket slot. With ``uk`` (the room's user counts, kept when notices go per user) each
# member's user is counted. room_add -> 0 if the id was in the room already, 1 added, 2 added
# and the other members are to be told (there are some, and, with counts, it is the user's
# first connection there); room_del -> 1 if the members left are to be told (there are some,
# and, with counts, the user has no other connection there)
ROOM = """
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
CONN = """
local function full(rooms, max_rooms)
  local limit = tonumber(max_rooms)
  return limit > 0 and #rooms >= limit
end
local function in_list(rooms, room)
  for _, r in ipairs(rooms) do
    if r == room then return true end
  end
  return false
end
-- the connection's rooms (read here unless given), with room in (add) or out; none: its field
-- deleted
local function list_edit(prefix, cid, room, add, rooms)
  local kept = {}
  for _, r in ipairs(rooms or rooms_of(prefix, cid)) do
    if r ~= room then kept[#kept + 1] = r end
  end
  if add then kept[#kept + 1] = room end
  if #kept == 0 then redis.call('HDEL', crkey(prefix, cid), cid)
  else redis.call('HSET', crkey(prefix, cid), cid, cjson.encode(kept)) end
end
local function tell_room(prefix, room, tell, notice)
  if tell == 1 and notice ~= '' then
    redis.call('%PUBLISH%', prefix .. 'room:{' .. bucket(room) .. '}' .. room, notice)
  end
end
local function server_channel(prefix, owner, cid, tag)
  return prefix .. 'server:{' .. (tag or tag_of(cid)) .. '}' .. owner
end
local function notify(prefix, owner, caller, data, cid, tag)
  if owner ~= caller then
    redis.call('%PUBLISH%', server_channel(prefix, owner, cid, tag), data)
  end
end
-- {cid, user, server, {every room}} or nil; the room sets are left to the caller. With
-- journal (Cluster), a connection that had rooms is noted in removing:{T} (same slot) as
-- [user, server, rooms JSON] until the caller has taken it out of them: whoever finds the note
-- later finishes the removal; the user's bucket (another slot) is the caller's too.
-- c: the record as conn_get read it, when the caller has it (one scan of its bucket less)
local function conn_remove(prefix, cid, journal, c)
  c = c or conn_get(prefix, cid)
  if not c then return nil end
  local raw = rooms_raw(prefix, cid)
  local rooms = decoded(raw)
  if journal and #rooms > 0 then
    redis.call('HSET', prefix .. 'removing:{' .. tag_of(cid) .. '}', cid,
               cjson.encode({c[1], c[2], raw}))
  end
  hdel(ckey(prefix, cid), cid)
  if raw then hdel(crkey(prefix, cid), cid) end
  -- only a recoverable connection has these (ROUTE keeps a mailbox for no other)
  if c[4] then redis.call('DEL', xkey(prefix, cid), mailbox_key(prefix, cid)) end
  redis.call('SREM', sckey(prefix, c[2], cid, c[3]), cid)
  if not journal then user_drop(ukey(prefix, c[1]), c[1], {[cid] = true}) end
  return {cid, c[1], c[2], rooms}
end
-- the user has room for one more connection (0: no limit). With prune (single Redis), ids
-- whose connection is gone (a suspended one that expired) are dropped first
local function user_has_room(uk, user, max, prefix, prune)
  local limit = tonumber(max)
  if limit <= 0 or user_count(uk, user) < limit then return true end
  if prune then
    local ids = user_ids(uk, user)
    local gone, left = {}, 0
    for _, cid in ipairs(ids) do
      if conn_get(prefix, cid) then left = left + 1 else gone[cid] = true end
    end
    user_drop(uk, user, gone)
    return left < limit
  end
  return false
end
"""

# One Redis: a connection and its memberships, both slots at once -> {cid, user, server,
# {rooms whose members are to be told}} or nil
REMOVE_ALL = """
local function remove_all(prefix, cid, counted, c)
  local r = conn_remove(prefix, cid, false, c)
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

HEAD = KEYS + ROOM + CONN + REMOVE_ALL


_DEFINES = re.compile(r"local (?:function ([A-Za-z_]\w*)|([A-Za-z_][\w, ]*?)\s*(?:=|$))")
_WORD = re.compile(r"[A-Za-z_]\w*")


def _definitions(library: str) -> list[tuple[set[str], str]]:
    """``library`` cut into its top-level definitions, each ``(the names it defines, text)``
    with the comment lines above it (a definition starts at column 0; what is inside one is
    indented, but for its closing ``end``)."""
    out: list[tuple[set[str], str]] = [(set(), "")]
    comments: list[str] = []
    for line in library.splitlines(keepends=True):
        found = _DEFINES.match(line)
        if found:
            names = found[1] or found[2]
            out.append(({name.strip() for name in names.split(",")}, "".join(comments) + line))
            comments = []
        elif line.startswith("--"):
            comments.append(line)
        else:
            names, text = out[-1]
            out[-1] = (names, text + "".join(comments) + line)
            comments = []
    return out


def _words(lua: str) -> set[str]:
    return set(_WORD.findall(re.sub(r"--[^\n]*", "", lua)))


@functools.lru_cache(maxsize=128)  # the same texts for every backend and Emitter made
def lean(script: str) -> str:
    """``script`` (a body after `HEAD`, or after a part of it) with only the shared definitions
    its body uses, and those they use. Redis runs a script's whole text at every call, and
    making the closures of all of `HEAD` took longer than many a script's own work (6 µs a
    call on Redis 7.0, as long as the rest of a join)."""
    library = next((lib for lib in (HEAD, KEYS + ROOM, KEYS) if script.startswith(lib)), "")
    body = script[len(library):]
    parts = _definitions(library)
    wanted: set[str] = set()
    todo = _words(body)
    while todo:
        wanted |= todo
        todo = set().union(*(_words(text) for names, text in parts if names & todo)) - wanted
    return "".join(text for names, text in parts if names & wanted) + body
