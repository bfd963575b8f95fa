-- keyguard: add usage counted locally for an unlimited key, unless it was revoked.
-- KEYS[1] = kg:{H}:rec, ARGV[1] = units
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HINCRBY', KEYS[1], 'used', ARGV[1])
end
return -1
