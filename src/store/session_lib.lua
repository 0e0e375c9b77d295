-- The library of every function that changes a session, after the deployment's settings,
-- which the store writes in front as Lua literals: no call sends them, and Redis parses no
-- number for them (each conversion costs about as much as a short command):
--   TTL             the session TTL in seconds, as the string EXPIRE is given
--   TOUCH_INTERVAL  the touch interval in seconds
--   USE_OUTBOX      whether changes are recorded in the outbox
-- A library runs once, when Redis loads it (see store/lua.rs): what it defines costs a call
-- nothing, so it holds every function and constant, and a call only sets what is its own.
-- The calling convention is shared:
-- KEYS[1]  the session hash            KEYS[2]  the outbox (dirty set) of its shard
-- ARGV[1]  the session id
-- Function-specific arguments follow from ARGV[2].
local SESSION, OUTBOX, SESSION_ID

-- What every function on this library does first (the store writes the call in front of
-- each body): this call's session, its outbox and its id.
local function session_call(keys, args)
  SESSION, OUTBOX, SESSION_ID = keys[1], keys[2], args[1]
end

-- Redis's clock, so every gateway agrees: Unix seconds and milliseconds.
local function clock()
  local t = redis.call('TIME')
  local seconds = tonumber(t[1])
  return seconds, seconds * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether this request records activity ('a', and the TTL slid): last_active is older than
-- the touch interval, so a burst of requests costs one write per interval.
local function touch_due(last_active, now)
  return now - (tonumber(last_active) or 0) >= TOUCH_INTERVAL
end

-- Writes one change: `fields` (field, value, ...) and the next version in one HSET, the TTL
-- slid when `touched`, and the flush obligation in the outbox. The outbox holds each dirty
-- session once (scored by when it first became dirty), so many changes coalesce into one row
-- for the flusher. `version` is the one read with the session, or nil to read it here.
-- The version is at least the clock in milliseconds: after Redis is restored from an older
-- backup its versions are behind the rows already written, and the system of record keeps
-- only newer versions; the clock has moved on since, so the next change still wins.
-- Numbers reach Redis as text made here, once: Redis would turn every number argument into
-- text again, each at about the cost of a short command.
local function write_change(fields, version, now_ms, touched)
  version = tonumber(version or redis.call('HGET', SESSION, 'v')) or 0
  local stamp = string.format('%d', now_ms)
  fields[#fields + 1] = 'v'
  fields[#fields + 1] = version < now_ms and stamp or string.format('%d', version + 1)
  redis.call('HSET', SESSION, unpack(fields))
  if touched then
    redis.call('EXPIRE', SESSION, TTL)
  end
  if USE_OUTBOX then
    redis.call('ZADD', OUTBOX, 'NX', stamp, SESSION_ID)
  end
end
