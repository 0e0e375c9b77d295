-- GET /api/session/info with the session cookie of an existing session.
dofile(os.getenv("WRK_DIR") .. "/ids.lua")
request = function()
  return wrk.format("GET", "/api/session/info", { ["Cookie"] = "concept_session=" .. session_id() })
end
