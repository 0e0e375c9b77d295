-- Replaces a session's preferences and records the activity.
-- KEYS[1]  the session hash
-- ARGV[1]  session TTL in seconds
-- ARGV[2]  the preferences as compact JSON; '' means the default {} and stores nothing
-- Returns false for an unknown session, else the activity time in Unix seconds.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local now = redis.call('TIME')[1]
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'p')
  redis.call('HSET', KEYS[1], 'a', now)
else
  redis.call('HSET', KEYS[1], 'a', now, 'p', ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return tonumber(now)
