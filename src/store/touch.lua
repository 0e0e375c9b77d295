-- Reads a session and records activity on it, in one step.
-- ARGV: the session id (session_lib.lua), then the fields to read, 'c' and 'a' first.
-- Returns false for an unknown (or expired) session, else their HMGET after the touch.
local fields = redis.call('HMGET', SESSION, unpack(ARGV, 2))
if not fields[1] then
  return false
end
local now, now_ms = clock()
if touch_due(fields[2], now) then
  write_change({'a', now}, nil, now_ms, true)
  fields[2] = tostring(now)
end
return fields
