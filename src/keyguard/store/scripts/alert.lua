-- keyguard: note a low-balance alert, or its end.
-- KEYS[1] = kg:{alerts}:stream (bounded), KEYS[2] = kg:{alerts}:below (ids below now)
-- ARGV[1] = 'alert' | 'rearm', ARGV[2] = key id, ARGV[3] = remaining, ARGV[4] = threshold,
-- ARGV[5] = the stream's approximate length bound
-- Returns how many keys are below their threshold now.
if ARGV[1] == 'alert' then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'key_id', ARGV[2],
    'remaining', ARGV[3], 'threshold', ARGV[4])
  redis.call('SADD', KEYS[2], ARGV[2])
elseif ARGV[1] == 'rearm' then
  redis.call('SREM', KEYS[2], ARGV[2])
end
return redis.call('SCARD', KEYS[2])
