-- Shared by the wrk scripts: session ids from the file named by $SESSION_IDS, one per line,
-- handed out round-robin so every request reads an existing session.
local ids = {}
for line in io.lines(os.getenv("SESSION_IDS")) do
  ids[#ids + 1] = line
end
local next_id = 0
function session_id()
  next_id = next_id % #ids + 1
  return ids[next_id]
end
