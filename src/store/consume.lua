-- Consumes COST from one quota policy of a session, atomically: the window check, the
-- window update, the usage counter and the activity touch are one script, one round trip,
-- and their writes one HSET.
-- A refused request changes no counter (counters stop at the limit).
-- Arguments: session_lib.lua and quota_lib.lua.
-- Returns {outcome, limit, remaining, reset_at, retry_after, replayed, counters...} with
-- outcome granted | denied | missing.
local prior = replay()
if prior then return prior end
local session = load_session()
if not session then return MISSING end
local last_active, version, state = session[2], session[3], session[4]
local now, now_ms = clock()

local granted, new_state, remaining, reset_at, retry
if KIND == 'gcra' then
  local interval = tonumber(PARAM)
  local capacity = interval * LIMIT
  local tat = math.max(tonumber(state) or now_ms, now_ms)
  local new_tat = tat + COST * interval
  granted = new_tat - now_ms <= capacity
  if granted then
    tat = new_tat
    new_state = string.format('%d', tat)
  end
  remaining = math.floor((capacity - (tat - now_ms)) / interval)
  reset_at = math.ceil(tat / 1000)
  retry = granted and 0 or math.ceil((new_tat - now_ms - capacity) / 1000)
else
  local window_end, used = live_window(state, now)
  if not window_end then
    window_end, used = fresh_window_end(now), 0
  end
  granted = used + COST <= LIMIT
  if granted then
    used = used + COST
    new_state = window_end .. ':' .. used
  end
  remaining = LIMIT - used
  reset_at = window_end
  retry = granted and 0 or window_end - now
end

local writes = {}
if granted then
  writes[1], writes[2], writes[3], writes[4] = FIELD, new_state, count(session, COST)
end
local touched = touch_due(last_active, now)
if touched then
  writes[#writes + 1] = 'a'
  writes[#writes + 1] = now
end
if granted or touched then
  write_change(writes, version, now_ms, touched)
end
return answer(now, granted and 'granted' or 'denied', remaining, reset_at, retry, session)
