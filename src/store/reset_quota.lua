-- Starts a policy's current window afresh for one session (an operator's reset): its state
-- goes, so the next consume opens a new window with the whole limit. Usage counters are
-- lifetime statistics and stay. Written behind like any change; repeating it is harmless.
-- ARGV: the session id (session_lib.lua), then
-- ARGV[2]  the policy's quota field
-- Returns false for an unknown session, else 1.
if redis.call('EXISTS', SESSION) == 0 then
  return false
end
local _, now_ms = clock()
redis.call('HDEL', SESSION, ARGV[2])
write_change({}, nil, now_ms, false)
return 1
