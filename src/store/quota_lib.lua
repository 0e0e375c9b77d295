-- Shared by consume.lua and refund.lua (prepended at load time): the clock, window
-- arithmetic and the common reply. Kept identical to src/quota.rs, which the tests check.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

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

-- Records activity when last_active is older than the touch interval (see touch.lua).
local function touch(key, last_active, now, ttl, interval)
  if now - (tonumber(last_active) or 0) >= interval then
    redis.call('HSET', key, 'a', now)
    redis.call('EXPIRE', key, ttl)
  end
end

-- The idempotency record's earlier answer, as a reply, or nil.
local function replay(record_key, session)
  if not record_key then return nil end
  local prior = redis.call('GET', record_key)
  if not prior then return nil end
  local outcome, limit, remaining, reset_at, retry = string.match(prior, '^(%a+) (%d+) (%d+) (%d+) (%d+)$')
  local usage = redis.call('HMGET', session, 'g', 'r', 's')
  return {outcome, tonumber(limit), tonumber(remaining), tonumber(reset_at), tonumber(retry),
          tonumber(usage[1]) or 0, tonumber(usage[2]) or 0, tonumber(usage[3]) or 0, 1}
end

-- Builds the reply and, with an idempotency record, keeps it until the window resets.
local function answer(record_key, now, outcome, limit, remaining, reset_at, retry, usage)
  if record_key then
    local keep = math.max(reset_at - now, 60)
    redis.call('SET', record_key, table.concat({outcome, limit, remaining, reset_at, retry}, ' '), 'EX', keep)
  end
  return {outcome, limit, remaining, reset_at, retry, usage.g, usage.r, usage.s, 0}
end
