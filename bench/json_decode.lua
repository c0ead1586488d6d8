-- Decode rate of svccomm's JSON decoder (svccomm.core.json_decode, src/lua/json_decode.c) against
-- lua-cjson's, in the same run, on the benchmark's ~300 B envelope and on a ~10 KB payload.
--
--   LUA_CPATH='build/lua/?.so;;' lua5.4 bench/json_decode.lua [seconds per measurement]
--
-- Each figure is the best of 5 rounds (CPU time, os.clock), the decoders taking turns; the ratio
-- is what matters on a shared machine. Both decoders build the same Lua tables (svccomm's keeps integers exact).
local core = require "svccomm.core"
local cjson = require "cjson"

local secs = tonumber(arg and arg[1]) or 1.0

-- bench/run.py envelope_sql(300, ...): a svccomm envelope of ~300 bytes
local function envelope()
	local head = '{"eventId":"123456","eventTime":"2026-01-01T00:00:00Z","eventType":"bench.event",'
		.. '"aggregate":"bench.x","payload":{"p":"'
	local tail = '"}}'
	return head .. string.rep("x", 300 - #head - #tail) .. tail
end

-- ~10 KB: a Python-style event whose payload is a list of records (ids beyond 2^53, floats,
-- strings with escapes, booleans, null)
local function payload_10k()
	local items = {}
	local i = 0
	local text
	repeat
		i = i + 1
		items[i] = string.format('{"id":%d,"name":"user \\"%d\\" caf\\u00e9","score":%d.25,'
			.. '"active":%s,"tags":["a","b","c"],"ref":null,"createdAt":"2026-12-01T01:51:19.138Z"}',
			9007199254740993 + i, i, i, i % 2 == 0 and "true" or "false")
		text = '{"eventId":5,"payload":{"items":[' .. table.concat(items, ",")
			.. ']},"aggregate":"pyevents","event_time":"2026-12-01T01:51:19.138Z","event_type":"big"}'
	until #text >= 10 * 1024
	return text
end

-- decodes/s of one round of about `t` seconds of CPU time
local function round(decode, text, t)
	local n, t0 = 0, os.clock()
	local dt
	repeat
		for _ = 1, 100 do
			decode(text)
		end
		n = n + 100
		dt = os.clock() - t0
	until dt >= t
	return n / dt
end

-- best of 5 rounds each, the two decoders taking turns (a busy machine slows both alike)
local function rates(a, b, text)
	local ra, rb = 0, 0
	for _ = 1, 5 do
		ra = math.max(ra, round(a, text, secs / 5))
		rb = math.max(rb, round(b, text, secs / 5))
	end
	return ra, rb
end

local svc_decode = core.json_decode
local cj = cjson.new()
local cj_decode = cj.decode

print("| input | bytes | cjson decodes/s | svccomm decodes/s | svccomm / cjson |")
print("|---|---|---|---|---|")
for _, case in ipairs { { "envelope", envelope() }, { "10 KB payload", payload_10k() } } do
	local name, text = case[1], case[2]
	assert(svc_decode(text) and cj_decode(text))
	local c, s = rates(cj_decode, svc_decode, text)
	print(string.format("| %s | %d | %.0f | %.0f | %.2f |", name, #text, c, s, s / c))
end
