-- Erases a session ("forget me"): its hash, its idempotency records, and its place in the
-- shard's outbox and in-flight set, in one step. A tombstone stays behind for a while:
-- a read-through that fetched the session from the system of record just before its row
-- was deleted there must not restore it afterwards (restore.lua checks the tombstone).
-- KEYS[1]  the session hash          KEYS[2]  its idempotency records
-- KEYS[3]  the shard's outbox        KEYS[4]  the shard's in-flight set
-- KEYS[5]  the tombstone
-- ARGV[1]  the session id            ARGV[2]  how long the tombstone stays, in seconds
-- Returns 1 when the session was there, 0 when it was gone already.
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('SET', KEYS[5], '1', 'EX', ARGV[2])
return existed
