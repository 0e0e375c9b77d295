-- Creates a session under a fresh id, never over an existing one.
-- KEYS[1]  the new session hash
-- ARGV[1]  session TTL in seconds
-- Returns false if the key exists (the caller draws another id), else the creation time
-- in Unix seconds, read from Redis so every gateway agrees on the clock.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local now = redis.call('TIME')[1]
redis.call('HSET', KEYS[1], 'c', now, 'a', now)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return tonumber(now)
