-- keyguard: the metered step of one decision, atomically.
-- KEYS[1] = kg:{H}:rec (key record hash), KEYS[2] = kg:{H}:rl (GCRA state)
-- ARGV[1] = cost (units), ARGV[2] = rpm (0 = no rate limit)
-- Returns {outcome, remaining, rl_limit, rl_remaining, rl_reset_ms, retry_after_ms}
-- Time comes from Redis so every replica agrees on cycles and rate limits.
local rec = KEYS[1]
local f = redis.call('HMGET', rec, 'status', 'unlimited', 'remaining', 'payg', 'type',
  'cycle_end', 'cycle_seconds', 'cycle_quota')
if not f[1] then return {'gone', -1, 0, 0, 0, 0} end
if f[1] ~= 'active' then return {'disabled', -1, 0, 0, 0, 0} end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local unlimited = f[2] == '1'
local remaining = tonumber(f[3]) or 0

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

-- GCRA with a burst of one minute's allowance: at most rpm requests at once,
-- then one every 60/rpm seconds. The state is only written when allowed.
local rl_limit, rl_remaining, rl_reset, new_tat = 0, 0, 0, nil
if rpm > 0 then
  local interval = 60000 / rpm
  local tat = tonumber(redis.call('GET', KEYS[2])) or now_ms
  if tat < now_ms then tat = now_ms end
  new_tat = tat + interval
  local allow_at = new_tat - 60000
  if now_ms < allow_at then
    local reset = math.ceil(tat - now_ms)
    return {'rate_limited', remaining, rpm, 0, reset, math.ceil(allow_at - now_ms)}
  end
  rl_limit = rpm
  rl_remaining = math.floor((60000 - (new_tat - now_ms)) / interval)
  rl_reset = math.ceil(new_tat - now_ms)
end

local outcome = 'ok'
if unlimited or cost <= 0 then
  if cost > 0 then redis.call('HINCRBY', rec, 'used', cost) end
elseif remaining >= cost then
  remaining = redis.call('HINCRBY', rec, 'remaining', -cost)
  redis.call('HINCRBY', rec, 'used', cost)
  if f[5] == 'subscription' then redis.call('HINCRBY', rec, 'cycle_used', cost) end
elseif f[4] == '1' then
  redis.call('HINCRBY', rec, 'used', cost)
  redis.call('HINCRBY', rec, 'payg_used', cost)
  outcome = 'payg'
else
  return {'insufficient', remaining, rl_limit, rl_remaining, rl_reset, 0}
end

if new_tat then
  redis.call('SET', KEYS[2], string.format('%d', math.ceil(new_tat)), 'PX',
    math.ceil(new_tat - now_ms) + 1000)
end
if unlimited then remaining = -1 end
return {outcome, remaining, rl_limit, rl_remaining, rl_reset, 0}
