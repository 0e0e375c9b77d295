-- Reads a session and records activity on it, in one step.
-- ARGV: the common four (session_lib.lua).
-- Returns false for an unknown (or expired) session, else HMGET c a g r s p after the touch.
local fields = redis.call('HMGET', SESSION, 'c', 'a', 'g', 'r', 's', 'p')
if not fields[1] then
  return false
end
local now, now_ms = clock()
if touch(fields[2], now) then
  changed(now_ms)
  fields[2] = tostring(now)
end
return fields
