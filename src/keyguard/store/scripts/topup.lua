-- keyguard: add quota to a key that still exists, unless the balance would pass a limit.
-- KEYS[1] = kg:{H}:rec, ARGV[1] = credits to add, ARGV[2] = the highest balance allowed
-- Returns the new balance, nil (no such key), or {balance now} (refused: over the limit).
-- Both numbers stay below 2^53 (the caller bounds them), where Lua's doubles are exact.
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local now = tonumber(redis.call('HGET', KEYS[1], 'remaining')) or 0
if now + tonumber(ARGV[1]) > tonumber(ARGV[2]) then
  return {string.format('%d', now)}
end
return redis.call('HINCRBY', KEYS[1], 'remaining', ARGV[1])
