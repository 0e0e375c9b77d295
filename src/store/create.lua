-- Creates a session under a fresh id, never over an existing one.
-- KEYS[3]  the shard's in-flight set (sessions claimed by a flusher)
-- ARGV: the session id (session_lib.lua), then
-- ARGV[2]  the backlog at which creation stops (backpressure; see the flush module)
-- Returns false if the key exists (the caller draws another id), 'backlog' when the outbox
-- is full, else the creation time in Unix seconds.
if redis.call('EXISTS', SESSION) == 1 then
  return false
end
-- Claimed sessions count too: a flush attempt that fails puts them back, so the backlog
-- is dirty + in-flight (a session in both counts twice, which errs on the safe side).
if USE_OUTBOX and redis.call('ZCARD', OUTBOX) + redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[2]) then
  return 'backlog'
end
local now, now_ms = clock()
write_change({'c', now, 'a', now}, 0, now_ms, true)
return now
