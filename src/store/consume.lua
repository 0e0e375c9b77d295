-- Consumes COST from one quota policy of a session, atomically: the window check, the
-- window update, the usage counter and the activity touch are one function call,
-- and their writes one HSET. The allowance is the one of the session's plan, read with it.
-- A refused request changes no counter (counters stop at the limit). A shadow policy
-- never refuses: it grants, counts the usage, moves the window only as enforcement would
-- have, and reports what enforcement would have answered (shadow_denied).
-- Arguments: session_lib.lua and quota_lib.lua.
-- Returns {outcome, limit, remaining, reset_at, retry_after, replayed, cost, allowance,
-- counters...} with outcome granted | denied | shadow_denied | missing.
local prior = replay()
if prior then return prior end
local session = load_session()
if not session then return MISSING end
local last_active, version, state = session[2], session[3], session[5]
local now, now_ms = clock()

local granted, new_state, remaining, reset_at, retry
if KIND == 'gcra' then
  local interval = PARAM
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
  local window_end, used, end_text = live_window(state, now)
  if not window_end then
    window_end, used = fresh_window_end(now), 0
  end
  granted = used + COST <= LIMIT
  if granted then
    used = used + COST
    new_state = string.format('%s:%d', end_text or window_end, used)
  end
  remaining = LIMIT - used
  reset_at = window_end
  retry = granted and 0 or window_end - now
end

local outcome = granted and 'granted' or (SHADOW and 'shadow_denied' or 'denied')
local writes = {}
if granted then
  writes[1], writes[2] = FIELD, new_state
end
if outcome ~= 'denied' then
  local counter, value = count(session, COST)
  if counter then
    writes[#writes + 1] = counter
    writes[#writes + 1] = value
  end
end
local touched = touch_due(last_active, now)
if touched then
  writes[#writes + 1] = 'a'
  writes[#writes + 1] = now
end
if #writes > 0 then
  write_change(writes, version, now_ms, touched)
end
return answer(now, outcome, remaining, reset_at, retry, outcome == 'denied' and 0 or COST, session)
