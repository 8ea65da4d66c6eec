"""The Lua scripts of the Redis backend, each defined once, with their SHA1 for EVALSHA.

Every script is safe to run twice with the same arguments (a reply lost on the wire makes the
client send it again): see ``state_managers.redis``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["ACQUIRE_AND_LOAD", "CLAIM", "RELEASE", "RENEW", "SAVE", "SET", "Script"]


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: str = ""

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)


# Every record write stores ``t``, the server's clock in epoch ms, for ``iter_chats`` (the
# server's: one clock for every worker). Built as text, so no float formatting is involved.
_NOW_MS = """
local function NOW_MS()
  local t = redis.call('TIME')
  return t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
end
"""

# KEYS: marker. ARGV: token, ttl ms. -> 1 claimed (now or by this token before) | 0
CLAIM = Script("""
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
""")

# KEYS: record, lock. ARGV: token, lease ms. -> {1, v, s, c} | {0, pttl of the lock}
# "Already ours" counts as taken: a repeat after a lost reply must not see its own lease as busy.
ACQUIRE_AND_LOAD = Script("""
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
    or redis.call('GET', KEYS[2]) == ARGV[1] then
  local r = redis.call('HMGET', KEYS[1], 'v', 's', 'c')
  return {1, r[1], r[2], r[3]}
end
return {0, redis.call('PTTL', KEYS[2])}
""")

# KEYS: record, lock. ARGV: token ('' = not a turn: check the version only), expected
# version, state, context, ttl ms (0 = none), release (1/0), writer token.
# -> new version | {reason, v}. A record one past the expected version whose writer is this
# writer is this very write, repeated after a lost reply: success, not a conflict.
SAVE = Script(
    _NOW_MS
    + """
local r = redis.call('HMGET', KEYS[1], 'v', 'w')
local v = tonumber(r[1] or '0')
if v ~= tonumber(ARGV[2]) then
  if v == tonumber(ARGV[2]) + 1 and r[2] == ARGV[7] then return v end
  return {'conflict', v}
end
local holder = redis.call('GET', KEYS[2])
if ARGV[1] ~= '' and holder and holder ~= ARGV[1] then
  return {'locked', v}
end
redis.call('HSET', KEYS[1], 'v', v + 1, 's', ARGV[3], 'c', ARGV[4], 'w', ARGV[7], 't', NOW_MS())
if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
if ARGV[6] == '1' and holder then redis.call('DEL', KEYS[2]) end
return v + 1
"""
)

# KEYS: lock. ARGV: token.
RELEASE = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")

# KEYS: record. ARGV: state, context, ttl ms, writer token. Unconditional write that still
# bumps the version (once: a repeat by the same writer returns the version it made).
SET = Script(
    _NOW_MS
    + """
local r = redis.call('HMGET', KEYS[1], 'v', 'w')
if r[2] == ARGV[4] then return tonumber(r[1]) end
local v = redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HSET', KEYS[1], 's', ARGV[1], 'c', ARGV[2], 'w', ARGV[4], 't', NOW_MS())
if ARGV[3] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return v
"""
)

# KEYS: lock. ARGV: token, lease ms. The holder's renewal: never revives someone else's lock.
RENEW = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
""")
