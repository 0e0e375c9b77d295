-- Prepended to every script that changes a session. The calling convention is shared:
-- KEYS[1]  the session hash            KEYS[2]  the outbox (dirty set) of its shard
-- ARGV[1]  the session id              ARGV[2]  session TTL in seconds
-- ARGV[3]  touch interval in seconds   ARGV[4]  '1' to record changes in the outbox
-- Script-specific arguments follow from ARGV[5].
local SESSION, OUTBOX = KEYS[1], KEYS[2]
local SESSION_ID, TTL, TOUCH_INTERVAL = ARGV[1], ARGV[2], tonumber(ARGV[3])
local USE_OUTBOX = ARGV[4] == '1'

-- Redis's clock, so every gateway agrees: Unix seconds and milliseconds.
local function clock()
  local t = redis.call('TIME')
  local seconds = tonumber(t[1])
  return seconds, seconds * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Every change bumps the session's version and records its flush obligation, atomically
-- with the change. The outbox holds each dirty session once (scored by when it first
-- became dirty), so many changes coalesce into one row for the flusher.
-- The version is at least the clock in milliseconds: after Redis is restored from an older
-- backup its versions are behind the rows already written, and the system of record keeps
-- only newer versions; the clock has moved on since, so the next change still wins.
local function changed(now_ms)
  local version = tonumber(redis.call('HGET', SESSION, 'v')) or 0
  redis.call('HSET', SESSION, 'v', string.format('%d', math.max(version + 1, now_ms)))
  if USE_OUTBOX then
    redis.call('ZADD', OUTBOX, 'NX', now_ms, SESSION_ID)
  end
end

-- Records activity when last_active is older than the touch interval, sliding the TTL;
-- a burst of requests costs one write per interval. Returns whether it wrote.
local function touch(last_active, now)
  if now - (tonumber(last_active) or 0) >= TOUCH_INTERVAL then
    redis.call('HSET', SESSION, 'a', now)
    redis.call('EXPIRE', SESSION, TTL)
    return true
  end
  return false
end
