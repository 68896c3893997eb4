"""Admission: the Lua scripts ``RedisStore`` runs, one per operation.

Every multi-step update is one script, so it is atomic on the server with no
client-side read-modify-write. Each script touches only the seven keys of one
API key, passed in ``KEYS`` and sharing the hash tag ``{name}``, so it also runs
on a Redis Cluster. The same semantics as ``MemoryStore`` (see ``store.py``).

KEYS, in this order (``KEY_SUFFIXES``):
  st     hash: ``spent``, ``budget`` (latest admitted with), usage totals
         ``requests`` ``prompt`` ``completion``, per model ``m:<model>:r|p|c``
  req    zset: the request log, reservation id scored by admission time
  tok    hash: one-second bucket (epoch second) -> tokens charged in it
  lease  zset: live reservation id scored by its expiry
  res    hash: ``out`` (outstanding sum), per id ``o:<id>`` outstanding,
         ``d:<id>`` debited, ``s:<id>`` settled marker
  ended  zset: ended (settled or lapsed) id scored by when; forgotten after GRACE
  days   hash: ``<YYYY-MM-DD>:r|p|c`` usage per UTC day

ARGV[1] is the time in epoch seconds, or "" for the server's clock (one clock
for every gateway process); ARGV[2] the seconds the lease keys outlive their
last write.
"""

from __future__ import annotations

KEY_SUFFIXES = ("st", "req", "tok", "lease", "res", "ended", "days")

#: The state hash keeps budgets and totals; idle this long, a key starts afresh.
STATE_TTL_SECONDS = 400 * 86_400
DAYS_TTL_SECONDS = 91 * 86_400

_PRELUDE = """
local st, req, tok, lease, res, ended, days =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local keep = tonumber(ARGV[2])
local WINDOW = 60
local GRACE = 86400
local BUSY = 1

-- HINCRBY refuses "-0", which Lua makes of -tonumber("0").
local function decr(key, field, n)
  if n ~= 0 then redis.call('HINCRBY', key, field, -n) end
end

-- Tokens in the window, oldest bucket first; drops buckets that left it.
local function window()
  local flat = redis.call('HGETALL', tok)
  local used, buckets = 0, {}
  for i = 1, #flat, 2 do
    local b, n = tonumber(flat[i]), tonumber(flat[i + 1])
    if b + WINDOW <= now then
      redis.call('HDEL', tok, flat[i])
    else
      used = used + n
      buckets[#buckets + 1] = {b, n}
    end
  end
  table.sort(buckets, function(x, y) return x[1] < y[1] end)
  return used, buckets
end

local function prune()
  -- A lease not renewed in time belongs to a dead producer: stop counting it.
  local lapsed = redis.call('ZRANGEBYSCORE', lease, '-inf', now, 'LIMIT', 0, 256)
  for _, id in ipairs(lapsed) do
    local o = tonumber(redis.call('HGET', res, 'o:' .. id) or '0')
    decr(res, 'out', o)
    redis.call('HDEL', res, 'o:' .. id)
    redis.call('ZREM', lease, id)
    redis.call('ZADD', ended, now, id)
  end
  local old = redis.call('ZRANGEBYSCORE', ended, '-inf', now - GRACE, 'LIMIT', 0, 256)
  for _, id in ipairs(old) do
    redis.call('HDEL', res, 'd:' .. id, 's:' .. id)
    redis.call('ZREM', ended, id)
  end
  redis.call('ZREMRANGEBYSCORE', req, '-inf', now - WINDOW)
  return window()
end

local function charge(n)
  if n > 0 then
    redis.call('HINCRBY', tok, math.floor(now), n)
    redis.call('HINCRBY', st, 'spent', n)
  end
end

local function remaining_budget(budget)
  if not budget then return -1 end
  return math.max(0, budget - tonumber(redis.call('HGET', st, 'spent') or '0'))
end

-- Nothing grows forever: every key lapses some time after its last write.
local function expire_all()
  redis.call('EXPIRE', st, __STATE_TTL__)
  redis.call('EXPIRE', req, WINDOW + 1)
  redis.call('EXPIRE', tok, WINDOW + 1)
  redis.call('EXPIRE', lease, keep)
  redis.call('EXPIRE', res, keep)
  redis.call('EXPIRE', ended, keep)
end
""".replace("__STATE_TTL__", str(STATE_TTL_SECONDS))

#: ARGV[3..]: id, reserve, ttl, rpm, tpm, max_streams, budget ("" = unlimited).
#: Returns {admitted, reason, retry, remaining_requests, reset_requests,
#: remaining_tokens, reset_tokens, remaining_budget, reserved, expires_at};
#: -1 / "" stand for None.
ADMIT = (
    _PRELUDE
    + """
local id, reserve, ttl = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local rpm, tpm, maxs, budget =
  tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local used, buckets = prune()
local out = tonumber(redis.call('HGET', res, 'out') or '0')
local spent = tonumber(redis.call('HGET', st, 'spent') or '0')
local nreq = redis.call('ZCARD', req)
if budget then redis.call('HSET', st, 'budget', budget) else redis.call('HDEL', st, 'budget') end

local reserved, reason, retry = reserve, '', ''
if budget then
  if spent >= budget then
    reason = 'insufficient_quota'
  elseif budget - spent - out <= 0 then
    reason, retry = 'insufficient_quota', BUSY
  else
    reserved = math.min(reserve, budget - spent - out)
  end
end
if reason == '' and rpm and nreq >= rpm then
  reason = 'rate_limit_requests'
  local e = redis.call('ZRANGE', req, nreq - rpm, nreq - rpm, 'WITHSCORES')
  retry = tonumber(e[2]) + WINDOW - now
end
if reason == '' and maxs and redis.call('ZCARD', lease) >= maxs then
  reason, retry = 'too_many_streams', BUSY
end
if reason == '' and tpm and used + out + reserved > tpm then
  reason, retry = 'rate_limit_tokens', BUSY
  if reserved > tpm then
    retry = ''
  elseif out + reserved <= tpm then
    local freed = 0
    for _, b in ipairs(buckets) do
      freed = freed + b[2]
      if used - freed + out + reserved <= tpm then
        retry = b[1] + WINDOW - now
        break
      end
    end
  end
end

local admitted = 0
if reason == '' then
  admitted = 1
  if rpm then
    redis.call('ZADD', req, now, id)
    nreq = nreq + 1
  end
  redis.call('ZADD', lease, now + ttl, id)
  redis.call('HSET', res, 'o:' .. id, reserved, 'd:' .. id, 0)
  out = redis.call('HINCRBY', res, 'out', reserved)
end
expire_all()

local rem_req, reset_req, rem_tok, reset_tok = -1, '', -1, ''
if rpm then
  rem_req = math.max(0, rpm - nreq)
  reset_req = 0
  local first = redis.call('ZRANGE', req, 0, 0, 'WITHSCORES')
  if first[2] then reset_req = tonumber(first[2]) + WINDOW - now end
end
if tpm then
  rem_tok = math.max(0, tpm - used - out)
  reset_tok = 0
  if buckets[1] then reset_tok = buckets[1][1] + WINDOW - now end
end
return {admitted, reason, tostring(retry), rem_req, tostring(reset_req), rem_tok,
        tostring(reset_tok), remaining_budget(budget), reserved, tostring(now + ttl)}
"""
)

_ONE_REPLY = """
-- Charge tokens delivered mid-stream (taken off the reservation's outstanding part)
-- and push the lease out by ttl (nil: keep it); tokens 0 only renews.
local function debit_one(id, tokens, ttl)
  local o = redis.call('HGET', res, 'o:' .. id)
  if o then
    if ttl then redis.call('ZADD', lease, 'XX', now + ttl, id) end
    if tokens <= 0 then return end
    local take = math.min(tokens, tonumber(o))
    decr(res, 'o:' .. id, take)
    decr(res, 'out', take)
    redis.call('HINCRBY', res, 'd:' .. id, tokens)
    charge(tokens)
  elseif tokens > 0 and redis.call('HEXISTS', res, 's:' .. id) == 0 then
    -- Lease lapsed (or forgotten): the tokens were still delivered.
    if redis.call('ZSCORE', ended, id) then redis.call('HINCRBY', res, 'd:' .. id, tokens) end
    charge(tokens)
  end
end

-- Release the reservation, charge what was not debited yet, add the usage.
-- Returns 1 when settled now, 0 when it already was (or is unknown).
local function settle_one(id, actual, prompt, completion, model, day, first_kept)
  if redis.call('HEXISTS', res, 's:' .. id) == 1 then return 0 end
  local o = redis.call('HGET', res, 'o:' .. id)
  if o then
    decr(res, 'out', tonumber(o))
    redis.call('HDEL', res, 'o:' .. id)
    redis.call('ZREM', lease, id)
  elseif not redis.call('ZSCORE', ended, id) then
    return 0
  end
  local debited = tonumber(redis.call('HGET', res, 'd:' .. id) or '0')
  redis.call('ZADD', ended, now, id)
  redis.call('HSET', res, 's:' .. id, 1, 'd:' .. id, debited)
  charge(actual - debited)

  redis.call('HINCRBY', st, 'requests', 1)
  redis.call('HINCRBY', st, 'prompt', prompt)
  redis.call('HINCRBY', st, 'completion', completion)
  redis.call('HINCRBY', st, 'm:' .. model .. ':r', 1)
  redis.call('HINCRBY', st, 'm:' .. model .. ':p', prompt)
  redis.call('HINCRBY', st, 'm:' .. model .. ':c', completion)
  if redis.call('HINCRBY', days, day .. ':r', 1) == 1 then
    -- A new day: drop the days that left the kept range (at most once a day).
    for _, f in ipairs(redis.call('HKEYS', days)) do
      if string.sub(f, 1, 10) < first_kept then redis.call('HDEL', days, f) end
    end
  end
  redis.call('HINCRBY', days, day .. ':p', prompt)
  redis.call('HINCRBY', days, day .. ':c', completion)
  redis.call('EXPIRE', days, __DAYS_TTL__)
  return 1
end
""".replace("__DAYS_TTL__", str(DAYS_TTL_SECONDS))

#: ARGV[3..]: id, tokens, budget. Returns the remaining budget, -1 if unlimited.
DEBIT = (
    _PRELUDE
    + _ONE_REPLY
    + """
local id, tokens, budget = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
prune()
if tokens > 0 then
  debit_one(id, tokens, nil)
  expire_all()
end
return remaining_budget(budget)
"""
)

#: ARGV[3..]: id, actual, prompt, completion, model, day, first day kept.
#: Returns 1 when settled now, 0 when it already was (or is unknown).
SETTLE = (
    _PRELUDE
    + _ONE_REPLY
    + """
prune()
local done = settle_one(ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]),
                        ARGV[7], ARGV[8], ARGV[9])
if done == 1 then expire_all() end
return done
"""
)

#: Many replies of one key in one step (``RedisStore``'s batches).
#: ARGV[3..]: ttl, day, first day kept, the number of debits, then per debit its id
#: and tokens (0: only renew the lease), then per settle its id, actual, prompt,
#: completion and model. Returns the number of replies settled now.
BATCH = (
    _PRELUDE
    + _ONE_REPLY
    + """
local ttl, day, first_kept, ndebits = tonumber(ARGV[3]), ARGV[4], ARGV[5], tonumber(ARGV[6])
prune()
local i = 7
for _ = 1, ndebits do
  debit_one(ARGV[i], tonumber(ARGV[i + 1]), ttl)
  i = i + 2
end
local settled = 0
while i <= #ARGV do
  settled = settled + settle_one(ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]),
                                 tonumber(ARGV[i + 3]), ARGV[i + 4], day, first_kept)
  i = i + 5
end
expire_all()
return settled
"""
)

#: ARGV[3..]: id, ttl. Returns 1 when renewed, 0 when the lease already ended.
RENEW = (
    _PRELUDE
    + """
local id, ttl = ARGV[3], tonumber(ARGV[4])
prune()
if not redis.call('ZSCORE', lease, id) then return 0 end
redis.call('ZADD', lease, 'XX', now + ttl, id)
expire_all()
return 1
"""
)
