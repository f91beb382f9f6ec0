-- wrk script: POST {"text": <sentence>} cycling through the sentences of the TSV file named by $SENTENCES
-- (header `text<TAB>label`), so the load is ragged: every request its own length, as users send them.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local bodies = {}
local header = true
for line in io.lines(os.getenv("SENTENCES")) do
  if not header and line ~= "" then
    local text = line:match("^([^\t]*)")
    text = text:gsub("\\", "\\\\"):gsub('"', '\\"')
    bodies[#bodies + 1] = '{"text": "' .. text .. '"}'
  end
  header = false
end
assert(#bodies > 0, "no sentences in " .. os.getenv("SENTENCES"))

local next_body = 0
function request()
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[next_body])
end
