-- Reads a session and records activity on it, in one step.
-- KEYS[1]  the session hash
-- ARGV[1]  session TTL in seconds (slid on every recorded activity)
-- ARGV[2]  touch interval in seconds: last_active is rewritten only when older than this,
--          so a burst of requests costs one write, not one per request
-- Returns false for an unknown (or expired) session, else HMGET c a g r s p after the touch.
local fields = redis.call('HMGET', KEYS[1], 'c', 'a', 'g', 'r', 's', 'p')
if not fields[1] then
  return false
end
local now = tonumber(redis.call('TIME')[1])
if now - (tonumber(fields[2]) or 0) >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'a', now)
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  fields[2] = tostring(now)
end
return fields
