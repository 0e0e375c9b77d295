-- Replaces a session's preferences and records the activity.
-- ARGV: the session id (session_lib.lua), then
-- ARGV[2]  the preferences as compact JSON; '' means the default {} and stores nothing
-- Returns false for an unknown session, else the activity time in Unix seconds.
if redis.call('EXISTS', SESSION) == 0 then
  return false
end
local now, now_ms = clock()
local writes = {'a', now}
if ARGV[2] == '' then
  redis.call('HDEL', SESSION, 'p')
else
  writes[3], writes[4] = 'p', ARGV[2]
end
write_change(writes, nil, now_ms, true)
return now
