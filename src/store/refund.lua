-- Gives COST back to one quota policy of a session (the upstream work failed): the
-- current window's use and the usage counter go down, never below zero. A lapsed window
-- has nothing to give back. Idempotent with a record key, like consume.lua.
-- Arguments: session_lib.lua and quota_lib.lua. Returns consume.lua's shape with outcome
-- refunded | missing.
local prior = replay()
if prior then return prior end
local last_active, state, usage = load_session()
if not last_active then return MISSING end
local now, now_ms = clock()

local remaining, reset_at
if KIND == 'gcra' then
  local interval = tonumber(PARAM)
  local tat = math.max(tonumber(state) or now_ms, now_ms)
  if tat > now_ms then
    tat = math.max(now_ms, tat - COST * interval)
    redis.call('HSET', SESSION, FIELD, string.format('%d', tat))
  end
  remaining = math.floor((interval * LIMIT - (tat - now_ms)) / interval)
  reset_at = math.ceil(tat / 1000)
else
  local window_end, used = live_window(state, now)
  if window_end then
    used = math.max(0, used - COST)
    redis.call('HSET', SESSION, FIELD, window_end .. ':' .. used)
  else
    window_end, used = fresh_window_end(now), 0
  end
  remaining = LIMIT - used
  reset_at = window_end
end

if COUNTER ~= '' and usage[COUNTER] > 0 then
  usage[COUNTER] = math.max(0, usage[COUNTER] - COST)
  redis.call('HSET', SESSION, COUNTER, usage[COUNTER])
end
touch(last_active, now)
changed(now_ms)
return answer(now, 'refunded', remaining, reset_at, 0, usage)
