-- keyguard: settle the holds of one API key, atomically and at most once each.
-- KEYS[1] = kg:{H}:rec, KEYS[2] = kg:{H}:holds, KEYS[3] = kg:{H}:settled (hold ids
-- settled recently, score = when), KEYS[4] = kg:{H}:tpm (GCRA state, tokens),
-- KEYS[5] = kg:{H}:use:<UTC date> (today's usage history: "<model>|<kind>" -> count)
-- KEYS[6] = kg:{H}:expired (holds released unsettled by spend.lua: hold id, score = when)
-- ARGV[1] = how long (ms) a settled id is remembered, so a repeated delivery charges once
-- ARGV[2] = how long (ms) a day of usage history is kept (0: none is written)
-- then one value per hold, its fields separated by single spaces: id, credits held
--   (0: none), credits to charge, uncached input tokens, cached input tokens, output
--   tokens, model (price pattern; last, so it may hold anything)
-- Returns one word per hold: 'settled' (its hold released), 'unheld' (no open hold:
-- none was placed, or it had expired; charged all the same), 'duplicate' (charged before);
-- then, when the balance crossed the key's low-balance threshold (alert_below: credits,
-- or a percentage of the quota) downwards, 'alert|<key id>|<remaining>|<threshold>', once
-- per crossing; or 'rearm|<key id>' when it is back above it (after a top-up or a reset).
-- Once per hold id: a request that held credits is settled while its hold is open, or
-- while spend.lua remembers it as expired (a day); either is gone once it is settled, so
-- a repeated delivery finds nothing to settle, however late it comes. Only requests that
-- held nothing (an unlimited key, a degraded allow) have their ids remembered in KEYS[3],
-- for ARGV[1] ms.
-- The batch is read with one ZMSCORE per kind of lookup it needs (open holds, expired
-- ones, ids settled before) and written with one call per field: the per-hold work is Lua
-- arithmetic, so a batch costs Redis little more than one hold (the caller sends at most
-- 1,000 holds).
local rec = KEYS[1]
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep_ms = tonumber(ARGV[1])
local history_ms = tonumber(ARGV[2])
local f = redis.call('HMGET', rec, 'id', 'unlimited', 'payg', 'type', 'tpm', 'remaining')
local exists = f[1] ~= false
local out = {}
local tokens = 0

-- One array per field (a table per hold would cost Redis more than the parsing).
local ids, members, helds, charges, tins, cacheds, touts, models = {}, {}, {}, {}, {}, {}, {}, {}
local match = string.match
for i = 3, #ARGV do
  local n = i - 2
  local id, held, charge, tin, cached, tout, model =
    match(ARGV[i], '^(%S+) (%d+) (%d+) (%d+) (%d+) (%d+) (.*)$')
  if not id then return redis.error_reply('ERR keyguard settle: unreadable item') end
  ids[n] = id
  -- As spend.lua wrote the member: the id, ':', the amount as the caller sent it.
  members[n] = id .. ':' .. held
  helds[n], charges[n], models[n] = tonumber(held), tonumber(charge), model
  tins[n], cacheds[n], touts[n] = tonumber(tin), tonumber(cached), tonumber(tout)
end
-- Which holds are open; of the others, which expired unsettled; of the requests that held
-- nothing, which were settled before. One ZMSCORE each, only when there is anything to ask.
local open, late, before = {}, {}, {}
local held_ids, held_at, unheld_ids, unheld_at = {}, {}, {}, {}
for n = 1, #ids do
  if helds[n] > 0 then
    held_ids[#held_ids + 1] = members[n]
    held_at[#held_ids] = n
  else
    unheld_ids[#unheld_ids + 1] = ids[n]
    unheld_at[#unheld_ids] = n
  end
end
-- Sets into[at[i]] for each members[i] that the sorted set `key` holds (one ZMSCORE).
local function mark(key, members, at, into)
  if #members == 0 then return end
  local scores = redis.call('ZMSCORE', key, unpack(members))
  for i = 1, #members do
    if scores[i] then into[at[i]] = true end
  end
end
mark(KEYS[2], held_ids, held_at, open)
local gone, gone_at = {}, {}
for i = 1, #held_ids do
  if not open[held_at[i]] then
    gone[#gone + 1] = ids[held_at[i]]
    gone_at[#gone] = held_at[i]
  end
end
mark(KEYS[6], gone, gone_at, late)
mark(KEYS[3], unheld_ids, unheld_at, before)

local quota = f[2] ~= '1'
local remaining = tonumber(f[6]) or 0
local seen, settled, released = {}, {}, {}
-- Sums of whole numbers: exact in Lua's doubles below 2^53 (9 * 10^15; a price is at most
-- 10^15, a call at most 1,000 holds); int() writes them without an exponent.
local freed, used, taken, payg_used, cycle_used = 0, 0, 0, 0, 0
local tin_sum, cached_sum, tout_sum = 0, 0, 0
local history = {}
local function int(n) return string.format('%d', n) end
local function count(field, n)
  if n > 0 then history[field] = (history[field] or 0) + n end
end

local expired_settled = {}
for n = 1, #ids do
  local id = ids[n]
  local amount = helds[n]
  if seen[id] or before[n] or (amount > 0 and not open[n] and not late[n]) then
    out[n] = 'duplicate'
  else
    seen[id] = true
    local charge = charges[n]
    if open[n] then
      released[#released + 1] = members[n]
      freed = freed + amount
      out[n] = 'settled'
    else
      if late[n] then
        expired_settled[#expired_settled + 1] = id
      else
        settled[#settled + 1] = now_ms
        settled[#settled + 1] = id
      end
      out[n] = 'unheld'
    end
    if exists then
      if charge > 0 then
        used = used + charge
        if quota then
          if f[3] == '1' and charge > remaining then
            -- Pay-as-you-go: what the balance cannot cover is billed as payg.
            local from_quota = math.max(remaining, 0)
            remaining = remaining - from_quota
            taken = taken + from_quota
            payg_used = payg_used + charge - from_quota
          else
            -- May go below zero by what a request cost beyond its hold (documented).
            remaining = remaining - charge
            taken = taken + charge
          end
          if f[4] == 'subscription' then cycle_used = cycle_used + charge end
        end
      end
      local tin, cached, tout = tins[n], cacheds[n], touts[n]
      tin_sum, cached_sum, tout_sum = tin_sum + tin, cached_sum + cached, tout_sum + tout
      tokens = tokens + tin + cached + tout
      if history_ms > 0 then
        local model = models[n]
        count(model .. '|requests', 1)
        count(model .. '|input', tin)
        count(model .. '|cached', cached)
        count(model .. '|output', tout)
        count(model .. '|credits', charge)
      end
    end
  end
end

if #settled > 0 then
  redis.call('ZADD', KEYS[3], unpack(settled))
  redis.call('PEXPIRE', KEYS[3], keep_ms)
end
if #expired_settled > 0 then redis.call('ZREM', KEYS[6], unpack(expired_settled)) end
if #released > 0 then
  redis.call('ZREM', KEYS[2], unpack(released))
  redis.call('HINCRBY', rec, 'held', int(-freed))
end
if exists then
  if used > 0 then redis.call('HINCRBY', rec, 'used', int(used)) end
  if taken > 0 then redis.call('HINCRBY', rec, 'remaining', int(-taken)) end
  if payg_used > 0 then redis.call('HINCRBY', rec, 'payg_used', int(payg_used)) end
  if cycle_used > 0 then redis.call('HINCRBY', rec, 'cycle_used', int(cycle_used)) end
  if tin_sum > 0 then redis.call('HINCRBY', rec, 'tokens_in', int(tin_sum)) end
  if cached_sum > 0 then redis.call('HINCRBY', rec, 'cached_tokens', int(cached_sum)) end
  if tout_sum > 0 then redis.call('HINCRBY', rec, 'tokens_out', int(tout_sum)) end
  for field, n in pairs(history) do redis.call('HINCRBY', KEYS[5], field, int(n)) end
end

if exists and #out > 0 then
  redis.call('HSET', rec, 'last_used_at', string.format('%d', math.floor(now_ms / 1000)))
end
if #unheld_ids > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms - keep_ms) end
if history_ms > 0 and exists then redis.call('PEXPIRE', KEYS[5], history_ms) end

-- Low-balance alert: fire once when the balance falls below the threshold, re-arm once it
-- is back at or above it.
if exists and f[2] ~= '1' then
  local a = redis.call('HMGET', rec, 'alert_below', 'alert_armed', 'remaining', 'used',
    'payg_used', 'cycle_quota')
  local setting = a[1] or ''
  if setting ~= '' then
    local remaining = tonumber(a[3]) or 0
    local threshold = tonumber(string.match(setting, '^(%d+)$'))
    local percent = tonumber(string.match(setting, '^(%d+)%%$'))
    if percent then
      local base = tonumber(a[6]) or 0
      if f[4] ~= 'subscription' then
        base = remaining + (tonumber(a[4]) or 0) - (tonumber(a[5]) or 0)
      end
      threshold = math.floor(base * percent / 100)
    end
    if threshold and threshold > 0 then
      if a[2] ~= '0' and remaining < threshold then
        redis.call('HSET', rec, 'alert_armed', '0')
        out[#out + 1] = string.format('alert|%s|%d|%d', f[1], remaining, threshold)
      elseif a[2] == '0' and remaining >= threshold then
        redis.call('HSET', rec, 'alert_armed', '1')
        out[#out + 1] = 'rearm|' .. f[1]
      end
    end
  end
end

-- Tokens per minute: each token takes 60000/tpm ms of the minute's budget.
local tpm = tonumber(f[5]) or 0
if exists and tpm > 0 and tokens > 0 then
  local ttat = tonumber(redis.call('GET', KEYS[4])) or now_ms
  if ttat < now_ms then ttat = now_ms end
  ttat = ttat + math.ceil(tokens * 60000 / tpm)
  redis.call('SET', KEYS[4], string.format('%d', ttat), 'PX', ttat - now_ms + 1000)
end
return out
