-- POST /metered/generate through gateway mode, as existing sessions (bench never runs out).
dofile(os.getenv("WRK_DIR") .. "/ids.lua")
request = function()
  return wrk.format("POST", "/metered/generate", { ["X-Session-Id"] = session_id() })
end
