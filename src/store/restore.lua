-- Loads a session back from the system of record (read-through), unless it exists or was
-- erased a moment ago (its row may have been fetched before the erasure deleted it).
-- KEYS[1]  the session hash          KEYS[2]  its tombstone (see erase.lua)
-- ARGV[1]  TTL in seconds, then field, value, field, value, ...
-- The version comes along, so later changes are newer than the stored row; nothing is
-- recorded in the outbox, the row is already durable.
-- Returns 1 when restored, 0 when the session was already there or was erased.
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
