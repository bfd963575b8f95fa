-- keyguard: add quota to a key that still exists. KEYS[1] = kg:{H}:rec, ARGV[1] = units
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
return redis.call('HINCRBY', KEYS[1], 'remaining', ARGV[1])
