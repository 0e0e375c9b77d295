-- Gives `cost` back to one quota policy of a session (the upstream work failed): the
-- current window's use and the usage counter go down, never below zero. A lapsed window
-- has nothing to give back. Idempotent with a record key, like consume.lua.
-- KEYS and ARGV as consume.lua. Returns the same shape with outcome refunded | missing.
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

local remaining, reset_at
if kind == 'gcra' then
  local interval = tonumber(param)
  local tat = math.max(tonumber(fields[3]) or ms, ms)
  if tat > ms then
    tat = math.max(ms, tat - cost * interval)
    redis.call('HSET', session, ARGV[3], string.format('%d', tat))
  end
  remaining = math.floor((interval * limit - (tat - ms)) / interval)
  reset_at = math.ceil(tat / 1000)
else
  local window_end, used = live_window(fields[3], now)
  if window_end then
    used = math.max(0, used - cost)
    redis.call('HSET', session, ARGV[3], window_end .. ':' .. used)
  else
    window_end = kind == 'calendar' and calendar_end(now, param) or now + tonumber(param)
    used = 0
  end
  remaining = limit - used
  reset_at = window_end
end

if counter ~= '' and usage[counter] > 0 then
  usage[counter] = math.max(0, usage[counter] - cost)
  redis.call('HSET', session, counter, usage[counter])
end
touch(session, fields[2], now, ARGV[1], tonumber(ARGV[2]))
return answer(record_key, now, 'refunded', limit, remaining, reset_at, 0, usage)
