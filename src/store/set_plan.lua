-- Puts a session on a plan, or on none (an operator's change). Windows already open keep
-- what they counted: the new plan's allowance applies to them from the next request on.
-- Written behind like any change.
-- ARGV: the session id (session_lib.lua), then
-- ARGV[2]  the plan's name, or '' for none
-- Returns false for an unknown session, else 1.
if redis.call('EXISTS', SESSION) == 0 then
  return false
end
local _, now_ms = clock()
if ARGV[2] == '' then
  redis.call('HDEL', SESSION, 't')
  write_change({}, nil, now_ms, false)
else
  write_change({'t', ARGV[2]}, nil, now_ms, false)
end
return 1
