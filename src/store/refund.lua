-- Gives COST back to one quota policy of a session (the upstream work failed): the
-- current window's use and the usage counter go down, never below zero. A lapsed window
-- has nothing to give back, nor has a shadow denial (SHADOW: only the usage goes back).
-- Idempotent with a record key, like consume.lua.
-- Arguments: session_lib.lua and quota_lib.lua. Returns consume.lua's shape with outcome
-- refunded | missing.
local prior = replay()
if prior then return prior end
local session = load_session()
if not session then return MISSING end
local last_active, version, state = session[2], session[3], session[5]
local now, now_ms = clock()

local remaining, reset_at
local writes = {}
if KIND == 'gcra' then
  local interval = PARAM
  local tat = math.max(tonumber(state) or now_ms, now_ms)
  if tat > now_ms and not SHADOW then
    tat = math.max(now_ms, tat - COST * interval)
    writes[1], writes[2] = FIELD, string.format('%d', tat)
  end
  remaining = math.floor((interval * LIMIT - (tat - now_ms)) / interval)
  reset_at = math.ceil(tat / 1000)
else
  local window_end, used, end_text = live_window(state, now)
  if window_end then
    if not SHADOW then
      used = math.max(0, used - COST)
      writes[1], writes[2] = FIELD, string.format('%s:%d', end_text, used)
    end
  else
    window_end, used = fresh_window_end(now), 0
  end
  remaining = LIMIT - used
  reset_at = window_end
end

local counter, value = count(session, -COST)
if counter then
  writes[#writes + 1] = counter
  writes[#writes + 1] = value
end
local touched = touch_due(last_active, now)
if touched then
  writes[#writes + 1] = 'a'
  writes[#writes + 1] = now
end
write_change(writes, version, now_ms, touched)
return answer(now, 'refunded', remaining, reset_at, 0, COST, session)
