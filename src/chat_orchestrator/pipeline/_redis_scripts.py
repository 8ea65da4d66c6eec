"""The Lua scripts of the Redis pipeline store, each defined once (see ``pipeline.redis``).

Two families, never mixed in one script (Redis Cluster: one hash slot per script):

* per chat, keys under the chat's own hash tag: ``q`` (ZSET event key -> arrival seq),
  ``b`` (HASH event key -> event JSON), ``d`` (ZSET event key -> dedup expiry, epoch ms);
* global, keys under ``{pipeline}``: ``r`` (ZSET chat -> the time it may next be taken),
  ``w`` (HASH chat -> packed work entry), ``n`` (the stamp counter), and the dead letters
  ``x`` (HASH id -> JSON), ``xo`` (ZSET id -> at) and ``xc:<chat>`` (ZSET id -> at).

A work entry is packed into one hash field, ``<ready>,<stamp>,<until>[,<owner>]``: ``ready``
empty means None, and the owner (any text, commas included) is everything after the third
comma, present only while the chat is leased. The ZSET score of a chat is when it can be
taken: ``ready``, or while leased ``max(ready, until)`` (see the store's module docstring).
"""

from __future__ import annotations

from chat_orchestrator.state_managers._redis_scripts import Script

__all__ = [
    "ADD",
    "DEAD",
    "DROP_DEAD",
    "FINISH",
    "NEXT_READY",
    "PARK",
    "PARK_MOVE",
    "PENDING",
    "RELEASE",
    "RENEW",
    "SCHEDULE",
    "TAKE",
]

# Numbers are written with %.0f: Lua's tostring gives 14 significant digits only, and epoch
# ms and stamps are integers well inside a double's exact range.
_ENTRY = """
local function num(x) return string.format('%.0f', x) end
local function load(w, chat)
  local s = redis.call('HGET', w, chat)
  if not s then return nil end
  local a = string.find(s, ',', 1, true)
  local b = string.find(s, ',', a + 1, true)
  local c = string.find(s, ',', b + 1, true)
  local e = {stamp = tonumber(string.sub(s, a + 1, b - 1))}
  if a > 1 then e.ready = tonumber(string.sub(s, 1, a - 1)) end
  if c then
    e.u = tonumber(string.sub(s, b + 1, c - 1))
    e.owner = string.sub(s, c + 1)
  else
    e.u = tonumber(string.sub(s, b + 1))
  end
  return e
end
local function save(r, w, chat, e)
  if e.ready == nil and e.owner == nil then
    redis.call('HDEL', w, chat)
    redis.call('ZREM', r, chat)
    return
  end
  local s = (e.ready and num(e.ready) or '') .. ',' .. num(e.stamp) .. ',' .. num(e.u)
  local score = e.ready
  if e.owner then
    s = s .. ',' .. e.owner
    if score == nil or e.u > score then score = e.u end
  end
  redis.call('HSET', w, chat, s)
  redis.call('ZADD', r, num(score), chat)
end
"""

# KEYS: q, b, d of the chat. ARGV: retention ms, now, then key, json pairs.
# -> {1|0 per event}. Expired dedup marks go first, so a key is seen iff expiry > now.
ADD = Script("""
local retention, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local expiry = now + retention
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local seq = last[2] and tonumber(last[2]) or 0
local out, added = {}, false
for i = 3, #ARGV, 2 do
  local key = ARGV[i]
  if redis.call('ZSCORE', KEYS[3], key) then
    out[#out + 1] = 0
  else
    seq = seq + 1
    redis.call('ZADD', KEYS[3], expiry, key)
    redis.call('ZADD', KEYS[1], seq, key)
    redis.call('HSET', KEYS[2], key, ARGV[i + 1])
    out[#out + 1] = 1
    added = true
  end
end
if added and redis.call('PTTL', KEYS[3]) < retention then
  redis.call('PEXPIRE', KEYS[3], retention)
end
return out
""")

# KEYS: q, b. ARGV: limit. -> the oldest pending events' JSON.
PENDING = Script("""
local keys = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local out = {}
for _, key in ipairs(keys) do
  local body = redis.call('HGET', KEYS[2], key)
  if body then out[#out + 1] = body end
end
return out
""")

# KEYS: q, b. ARGV: event keys. The dedup marks stay (in d) until they expire.
FINISH = Script("""
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return 1
""")

# KEYS: r, w, n. ARGV: chat, at.
SCHEDULE = Script(
    _ENTRY
    + """
local at = tonumber(ARGV[2])
local e = load(KEYS[2], ARGV[1]) or {u = 0}
if e.ready == nil or at < e.ready then e.ready = at end
e.stamp = redis.call('INCR', KEYS[3])
save(KEYS[1], KEYS[2], ARGV[1], e)
return 1
"""
)

# KEYS: r, w. ARGV: now, lease ms, owner. -> {chat, stamp} | false. Every chat in r scores
# when it can be taken, so the first one due is free; the loop only skips an index entry
# whose work entry is gone (never written so, but cheap to repair).
TAKE = Script(
    _ENTRY
    + """
local now = tonumber(ARGV[1])
for _, chat in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 8)) do
  local e = load(KEYS[2], chat)
  if e == nil then
    redis.call('ZREM', KEYS[1], chat)
  else
    e.owner, e.u = ARGV[3], now + tonumber(ARGV[2])
    e.ready = e.u
    save(KEYS[1], KEYS[2], chat, e)
    return {chat, num(e.stamp)}
  end
end
return false
"""
)

# KEYS: r, w. ARGV: chat, owner, until. -> 1 renewed | 0 not the owner's.
RENEW = Script(
    _ENTRY
    + """
local e = load(KEYS[2], ARGV[1])
if e == nil or e.owner ~= ARGV[2] then return 0 end
local u = tonumber(ARGV[3])
if e.ready == e.u then e.ready = u end
e.u = u
save(KEYS[1], KEYS[2], ARGV[1], e)
return 1
"""
)

# KEYS: r, w. ARGV: chat, owner, stamp, next_at ('' = None).
RELEASE = Script(
    _ENTRY
    + """
local e = load(KEYS[2], ARGV[1])
if e == nil then return 0 end
if e.owner == ARGV[2] then e.owner, e.u = nil, 0 end
local nxt = nil
if ARGV[4] ~= '' then nxt = tonumber(ARGV[4]) end
if e.stamp == tonumber(ARGV[3]) then
  e.ready = nxt
elseif nxt ~= nil and (e.ready == nil or nxt < e.ready) then
  e.ready = nxt
end
save(KEYS[1], KEYS[2], ARGV[1], e)
return 1
"""
)

# KEYS: r. -> the lowest score (text) | false.
NEXT_READY = Script("""
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return first[2] or false
""")

# KEYS: x, xo, xc of the letter's chat. ARGV: id, chat, at, json.
# -> 1 | {old chat}: the id is parked under another chat, whose index key the caller must pass
# too (a script may only touch the keys it declares); it calls PARK_MOVE then.
PARK = Script("""
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local chat = cjson.decode(old)['c']
  if chat ~= ARGV[2] then return {chat} end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
""")

# KEYS: x, xo, xc of the new chat, xc of the old chat. ARGV: id, chat, at, json, old chat.
# -> 1 | {old chat} when the letter moved again since the caller looked.
PARK_MOVE = Script("""
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local chat = cjson.decode(old)['c']
  if chat ~= ARGV[2] and chat ~= ARGV[5] then return {chat} end
end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
""")

# KEYS: x, xo or xc. ARGV: limit. -> letters' JSON, oldest first (ties by id).
DEAD = Script("""
local ids = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[1], id)
  if body then out[#out + 1] = body end
end
return out
""")

# KEYS: x, xo, xc of the chat. ARGV: id, chat. -> 1 dropped | 0 none | {chat} parked again
# under another chat since the caller read it.
DROP_DEAD = Script("""
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
local chat = cjson.decode(old)['c']
if chat ~= ARGV[2] then return {chat} end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
""")
