-- POST .../quota/bench/consume for existing sessions (the bench policy never runs out).
dofile(os.getenv("WRK_DIR") .. "/ids.lua")
local auth = "Bearer " .. os.getenv("SERVICE_TOKEN")
request = function()
  local path = "/internal/v1/sessions/" .. session_id() .. "/quota/bench/consume"
  return wrk.format("POST", path, { ["Authorization"] = auth })
end
