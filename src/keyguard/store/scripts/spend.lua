-- keyguard: the metered step of one decision, atomically.
-- KEYS[1] = kg:{H}:rec (key record hash), KEYS[2] = kg:{H}:rl (GCRA state, requests)
-- KEYS[3] = kg:{H}:holds (open holds: member "<id>:<credits>", score = expiry ms)
-- KEYS[4] = kg:{H}:tpm (GCRA state, tokens)
-- KEYS[5] = kg:{H}:expired (holds released unsettled: member hold id, score = when, ms)
-- ARGV[1] = cost: units spent now (request metering) or credits to hold (token metering)
-- ARGV[2] = rpm (0 = no rate limit)
-- ARGV[3] = hold id ('' = request metering: spend ARGV[1] now, place no hold)
-- ARGV[4] = hold lifetime in ms
-- ARGV[5] = tpm (0 = no token limit)
-- Returns {outcome, remaining, rl_limit, rl_remaining, rl_reset_ms, retry_after_ms,
--          held, tpm_limit, tpm_remaining, tpm_reset_ms, holds_expired_now}
-- Time comes from Redis so every replica agrees on cycles, limits and hold expiry.
local rec = KEYS[1]
local f = redis.call('HMGET', rec, 'status', 'unlimited', 'remaining', 'payg', 'type',
  'cycle_end', 'cycle_seconds', 'cycle_quota', 'held')
if not f[1] then return {'gone', -1, 0, 0, 0, 0, 0, 0, 0, 0, 0} end
if f[1] ~= 'active' then return {'disabled', -1, 0, 0, 0, 0, 0, 0, 0, 0, 0} end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local hold_id = ARGV[3] or ''
local holding = hold_id ~= ''
local tpm = tonumber(ARGV[5]) or 0
local unlimited = f[2] == '1'
local remaining = tonumber(f[3]) or 0
local held = tonumber(f[9]) or 0
local expired_now = 0
local tl_limit, tl_remaining, tl_reset = 0, 0, 0
-- Amounts go back to Redis as the caller's decimal string (ARGV[1]) or through int(),
-- never as a Lua number (a double, written with an exponent from 10^17 on).
local amount = ARGV[1]
local function int(n) return string.format('%d', n) end
local function reply(outcome, left, limit, limit_left, reset, retry)
  return {outcome, left, limit, limit_left, reset, retry, held, tl_limit, tl_remaining,
    tl_reset, expired_now}
end

-- Subscription cycle: the first request after the boundary resets the quota.
if f[5] == 'subscription' then
  local cycle_end = tonumber(f[6])
  local cycle_seconds = tonumber(f[7])
  if cycle_end and cycle_seconds and cycle_seconds > 0 and now_ms >= cycle_end * 1000 then
    local skipped = math.floor((now_ms / 1000 - cycle_end) / cycle_seconds) + 1
    cycle_end = cycle_end + skipped * cycle_seconds
    remaining = tonumber(f[8]) or 0
    redis.call('HSET', rec, 'remaining', remaining, 'cycle_used', 0,
      'cycle_end', string.format('%d', cycle_end))
  end
end

-- Holds whose settlement never came are released, charging nothing (documented).
if holding then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms)
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
    -- Their credits are freed; their ids are remembered for a day, so a settlement that
    -- comes after all is charged once (settle.lua). Written in slices: unpack has a limit,
    -- and a long outage can expire many holds at once.
    local freed, ids = 0, {}
    for _, member in ipairs(expired) do
      local id, credits = string.match(member, '^(.*):(%d+)$')
      freed = freed + (tonumber(credits) or 0)
      ids[#ids + 1] = now_ms
      ids[#ids + 1] = id or member
      if #ids >= 2000 then
        redis.call('ZADD', KEYS[5], unpack(ids))
        ids = {}
      end
    end
    if #ids > 0 then redis.call('ZADD', KEYS[5], unpack(ids)) end
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now_ms - 86400000)
    redis.call('PEXPIRE', KEYS[5], 86400000)
    held = redis.call('HINCRBY', rec, 'held', int(-freed))
    redis.call('HINCRBY', rec, 'holds_expired', #expired)
    expired_now = #expired
  end
end

-- Tokens per minute: charged at settlement; a request is admitted while the budget
-- is not used up (an admitted stream is never cut).
if tpm > 0 then
  local ttat = tonumber(redis.call('GET', KEYS[4])) or now_ms
  if ttat < now_ms then ttat = now_ms end
  local busy = ttat - now_ms
  tl_limit = tpm
  tl_reset = math.ceil(busy)
  tl_remaining = math.max(0, math.floor((60000 - busy) * tpm / 60000))
  if tl_remaining <= 0 then
    local retry = math.ceil(busy - 60000 + 60000 / tpm)
    tl_remaining = 0
    return reply('tokens_limited', remaining, 0, 0, 0, retry)
  end
end

-- GCRA with a burst of one minute's allowance: at most rpm requests at once,
-- then one every 60/rpm seconds. The state is only written when allowed. It is kept
-- in microseconds: rounded to whole milliseconds, every allow would use at least 1 ms
-- of the minute (capping any rpm at 60,000, and 7,000 at 6,667).
local rl_limit, rl_remaining, rl_reset, new_tat = 0, 0, 0, nil
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
if rpm > 0 then
  local interval = 60000000 / rpm
  local tat = tonumber(redis.call('GET', KEYS[2])) or now_us
  if tat < now_us then tat = now_us end
  new_tat = tat + interval
  local allow_at = new_tat - 60000000
  if now_us < allow_at then
    local reset = math.ceil((tat - now_us) / 1000)
    return reply('rate_limited', remaining, rpm, 0, reset, math.ceil((allow_at - now_us) / 1000))
  end
  rl_limit = rpm
  rl_remaining = math.floor((60000000 - (new_tat - now_us)) / interval)
  rl_reset = math.ceil((new_tat - now_us) / 1000)
end

local outcome = 'ok'
if holding then
  -- The hold must fit the available balance: what is left minus what open requests hold.
  if not unlimited and cost > remaining - held and held ~= 0
      and redis.call('EXISTS', KEYS[3]) == 0 then
    -- The set is gone (evicted, or dropped by the TTL older versions gave it) while the
    -- record still counts what it held: no hold is open, so nothing is held. (Asked only
    -- here, where a stale amount would refuse the request or bill it as pay-as-you-go.)
    redis.call('HSET', rec, 'held', 0)
    held = 0
  end
  if not unlimited and cost > remaining - held then
    if f[4] == '1' then
      outcome = 'payg'
    else
      return reply('insufficient', remaining, rl_limit, rl_remaining, rl_reset, 0)
    end
  end
  if cost > 0 then
    local ttl = tonumber(ARGV[4])
    -- No TTL on the set: it would drop holds the record still counts. Each hold expires
    -- by its score; Redis deletes the set when its last hold is settled or released.
    redis.call('ZADD', KEYS[3], now_ms + ttl, hold_id .. ':' .. amount)
    held = redis.call('HINCRBY', rec, 'held', amount)
  end
elseif unlimited or cost <= 0 then
  if cost > 0 then redis.call('HINCRBY', rec, 'used', amount) end
elseif remaining >= cost then
  remaining = redis.call('HINCRBY', rec, 'remaining', '-' .. amount)
  redis.call('HINCRBY', rec, 'used', amount)
  if f[5] == 'subscription' then redis.call('HINCRBY', rec, 'cycle_used', amount) end
elseif f[4] == '1' then
  redis.call('HINCRBY', rec, 'used', amount)
  redis.call('HINCRBY', rec, 'payg_used', amount)
  outcome = 'payg'
else
  return reply('insufficient', remaining, rl_limit, rl_remaining, rl_reset, 0)
end

if new_tat then
  redis.call('SET', KEYS[2], string.format('%d', math.ceil(new_tat)), 'PX',
    math.ceil((new_tat - now_us) / 1000) + 1000)
end
if unlimited then remaining = -1 end
return reply(outcome, remaining, rl_limit, rl_remaining, rl_reset, 0)
