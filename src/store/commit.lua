-- Commits a gateway-mode reservation: consume.lua took COST from the window without
-- counting usage, the upstream has now answered with a committing status, so the usage
-- counter moves (and the change goes to the outbox like any other).
-- Arguments: session_lib.lua; ARGV[5] the usage counter field, ARGV[6] the cost.
-- Returns 1, or 0 when the session has gone meanwhile.
local COUNTER, COST = ARGV[5], tonumber(ARGV[6])
if redis.call('EXISTS', SESSION) == 0 then return 0 end
local used = tonumber(redis.call('HGET', SESSION, COUNTER)) or 0
local _, now_ms = clock()
write_change({COUNTER, used + COST}, nil, now_ms, false)
return 1
