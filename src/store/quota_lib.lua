-- Prepended (after session_lib.lua) to consume.lua and refund.lua: window arithmetic,
-- idempotency records and the common reply. The window arithmetic mirrors src/quota.rs;
-- a test runs both over the same edge instants.
-- KEYS[3]  optional idempotency record (same hash tag as the session)
-- ARGV[5]  quota field             ARGV[6]  kind: calendar | rolling | gcra
-- ARGV[7]  calendar unit | rolling length (s) | gcra interval (ms)
-- ARGV[8]  limit (bucket size for gcra)   ARGV[9]  cost
-- ARGV[10] the usage counter field this request feeds, or ''
-- ARGV[11...] the field of every configured usage counter, reported in this order
local RECORD = KEYS[3]
local FIELD, KIND, PARAM = ARGV[5], ARGV[6], ARGV[7]
local LIMIT, COST, COUNTER = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
local COUNTERS = {unpack(ARGV, 11)}

-- Days since 1970-01-01 of a civil date, and back (H. Hinnant's algorithms), so month
-- windows end at the first instant of the next month, leap years included.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

-- End (exclusive, Unix seconds) of the calendar window holding `now`.
local function calendar_end(now, unit)
  if unit == 'minute' then return (math.floor(now / 60) + 1) * 60 end
  if unit == 'hour' then return (math.floor(now / 3600) + 1) * 3600 end
  if unit == 'day' then return (math.floor(now / 86400) + 1) * 86400 end
  local y, m = civil_from_days(math.floor(now / 86400))
  if m == 12 then y, m = y + 1, 1 else m = m + 1 end
  return days_from_civil(y, m, 1) * 86400
end

-- A fixed-window state "<end>:<used>", or nil when absent, malformed or lapsed at `now`.
local function live_window(state, now)
  if not state then return nil end
  local window_end, used = string.match(state, '^(%d+):(%d+)$')
  window_end = tonumber(window_end)
  if not window_end or now >= window_end then return nil end
  return window_end, tonumber(used)
end

-- The end of a window that starts now.
local function fresh_window_end(now)
  if KIND == 'calendar' then return calendar_end(now, PARAM) end
  return now + tonumber(PARAM)
end

-- The configured usage counters, by field, from an HMGET reply that lists them from `from`.
local function counts(fields, from)
  local usage = {}
  for i, field in ipairs(COUNTERS) do
    usage[field] = tonumber(fields[from + i - 1]) or 0
  end
  return usage
end

-- The common reply: the decision, then the usage counters in configured order.
local function reply(outcome, limit, remaining, reset_at, retry, replayed, usage)
  local result = {outcome, limit, remaining, reset_at, retry, replayed}
  for _, field in ipairs(COUNTERS) do
    result[#result + 1] = usage[field]
  end
  return result
end

-- The idempotency record's earlier answer, as a reply, or nil.
local function replay()
  if not RECORD then return nil end
  local prior = redis.call('GET', RECORD)
  if not prior then return nil end
  local outcome, limit, remaining, reset_at, retry = string.match(prior, '^(%a+) (%d+) (%d+) (%d+) (%d+)$')
  local usage = {}
  if #COUNTERS > 0 then
    usage = counts(redis.call('HMGET', SESSION, unpack(COUNTERS)), 1)
  end
  return reply(outcome, tonumber(limit), tonumber(remaining), tonumber(reset_at), tonumber(retry), 1, usage)
end

-- Builds the reply and, with an idempotency record, keeps it until the window resets.
local function answer(now, outcome, remaining, reset_at, retry, usage)
  if RECORD then
    local keep = math.max(reset_at - now, 60)
    redis.call('SET', RECORD, table.concat({outcome, LIMIT, remaining, reset_at, retry}, ' '), 'EX', keep)
  end
  return reply(outcome, LIMIT, remaining, reset_at, retry, 0, usage)
end

-- The session's activity, version, quota state and usage counters (by field); nil for an
-- unknown session. COUNTER, when set, is one of COUNTERS (the store passes every configured
-- counter), so its current value is known and a change can be written with one HSET.
local function load_session()
  local fields = redis.call('HMGET', SESSION, 'c', 'a', 'v', FIELD, unpack(COUNTERS))
  if not fields[1] then return nil end
  return fields[2], fields[3], fields[4], counts(fields, 5)
end

local MISSING = {'missing', 0, 0, 0, 0, 0}
