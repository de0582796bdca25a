-- wrk script for bench/proxy-throughput.sh: POSTs a small SOAP GetFolder request for the inbox
-- on keep-alive connections, with Basic credentials, and counts the responses that are not 2xx
-- or not an EWS success, so that the run can be failed when any request did not succeed.
--
-- The Authorization value comes from the environment variable BENCH_AUTHORIZATION
-- (e.g. "Basic YWxpY2VAdGVzdC5sb2NhbDpzZWNyZXQ="); BENCH_DEVICE_ID, when set, is sent as the
-- X-Device-Id header (the device the compliance layer decides on). BENCH_OPERATION=GetItem sends a
-- GetItem instead of the GetFolder (bench/compare.sh's upstream answers it with 1 MiB); with
-- BENCH_CHECK_BODY=0 the bodies are not searched for the EWS success (wrk then only counts
-- statuses above 399, as errors.status), so that wrk does not spend its time copying 1 MiB
-- bodies into Lua. done() prints one machine-readable line:
--   RESULT requests=N duration_us=N rps=F p50_us=F p99_us=F non2xx=N not_success=N
--          err_connect=N err_read=N err_write=N err_status=N err_timeout=N

local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization == nil or authorization == "" then
  io.stderr:write("soap-post.lua: BENCH_AUTHORIZATION is not set\n")
  os.exit(2)
end

wrk.method = "POST"
wrk.path = "/EWS/Exchange.asmx"
wrk.headers["Content-Type"] = "text/xml; charset=utf-8"
wrk.headers["Authorization"] = authorization
wrk.headers["Connection"] = "keep-alive"
local device_id = os.getenv("BENCH_DEVICE_ID")
if device_id ~= nil and device_id ~= "" then
  wrk.headers["X-Device-Id"] = device_id
end
local get_folder = '<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>'
  .. '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>'
local get_item = '<m:GetItem><m:ItemShape><t:BaseShape>Default</t:BaseShape>'
  .. '<t:IncludeMimeContent>true</t:IncludeMimeContent></m:ItemShape>'
  .. '<m:ItemIds><t:ItemId Id="AAMkADk0MTQ1YjBkLWM4ZjEtNGQ4Mi1hMjU0LTg5ZTgzNzdmYTg5YgBGAAAAAAD"/></m:ItemIds>'
  .. '</m:GetItem>'
local operation = get_folder
if os.getenv("BENCH_OPERATION") == "GetItem" then
  operation = get_item
end
wrk.body = '<?xml version="1.0" encoding="utf-8"?>'
  .. '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
  .. ' xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"'
  .. ' xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
  .. '<s:Header><t:RequestServerVersion Version="Exchange2013"/></s:Header>'
  .. '<s:Body>' .. operation .. '</s:Body>'
  .. '</s:Envelope>'

-- Each wrk thread has its own Lua state: keep the threads to sum their counters in done().
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  responses = 0
  non2xx = 0
  not_success = 0
end

-- Defined only when bodies are checked: wrk hands bodies to Lua only if `response` exists.
if os.getenv("BENCH_CHECK_BODY") ~= "0" then
  function response(status, headers, body)
    responses = responses + 1
    if status < 200 or status > 299 then
      non2xx = non2xx + 1
    elseif not string.find(body, 'ResponseClass="Success"', 1, true) then
      not_success = not_success + 1
    end
  end
end

function done(summary, latency, requests)
  local counted, bad, unsuccessful = 0, 0, 0
  for _, thread in ipairs(threads) do
    counted = counted + thread:get("responses")
    bad = bad + thread:get("non2xx")
    unsuccessful = unsuccessful + thread:get("not_success")
  end
  if response == nil then
    -- Not checked one by one: every completed request counts as a response, and wrk's own
    -- count of statuses above 399 (errors.status) tells the failures.
    counted = summary.requests
  end
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d responses=%d duration_us=%d rps=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f "
      .. "max_us=%.1f non2xx=%d not_success=%d err_connect=%d err_read=%d err_write=%d "
      .. "err_status=%d err_timeout=%d\n",
    summary.requests, counted, summary.duration, summary.requests / seconds,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    bad, unsuccessful, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout))
end
