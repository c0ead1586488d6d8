local handlers = require("svccomm.handlers")
local router = require("svccomm.message_router")
local cjson = require("cjson")

local function permanent_message(fn, ...)
	local ok, err = pcall(fn, ...)
	assert.is_false(ok, "expected an error")
	assert.is_true(handlers.is_permanent(err), "not a permanent error: " .. tostring(err))
	return tostring(err), err
end

describe("handlers", function()
	before_each(function()
		router.reset()
		handlers.now = os.time
	end)

	describe("permanent_error", function()
		it("raises a table marked permanent with __tostring", function()
			local ok, err = pcall(function()
				handlers.permanent_error("bad order 42")
			end)
			assert.is_false(ok)
			assert.is_true(err.permanent)
			assert.are.equal("bad order 42", err.message)
			assert.are.equal("bad order 42", tostring(err))
			assert.matches("handlers_spec.lua:%d+$", err.where)
			assert.is_true(handlers.is_permanent(err))
		end)

		it("is_permanent is false for ordinary errors", function()
			local _, err = pcall(error, "plain")
			assert.is_false(handlers.is_permanent(err))
			assert.is_false(handlers.is_permanent(nil))
			assert.is_false(handlers.is_permanent({ message = "x" }))
			assert.is_true(handlers.is_permanent({ permanent = true }))
		end)
	end)

	describe("event_consumer", function()
		local got_payload, got_meta
		local h
		before_each(function()
			got_payload, got_meta = nil, nil
			h = handlers.event_consumer(function(payload, meta)
				got_payload, got_meta = payload, meta
				return "done"
			end)
		end)

		it("accepts the svccomm envelope", function()
			local message = { exchange = "user", routing_key = "update.base" }
			local body = cjson.decode([[{"eventId":"17","eventTime":"2026-01-02T03:04:05Z",
				"eventType":"update.base","aggregate":"user","payload":{"name":"Zoë"}}]])
			assert.are.equal("done", h("update.base", body, message))
			assert.are.same({ name = "Zoë" }, got_payload)
			assert.are.equal("17", got_meta.event_id)
			assert.are.equal("2026-01-02T03:04:05Z", got_meta.event_time)
			assert.are.equal("update.base", got_meta.event_type)
			assert.are.equal("user", got_meta.aggregate)
			assert.are.equal("update.base", got_meta.routing_key)
			assert.are.equal(message, got_meta.message)
		end)

		it("accepts the Python library's envelope (numeric eventId, snake keys)", function()
			local body = cjson.decode([[{"eventId": 9103, "event_time": "2026-11-27T17:50:26.588Z",
				"event_type": "update.base", "aggregate": "user", "payload": {"firstName": "A"}}]])
			h("update.base", body, {})
			assert.are.equal("9103", got_meta.event_id)
			assert.are.equal("2026-11-27T17:50:26.588Z", got_meta.event_time)
			assert.are.equal("update.base", got_meta.event_type)
			assert.are.equal("user", got_meta.aggregate)
			assert.are.same({ firstName = "A" }, got_payload)
		end)

		it("accepts the snake-cased svccomm envelope", function()
			h("k", { event_id = "5", event_type = "t", event_time = "x", aggregate = "a", payload = {} }, {})
			assert.are.equal("5", got_meta.event_id)
			assert.are.equal("t", got_meta.event_type)
		end)

		it("takes the aggregate from the exchange when missing, and allows a null payload", function()
			h("k", { eventType = "t", payload = cjson.null }, { exchange = "orders" })
			assert.are.equal("orders", got_meta.aggregate)
			assert.are.equal(cjson.null, got_payload)
			assert.is_nil(got_meta.event_id)
		end)

		it("rejects bodies that are not envelopes as permanent errors", function()
			assert.matches("no payload", permanent_message(h, "k", { eventType = "t" }, {}))
			assert.matches("no eventType", permanent_message(h, "k", { payload = {} }, {}))
			assert.matches("not a JSON object", permanent_message(h, "k", "text", {}))
			assert.is_nil(got_meta)
		end)

		it("lets the handler's own errors through unchanged", function()
			local bad = handlers.event_consumer(function() error("boom") end)
			local ok, err = pcall(bad, "k", { eventType = "t", payload = {} }, {})
			assert.is_false(ok)
			assert.matches("handlers_spec.lua:%d+: boom", err)
		end)

		it("checks its argument and routes report the user's function", function()
			assert.matches("event_consumer: expected a function, got nil",
				SPEC.error_of(handlers.event_consumer))
			local function user_fn() end
			local line = debug.getinfo(user_fn, "S").linedefined
			router.consumer("ex", "k")(handlers.event_consumer(user_fn))
			assert.matches("handlers_spec.lua:" .. line .. "$", router.match("ex", "k").defined)
		end)
	end)

	describe("parse_time", function()
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
				local t = handlers.parse_time(c[1])
				assert.is_true(math.abs(t - c[2]) < 1e-6, tostring(t))
			end)
		end

		it("agrees with os.time in UTC for many dates", function()
			for y = 1971, 2099, 7 do
				for m = 1, 12, 5 do
					local s = string.format("%04d-%02d-28T13:14:15Z", y, m)
					-- "!*t" round trip: os.date gives UTC fields for the value we computed
					local t = handlers.parse_time(s)
					assert.are.equal(s, os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t)))
				end
			end
		end)

		it("rejects malformed times", function()
			for _, s in ipairs({ "yesterday", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
				"2023-02-29T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T00:00:00+25:00",
				"2026-01-01T00:00:00 UTC", "2026-01-01" }) do
				local t, err = handlers.parse_time(s)
				assert.is_nil(t, s)
				assert.is_string(err)
			end
			assert.is_nil(handlers.parse_time(42))
		end)
	end)

	describe("command_consumer", function()
		local calls
		local h
		before_each(function()
			calls = {}
			h = handlers.command_consumer(function(args, meta, message)
				calls[#calls + 1] = { args = args, meta = meta, message = message }
				return "ran"
			end)
			handlers.now = function() return 1795801826 end -- 2026-11-27T17:50:26Z
		end)

		it("runs a command that has not expired, without meta in its arguments", function()
			local body = { userId = 5, meta = { expired_time = "2026-11-27T17:50:27Z" } }
			local msg = { exchange = "cmd" }
			assert.are.equal("ran", h("do.it", body, msg))
			assert.are.same({ userId = 5 }, calls[1].args)
			assert.are.equal(body.meta, calls[1].meta)
			assert.are.equal(msg, calls[1].message)
			assert.is_not_nil(body.meta, "input not mutated")
		end)

		it("skips an expired command (expired_time or expiredTime) without calling fn", function()
			local status, reason = h("k", { meta = { expired_time = "2026-11-27T17:50:25.999Z" } }, {})
			assert.are.equal("skipped", status)
			assert.matches("expired", reason)
			status = h("k", { meta = { expiredTime = "2026-11-27T18:50:25+01:00" } }, {})
			assert.are.equal("skipped", status)
			status = h("k", { meta = { expired_time = 1795801825 } }, {})
			assert.are.equal("skipped", status)
			assert.are.equal(0, #calls)
		end)

		it("runs commands without meta or with a null expiry", function()
			h("k", { a = 1 }, {})
			h("k", { a = 2, meta = { expired_time = cjson.null } }, {})
			assert.are.equal(2, #calls)
			assert.are.same({}, calls[1].meta)
		end)

		it("a bad expiry or body is a permanent error", function()
			assert.matches("not an ISO%-8601", permanent_message(h, "k", { meta = { expired_time = "soon" } }, {}))
			assert.matches("meta is not a JSON object", permanent_message(h, "k", { meta = "x" }, {}))
			assert.matches("body is not a JSON object", permanent_message(h, "k", 5, {}))
			assert.are.equal(0, #calls)
			assert.matches("command_consumer: expected a function",
				SPEC.error_of(handlers.command_consumer, 1))
		end)
	end)
end)
