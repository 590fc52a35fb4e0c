"""Lua scripts of the Redis backends that keep streams: a room's history (one room's slot) and,
on one Redis, a recoverable connection's suspension, resume and mailbox. Key names follow
`.redis_keys`; `.redis_scripts` registers them with the others.
"""

from __future__ import annotations

from .redis_lua import HEAD

__all__ = ["HISTORY_APPEND", "HISTORY_START", "HISTORY_READ", "SUSPEND", "REMOVE_SUSPENDED",
           "RESUME", "MAILBOX_READ"]

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
# KEYS: the bucket of the connection's record. ARGV: prefix, cid, server, until ms, ttl ms -> 1
# suspended; 0 not (gone, held by another server, or not recoverable). Its recovery hash
# expires: the connection is gone with it
SUSPEND = HEAD + """
local c = conn_get(ARGV[1], ARGV[2])
if not c or c[2] ~= ARGV[3] or not c[4] then return 0 end
local xk = xkey(ARGV[1], ARGV[2])
redis.call('HSET', xk, 'x', ARGV[4])
redis.call('PEXPIRE', xk, ARGV[5])
return 1
"""

# ARGV: prefix, '1' to count users, server, cid -> the removal's row (as REMOVE's), or false
# if the connection is not suspended on that server (resumed, moved, or gone)
REMOVE_SUSPENDED = HEAD + """
local c = conn_get(ARGV[1], ARGV[4])
if not c or c[2] ~= ARGV[3] or not c[4] then return false end
if not redis.call('HGET', xkey(ARGV[1], ARGV[4]), 'x') then return false end
return remove_all(ARGV[1], ARGV[4], ARGV[2], c) or false
"""

# KEYS: the bucket of the connection's record, the new owner's set of ids that is to hold it.
# ARGV: prefix, cid, secret, user, server, its tag, new secret -> {old owner, 1 if it was
# suspended, its rooms (JSON), the last message number given}; false (nothing changed) if the
# connection is unknown or not recoverable, or the secret or the user is not its own. A live
# connection's recovery hash has no TTL (a suspended one's, set by SUSPEND or POP_SERVER, is
# taken off)
RESUME = HEAD + """
local c = conn_get(ARGV[1], ARGV[2])
if not c or not c[4] then return false end
local xk = xkey(ARGV[1], ARGV[2])
local f = redis.call('HMGET', xk, 'k', 'x', 'n', 't')
if f[1] ~= ARGV[3] or c[1] ~= ARGV[4] then return false end
if c[2] ~= ARGV[5] or (f[4] or tag_of(ARGV[2])) ~= ARGV[6] then
  redis.call('SREM', sckey(ARGV[1], c[2], ARGV[2], f[4]), ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('HSET', KEYS[1], ARGV[2], pack(c[1], ARGV[5], true))
  if ARGV[6] == tag_of(ARGV[2]) then redis.call('HDEL', xk, 't')
  else redis.call('HSET', xk, 't', ARGV[6]) end
end
redis.call('HDEL', xk, 'x')
redis.call('HSET', xk, 'k', ARGV[7])
redis.call('PERSIST', xk)
return {c[2], f[2] and 1 or 0, rooms_raw(ARGV[1], ARGV[2]) or '[]', tonumber(f[3] or '0')}
"""

# KEYS: the bucket of the connection's record, mailbox:<cid>. ARGV: prefix, cid, after, count
# -> {last number given, number, message, ...} (those after `after`, oldest first); {} if the
# connection is gone
MAILBOX_READ = HEAD + """
if not conn_get(ARGV[1], ARGV[2]) then return {} end
local out = {tonumber(redis.call('HGET', xkey(ARGV[1], ARGV[2]), 'n') or '0')}
for _, row in ipairs(redis.call('XRANGE', KEYS[2], '(' .. ARGV[3] .. '-0', '+', 'COUNT', ARGV[4])) do
  out[#out + 1] = tonumber(string.match(row[1], '^(%d+)'))
  out[#out + 1] = row[2][2]
end
return out
"""
