-- keyguard: change fields of a key record only if it still exists, so an edit
-- racing a revoke can never resurrect a half record.
-- KEYS[1] = kg:{H}:rec, ARGV = field, value, field, value, ...
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
