-- post.lua, plus: each wrk thread stops after N_PER_THREAD responses, so the total number
-- of requests is fixed (for instruction counts, which must compare equal work).
dofile(os.getenv("POST_LUA"))
local n = tonumber(os.getenv("N_PER_THREAD") or "3000")
local count = 0
function response(status, headers, body)
  count = count + 1
  if count >= n then wrk.thread:stop() end
end
