-- The library (after session_lib.lua) of consume.lua and refund.lua: window arithmetic,
-- idempotency records and the common reply. The window arithmetic mirrors src/quota.rs;
-- a test runs both over the same edge instants.
-- The policy is written in front of this library as literals (store/quota_scripts.rs): each
-- policy has functions of its own, and a call sends only what is its own.
--   FIELD           the policy's quota field
--   FEEDS           which of COUNTER_FIELDS the policy feeds (1 for the first), or 0
--   COUNTER_FIELDS  the field of every configured usage counter, reported in this order
--   ALLOWANCES      five per allowance, the policy's own first, then one per plan that
--                   overrides it: plan name ('' for the policy's own), kind (calendar |
--                   rolling | gcra), calendar unit | rolling length (s) | gcra interval
--                   (ms), limit (bucket size for gcra), default cost
-- KEYS[3]  the session's idempotency records (a hash; same hash tag as the session)
-- ARGV[2]  '1' if this request feeds the policy's counter, else '0'
-- ARGV[3]  this request's idempotency record, a field of KEYS[3], or '' for none
-- ARGV[4]  cost, or 0 for the default cost of the allowance in force
-- ARGV[5]  '1' for a shadow decision: consume never refuses (a shadow policy); refund gives
--          back the usage only (the consume was a shadow denial, which took no window)
-- The records of a session are one hash, so an erasure deletes them with one key. Redis 7.0
-- cannot expire a field, so each record carries its own expiry and the hash lives as long
-- as its longest-lived record.
local RECORDS, RECORD, COUNTER, SHADOW, COST_ARGUMENT
-- The allowance in force for the session (0: the policy's own, i: the i-th plan's), set
-- by load_session from the session's plan.
local ALLOWANCE, KIND, PARAM, LIMIT, COST

-- What consume and refund do first (the store writes the call in front of each body): this
-- call's session, record, counter, cost and mode.
local function quota_call(keys, args)
  session_call(keys, args)
  RECORDS, RECORD = keys[3], args[3] ~= '' and args[3] or nil
  COUNTER, SHADOW, COST_ARGUMENT = args[2] == '1' and FEEDS or 0, args[5] == '1', args[4]
end

-- A fixed-window state "<end>:<used>" as its end, its use and its end as text (which a new
-- state reuses), or nil when absent, malformed or lapsed at `now`.
local function live_window(state, now)
  if not state then return nil end
  local end_text, used = string.match(state, '^(%d+):(%d+)$')
  local window_end = tonumber(end_text)
  if not window_end or now >= window_end then return nil end
  return window_end, tonumber(used), end_text
end

-- The end of a window that starts now. A calendar window ends at the first instant of the
-- next unit; months by way of civil dates, leap years included.
local function fresh_window_end(now)
  if KIND ~= 'calendar' then return now + PARAM end
  if PARAM == 'minute' then return (math.floor(now / 60) + 1) * 60 end
  if PARAM == 'hour' then return (math.floor(now / 3600) + 1) * 3600 end
  if PARAM == 'day' then return (math.floor(now / 86400) + 1) * 86400 end
  -- Days since 1970-01-01 of a civil date, and back (H. Hinnant's algorithms).
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

  local y, m = civil_from_days(math.floor(now / 86400))
  if m == 12 then y, m = y + 1, 1 else m = m + 1 end
  return days_from_civil(y, m, 1) * 86400
end

-- The common reply: the decision, then the usage counters in configured order, taken from
-- `counts` (an HMGET reply) from position `from` on, as stored: the gateway reads numbers
-- from text as cheaply as from integers, and Lua does not.
local function reply(outcome, limit, remaining, reset_at, retry, replayed, cost, allowance, counts, from)
  local result = {outcome, limit, remaining, reset_at, retry, replayed, cost, allowance}
  for i = from, #counts do
    result[#result + 1] = counts[i] or 0
  end
  return result
end

-- The idempotency record's earlier answer, as a reply, or nil (also once it expired).
local function replay()
  if not RECORD then return nil end
  local prior = redis.call('HGET', RECORDS, RECORD)
  if not prior then return nil end
  local outcome, limit, remaining, reset_at, retry, expires, allowance = string.match(prior, '^([%a_]+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$')
  if not allowance or tonumber(expires) <= tonumber(redis.call('TIME')[1]) then return nil end
  local counts = {}
  if #COUNTER_FIELDS > 0 then
    counts = redis.call('HMGET', SESSION, unpack(COUNTER_FIELDS))
  end
  return reply(outcome, tonumber(limit), tonumber(remaining), tonumber(reset_at), tonumber(retry), 1, 0, tonumber(allowance), counts, 1)
end

-- Builds the reply from the decision and the session (as `load_session` read it, counters
-- updated) and, with an idempotency record, keeps it until the window resets.
local function answer(now, outcome, remaining, reset_at, retry, cost, session)
  if RECORD then
    local keep = math.max(reset_at - now, 60)
    redis.call('HSET', RECORDS, RECORD, table.concat({outcome, LIMIT, remaining, reset_at, retry, now + keep, ALLOWANCE}, ' '))
    if redis.call('TTL', RECORDS) < keep then
      redis.call('EXPIRE', RECORDS, keep)
    end
  end
  return reply(outcome, LIMIT, remaining, reset_at, retry, 0, cost, ALLOWANCE, session, 6)
end

-- The session as an HMGET reply: created, last active, version, plan, this policy's state,
-- then every configured usage counter from position 6 (the one this request feeds at
-- 5 + COUNTER); nil for an unknown session. Chooses the allowance of the session's plan:
-- the plan's when it overrides this policy, else the policy's own.
local function load_session()
  local session = redis.call('HMGET', SESSION, 'c', 'a', 'v', 't', FIELD, unpack(COUNTER_FIELDS))
  if not session[1] then return nil end
  ALLOWANCE = 0
  for i = 1, #ALLOWANCES / 5 - 1 do
    if ALLOWANCES[1 + 5 * i] == session[4] then
      ALLOWANCE = i
      break
    end
  end
  local at = 5 * ALLOWANCE
  KIND, PARAM, LIMIT = ALLOWANCES[at + 2], ALLOWANCES[at + 3], ALLOWANCES[at + 4]
  COST = tonumber(COST_ARGUMENT)
  if COST == 0 then COST = ALLOWANCES[at + 5] end
  return session
end

-- Moves the counter this request feeds by `delta` in `session` (never below zero), and
-- returns its field and new value for the change; nothing if there is no such counter or it
-- does not move.
local function count(session, delta)
  if COUNTER == 0 then return end
  local before = tonumber(session[5 + COUNTER]) or 0
  local after = math.max(0, before + delta)
  if after == before then return end
  session[5 + COUNTER] = after
  return COUNTER_FIELDS[COUNTER], string.format('%d', after)
end

local MISSING = {'missing', 0, 0, 0, 0, 0, 0, 0}
