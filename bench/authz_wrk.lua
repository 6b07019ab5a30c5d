-- bench/authz_wrk.lua: wrk posts bench/authz.py's pre-built decision requests in turn.
-- AUTHZ_BODIES: a file of JSON bodies, one per line; AUTHZ_PATH: the URL path;
-- AUTHZ_AUTH: the Authorization header; AUTHZ_ITEMS: decisions per body (1 for /decide).
-- An answer counts as bad unless it is HTTP 200 holding a "decision" (and, for a
-- batch, as many "decision" keys as items).
local bodies = {}
local counter = 0
local headers = { ["Content-Type"] = "application/json" }
local path = "/api/v1/authz/decide"
local items = 1
bad = 0
permits = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(os.getenv("AUTHZ_BODIES")) do
    if #line > 0 then
      bodies[#bodies + 1] = line
    end
  end
  headers["Authorization"] = os.getenv("AUTHZ_AUTH")
  path = os.getenv("AUTHZ_PATH") or path
  items = tonumber(os.getenv("AUTHZ_ITEMS") or "1")
  counter = math.random(#bodies)
end

function request()
  counter = counter % #bodies + 1
  return wrk.format("POST", path, headers, bodies[counter])
end

function response(status, hdrs, body)
  if status ~= 200 or body == nil then
    bad = bad + 1
    return
  end
  local n = 0
  for _ in body:gmatch('"decision":') do
    n = n + 1
  end
  if n ~= items then
    bad = bad + 1
  end
  for _ in body:gmatch('"decision": ?"permit"') do
    permits = permits + 1
  end
end

function done(summary, latency, requests)
  local wrong, permitted = 0, 0
  for _, t in ipairs(threads) do
    wrong = wrong + (t:get("bad") or 0)
    permitted = permitted + (t:get("permits") or 0)
  end
  local e = summary.errors
  io.write(string.format("COUNT %d\nDURATION_US %d\nBAD %d\nPERMITS %d\n", summary.requests, summary.duration, wrong, permitted))
  io.write(string.format("ERRORS %d\n", e.connect + e.read + e.write + e.status + e.timeout))
  for _, p in ipairs({ 50, 90, 99 }) do
    io.write(string.format("P%d_US %d\n", p, latency:percentile(p)))
  end
  io.write(string.format("MAX_US %d\nMEAN_US %d\n", latency.max, latency.mean))
end
