-- Claims a batch of dirty sessions of one shard for flushing, with their current state.
-- KEYS[1]  the shard's outbox (dirty set, scored by when each session became dirty)
-- KEYS[2]  the shard's in-flight set (scored by lease deadline, Unix ms)
-- ARGV[1]  key prefix of the shard's sessions ("sg:{<shard>}:")
-- ARGV[2]  batch size            ARGV[3]  lease in milliseconds
-- First returns expired leases (a flusher that died holding them) to the outbox, then moves
-- the oldest dirty sessions to in-flight under a new lease. Session keys are built from the
-- prefix: they share the shard's hash tag, hence its slot.
-- Returns {lease_deadline, id1, fields1, id2, fields2, ...} (fields as HGETALL); sessions
-- that expired meanwhile are dropped from the outbox, there is nothing left to write.
local OUTBOX, INFLIGHT = KEYS[1], KEYS[2]
local prefix, batch, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

for _, id in ipairs(redis.call('ZRANGEBYSCORE', INFLIGHT, '-inf', now_ms, 'LIMIT', 0, batch)) do
  redis.call('ZREM', INFLIGHT, id)
  redis.call('ZADD', OUTBOX, 'NX', now_ms, id)
end

local deadline = now_ms + lease
local reply = {deadline}
for _, id in ipairs(redis.call('ZRANGE', OUTBOX, 0, batch - 1)) do
  redis.call('ZREM', OUTBOX, id)
  local fields = redis.call('HGETALL', prefix .. id)
  if #fields > 0 then
    redis.call('ZADD', INFLIGHT, deadline, id)
    reply[#reply + 1] = id
    reply[#reply + 1] = fields
  end
end
return reply
