-- Replaces a session's preferences and records the activity.
-- ARGV: the common four (session_lib.lua), then
-- ARGV[5]  the preferences as compact JSON; '' means the default {} and stores nothing
-- Returns false for an unknown session, else the activity time in Unix seconds.
if redis.call('EXISTS', SESSION) == 0 then
  return false
end
local now, now_ms = clock()
if ARGV[5] == '' then
  redis.call('HDEL', SESSION, 'p')
  redis.call('HSET', SESSION, 'a', now)
else
  redis.call('HSET', SESSION, 'a', now, 'p', ARGV[5])
end
redis.call('EXPIRE', SESSION, TTL)
changed(now_ms)
return now
