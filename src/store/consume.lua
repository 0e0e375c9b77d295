-- Consumes `cost` from one quota policy of a session, atomically: the window check, the
-- window update, the usage counter and the activity touch are one script, one round trip.
-- A refused request writes nothing (counters stop at the limit).
-- KEYS[1]  the session hash
-- KEYS[2]  optional idempotency record (same hash tag): a repeat returns the first answer
-- ARGV[1]  session TTL (s)        ARGV[2]  touch interval (s)
-- ARGV[3]  quota field            ARGV[4]  kind: calendar | rolling | gcra
-- ARGV[5]  calendar unit | rolling length (s) | gcra interval (ms)
-- ARGV[6]  limit (bucket size for gcra)   ARGV[7]  cost
-- ARGV[8]  usage counter field (g, r, s) or ''
-- Returns {outcome, limit, remaining, reset_at, retry_after, g, r, s, replayed}
-- with outcome granted | denied | missing.
local session, record_key = KEYS[1], KEYS[2]
local prior = replay(record_key, session)
if prior then return prior end

local fields = redis.call('HMGET', session, 'c', 'a', ARGV[3], 'g', 'r', 's')
if not fields[1] then return {'missing', 0, 0, 0, 0, 0, 0, 0, 0} end
local usage = {g = tonumber(fields[4]) or 0, r = tonumber(fields[5]) or 0, s = tonumber(fields[6]) or 0}
local kind, param = ARGV[4], ARGV[5]
local limit, cost, counter = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local ms = now_ms()
local now = math.floor(ms / 1000)

local granted, state, remaining, reset_at, retry
if kind == 'gcra' then
  local interval = tonumber(param)
  local capacity = interval * limit
  local tat = math.max(tonumber(fields[3]) or ms, ms)
  local new_tat = tat + cost * interval
  granted = new_tat - ms <= capacity
  if granted then
    tat = new_tat
    state = string.format('%d', tat)
  end
  remaining = math.floor((capacity - (tat - ms)) / interval)
  reset_at = math.ceil(tat / 1000)
  retry = granted and 0 or math.ceil((new_tat - ms - capacity) / 1000)
else
  local window_end, used = live_window(fields[3], now)
  if not window_end then
    window_end = kind == 'calendar' and calendar_end(now, param) or now + tonumber(param)
    used = 0
  end
  granted = used + cost <= limit
  if granted then
    used = used + cost
    state = window_end .. ':' .. used
  end
  remaining = limit - used
  reset_at = window_end
  retry = granted and 0 or window_end - now
end

if granted then
  redis.call('HSET', session, ARGV[3], state)
  if counter ~= '' then
    usage[counter] = redis.call('HINCRBY', session, counter, cost)
  end
end
touch(session, fields[2], now, ARGV[1], tonumber(ARGV[2]))
return answer(record_key, now, granted and 'granted' or 'denied', limit, remaining, reset_at, retry, usage)
