-- bench/ocsp_wrk.lua: wrk sends bench/ocsp.py's pre-built OCSP requests in turn.
-- OCSP_BODIES: a file of requests, each a 4-byte big-endian length and the DER.
-- OCSP_KEEPALIVE=1 keeps connections open; otherwise every request says
-- "Connection: close" and goes on a new TCP connection (as openssl ocsp answers).
-- The HTTP requests are formatted once, in init, so the load generator spends its
-- time on the connections, not on building strings.
-- An answer counts as bad unless it is HTTP 200 with a successful OCSP response
-- (responseStatus ENUMERATED 0 near the start of the DER).
local requests = {}
local counter = 0
local headers = { ["Content-Type"] = "application/ocsp-request" }
bad = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(os.getenv("OCSP_BODIES"), "rb"))
  local data = f:read("*a")
  f:close()
  if os.getenv("OCSP_KEEPALIVE") ~= "1" then
    headers["Connection"] = "close"
  end
  local i = 1
  while i <= #data do
    local a, b, c, d = data:byte(i, i + 3)
    local n = ((a * 256 + b) * 256 + c) * 256 + d
    requests[#requests + 1] = wrk.format("POST", "/ocsp", headers, data:sub(i + 4, i + 3 + n))
    i = i + 4 + n
  end
  counter = math.random(#requests)
end

function request()
  counter = counter % #requests + 1
  return requests[counter]
end

function response(status, hdrs, body)
  local at = body and body:find("\10\1\0", 1, true)
  if status ~= 200 or at == nil or at > 6 then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local wrong = 0
  for _, t in ipairs(threads) do
    wrong = wrong + (t:get("bad") or 0)
  end
  local e = summary.errors
  io.write(string.format("COUNT %d\nDURATION_US %d\nBAD %d\n", summary.requests, summary.duration, wrong))
  io.write(string.format("ERRORS %d\n", e.connect + e.read + e.write + e.status + e.timeout))
  for _, p in ipairs({ 50, 90, 99 }) do
    io.write(string.format("P%d_US %d\n", p, latency:percentile(p)))
  end
  io.write(string.format("MAX_US %d\nMEAN_US %d\n", latency.max, latency.mean))
end
