-- Settles claimed sessions of one shard after a flush attempt.
-- KEYS[1]  the shard's outbox        KEYS[2]  the shard's in-flight set
-- ARGV[1]  the lease deadline the claim returned
-- ARGV[2]  'ack' (written: forget them) or 'retry' (not written: back to the outbox)
-- ARGV[3..] session ids
-- Only entries still held under this lease are touched: if the lease expired and another
-- flusher re-claimed a session, that flusher owns it now.
local OUTBOX, INFLIGHT = KEYS[1], KEYS[2]
local deadline, mode = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local settled = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', INFLIGHT, id) == deadline then
    redis.call('ZREM', INFLIGHT, id)
    if mode == 'retry' then
      redis.call('ZADD', OUTBOX, 'NX', now_ms, id)
    end
    settled = settled + 1
  end
end
return settled
