-- svccomm.time: ISO 8601 date-times of command/call expiry and scheduled events.
local time = require "svccomm.time"

describe("svccomm.time.parse", function()
	local cases = {
		{ "1970-01-01T00:00:00Z", 0 },
		{ "2000-03-01T00:00:00Z", 951868800 },
		{ "2024-02-29T12:00:00Z", 1709208000 },
		{ "2026-11-27T17:50:26.588Z", 1795801826.588 },
		{ "2026-11-27T18:50:26.588+01:00", 1795801826.588 },
		{ "2026-11-27T12:50:26-0500", 1795801826 },
		{ "2026-11-27 17:50:26", 1795801826 },
		{ "1969-12-31T23:59:59Z", -1 },
	}
	for _, c in ipairs(cases) do
		it(c[1], function()
			local t = time.parse(c[1])
			assert.is_true(math.abs(t - c[2]) < 1e-6, tostring(t))
		end)
	end

	it("agrees with os.time in UTC for many dates", function()
		for y = 1971, 2099, 7 do
			for m = 1, 12, 5 do
				local s = string.format("%04d-%02d-28T13:14:15Z", y, m)
				-- "!*t" round trip: os.date gives UTC fields for the value we computed
				local t = time.parse(s)
				assert.are.equal(s, os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t)))
			end
		end
	end)

	it("rejects malformed times", function()
		for _, s in ipairs({ "yesterday", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
			"2023-02-29T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T00:00:00+25:00",
			"2026-01-01T00:00:00 UTC", "2026-01-01" }) do
			local t, err = time.parse(s)
			assert.is_nil(t, s)
			assert.is_string(err)
		end
		assert.is_nil(time.parse(42))
	end)

	it("parses relative times +10s, +5m, +1h, +2d and refuses anything else", function()
		assert.equal(10, time.parse_relative("+10s"))
		assert.equal(300, time.parse_relative("+5m"))
		assert.equal(3600, time.parse_relative("+1h"))
		assert.equal(5400, time.parse_relative("+1.5h"))
		assert.equal(172800, time.parse_relative("+2d"))
		for _, s in ipairs({ "10s", "+10", "+s", "+10x", "+ 10s", "-10s", "+10s ", "+1e3s", "" }) do
			local t, err = time.parse_relative(s)
			assert.is_nil(t, s)
			assert.is_string(err)
		end
	end)
end)
