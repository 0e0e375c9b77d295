-- Creates a session under a fresh id, never over an existing one.
-- ARGV: the common four (session_lib.lua), then
-- ARGV[5]  the outbox size at which creation stops (backpressure; see the flush module)
-- Returns false if the key exists (the caller draws another id), 'backlog' when the outbox
-- is full, else the creation time in Unix seconds.
if redis.call('EXISTS', SESSION) == 1 then
  return false
end
if USE_OUTBOX and redis.call('ZCARD', OUTBOX) >= tonumber(ARGV[5]) then
  return 'backlog'
end
local now, now_ms = clock()
redis.call('HSET', SESSION, 'c', now, 'a', now)
redis.call('EXPIRE', SESSION, TTL)
changed(now_ms)
return now
