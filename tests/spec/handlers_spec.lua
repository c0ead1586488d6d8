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
		it("is svccomm.time.parse", function()
			assert.equal(require("svccomm.time").parse, handlers.parse_time)
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

	-- Writing the response needs a transaction: events_spec.lua covers it against PostgreSQL.
	describe("call_consumer", function()
		local calls, h
		before_each(function()
			calls = {}
			h = handlers.call_consumer(function(data, meta)
				calls[#calls + 1] = { data = data, meta = meta }
				return "result"
			end)
		end)

		it("hands data and the call's identity; without reply_to it writes nothing", function()
			local message = { exchange = "calc" }
			assert.is_nil(h("call.add", { call_id = "c1", data = { a = 1 } }, message))
			assert.are.equal(1, #calls)
			assert.are.same({ a = 1 }, calls[1].data)
			assert.are.equal("add", calls[1].meta.method_name)
			assert.are.equal("calc", calls[1].meta.service_name)
			assert.are.equal("c1", calls[1].meta.call_id)
			assert.are.same({}, calls[1].meta.meta)
			assert.are.equal(message, calls[1].meta.message)
			h("x", { callId = "c2", methodName = "mul", serviceName = "s", replyTo = cjson.null }, message)
			assert.are.equal("mul", calls[2].meta.method_name)
			assert.are.equal("s", calls[2].meta.service_name)
		end)

		it("skips an expired call without calling fn", function()
			local status, reason = h("call.add", { call_id = "c1", reply_to = "me",
				meta = { expired_time = "2001-01-01T00:00:00Z" } }, {})
			assert.are.equal("skipped", status)
			assert.matches("call expired at 2001", reason)
			assert.are.equal("skipped", (h("call.add", { call_id = "c1", meta = { expiredTime = 1 } }, {})))
			assert.are.equal(0, #calls)
		end)

		it("a body that is not a call is a permanent error", function()
			assert.matches("call_consumer: body is not a JSON object", permanent_message(h, "call.add", "x", {}))
			-- a call needs an id (any of the three spellings); the method may be the routing key
			assert.matches("not a call: no id, call_id or callId",
				permanent_message(h, "get.user", { data = {}, meta = { replyTo = "py" } }, {}))
			assert.matches("not a call: no id", permanent_message(h, "call.add", { call_id = "", id = true }, {}))
			assert.matches("meta.expired_time is not a time: soon",
				permanent_message(h, "call.add", { call_id = "c1", meta = { expired_time = "soon" } }, {}))
			assert.are.equal(0, #calls)
		end)

		it("checks its argument and routes report the user's function", function()
			assert.matches("handlers_spec.lua:%d+: call_consumer: expected a function, got nil",
				SPEC.error_of(function() handlers.call_consumer() end))
			local function user_fn() end
			local line = debug.getinfo(user_fn, "S").linedefined
			router.consumer("calc", "call.#")(handlers.call_consumer(user_fn))
			assert.matches("handlers_spec.lua:" .. line .. "$", router.match("calc", "call.add").defined)
		end)
	end)

	describe("call_response_consumer", function()
		it("takes service and method from the body, else from the routing key", function()
			local got
			local h = handlers.call_response_consumer(function(data, info)
				got = { data = data, info = info }
				return "done"
			end)
			assert.are.equal("done", h("call-response.calc.add", { call_id = "c1", data = 3 }, {}))
			assert.are.equal(3, got.data)
			assert.are.equal("calc", got.info.service_name)
			assert.are.equal("add", got.info.method_name)
			assert.are.equal("c1", got.info.call_id)
			h("call-response.calc.add", { serviceName = "s", methodName = "m", callId = "c2" }, {})
			assert.are.equal("s", got.info.service_name)
			assert.are.equal("m", got.info.method_name)
			assert.are.equal("c2", got.info.call_id)
		end)

		it("a body that is not an object is a permanent error; checks its argument", function()
			local h = handlers.call_response_consumer(function() end)
			assert.matches("call_response_consumer: body is not a JSON object",
				permanent_message(h, "call-response.a.b", 1, {}))
			assert.matches("handlers_spec.lua:%d+: call_response_consumer: expected a function, got string",
				SPEC.error_of(function() handlers.call_response_consumer("x") end))
		end)
	end)

	describe("the svccomm facade", function()
		it("exports the wrappers of this module", function()
			local svccomm = require "svccomm"
			assert.equal(handlers.event_consumer, svccomm.event_consumer)
			assert.equal(handlers.command_consumer, svccomm.command_consumer)
			assert.equal(handlers.call_consumer, svccomm.call_consumer)
			assert.equal(handlers.call_response_consumer, svccomm.call_response_consumer)
			assert.equal(handlers.permanent_error, svccomm.permanent_error)
			assert.equal(handlers.is_permanent, svccomm.is_permanent)
		end)
	end)
end)
