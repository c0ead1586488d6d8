local dispatch = require("svccomm.dispatch")
local router = require("svccomm.message_router")
local handlers = require("svccomm.handlers")
local cjson = require("cjson")

local ENVELOPE = [[{"eventId":"42","eventTime":"2026-01-02T03:04:05.123Z","eventType":"order.created",]]
	.. [["aggregate":"orders","payload":{"orderId":42,"customerName":"Zoë","lineItems":[{"skuCode":"A1"}],"note":null}}]]

describe("dispatch", function()
	local calls
	before_each(function()
		router.reset()
		dispatch.configure({ MAX_JSON_DEPTH = 128, KEY_STYLE = "preserve", UNROUTED = "ack" })
		calls = {}
	end)

	local function record(name)
		return function(routing_key, body, message)
			calls[#calls + 1] = { name = name, routing_key = routing_key, body = body, message = message }
		end
	end

	it("decodes, routes and calls the handler: ok", function()
		router.consumer("orders", "order.*")(record("h"))
		local message = { exchange = "orders", routing_key = "order.created", attempt = 1 }
		assert.are.equal("ok", dispatch.handle("orders", "order.created", ENVELOPE, message))
		assert.are.equal(1, #calls)
		assert.are.equal("order.created", calls[1].routing_key)
		assert.are.equal(message, calls[1].message)
		assert.are.equal("Zoë", calls[1].body.payload.customerName)
		assert.are.equal(42, calls[1].body.payload.orderId)
	end)

	it("JSON null decodes to cjson.null", function()
		router.consumer("orders")(record("h"))
		dispatch.handle("orders", "x", ENVELOPE, {})
		assert.are.equal(cjson.null, calls[1].body.payload.note)
		assert.are.equal(cjson.null, dispatch.null)
		assert.are.equal("ok", dispatch.handle("orders", "x", "null", {}))
		assert.are.equal(cjson.null, calls[2].body)
	end)

	it("passes non-object JSON bodies through", function()
		router.consumer("ex")(record("h"))
		assert.are.equal("ok", dispatch.handle("ex", "k", '"text"', {}))
		assert.are.equal("text", calls[1].body)
		assert.are.equal("ok", dispatch.handle("ex", "k", "[1,2]", {}))
		assert.are.same({ 1, 2 }, calls[2].body)
	end)

	it("returns unrouted when nothing takes the message", function()
		router.consumer("orders", "order.created")(record("h"))
		local status, reason = dispatch.handle("orders", "order.deleted", ENVELOPE, {})
		assert.are.equal("unrouted", status)
		assert.are.equal("no handler for exchange 'orders' routing key 'order.deleted'", reason)
		assert.is_nil(dispatch.last_handler())
		assert.are.equal(0, #calls)
	end)

	it("the default consumer takes unrouted messages", function()
		router.default_consumer(record("default"))
		assert.are.equal("ok", dispatch.handle("any", "thing", "{}", {}))
		assert.are.equal("default", calls[1].name)
	end)

	describe("malformed bodies", function()
		before_each(function()
			router.default_consumer(record("default"))
		end)

		local bad = {
			{ "invalid JSON", "{not json" },
			{ "trailing garbage", '{"a":1} x' },
			{ "empty body", "" },
			{ "NaN", "NaN" },
			{ "Infinity", '{"a":Infinity}' },
			{ "hex number", "[0x10]" },
			{ "leading zero", '{"id":007}' },
			{ "number overflowing a double", '{"a":1e999999}' },
			{ "lone surrogate", '{"a":"\\ud800"}' },
		}
		for _, c in ipairs(bad) do
			it(c[1], function()
				local status, reason = dispatch.handle("ex", "k", c[2], {})
				assert.are.equal("malformed", status)
				assert.matches("^invalid JSON: ", reason)
				assert.are.equal(0, #calls)
				assert.is_nil(dispatch.last_handler())
			end)
		end

		it("nesting deeper than MAX_JSON_DEPTH", function()
			dispatch.configure({ MAX_JSON_DEPTH = 3 })
			assert.are.equal("ok", dispatch.handle("ex", "k", "[[[1]]]", {}))
			local status, reason = dispatch.handle("ex", "k", "[[[[1]]]]", {})
			assert.are.equal("malformed", status)
			assert.matches("too many nested", reason)
			assert.are.equal(1, #calls)
		end)

		it("a number at exactly MAX_JSON_DEPTH decodes; integers stay exact", function()
			dispatch.configure({ MAX_JSON_DEPTH = 2 })
			assert.are.equal("ok", dispatch.handle("ex", "k", '{"a":[9007199254740993]}', {}))
			assert.are.equal(9007199254740993, calls[1].body.a[1])
			assert.are.equal("integer", math.type(calls[1].body.a[1]))
		end)

		it("10,000-deep nesting is refused without a crash", function()
			local deep = string.rep("[", 10000) .. string.rep("]", 10000)
			local status = dispatch.handle("ex", "k", deep, {})
			assert.are.equal("malformed", status)
			deep = string.rep('{"a":', 10000) .. "1" .. string.rep("}", 10000)
			assert.are.equal("malformed", (dispatch.handle("ex", "k", deep, {})))
		end)
	end)

	it("KEY_STYLE snake converts body keys; preserve leaves them", function()
		router.consumer("orders")(record("h"))
		dispatch.configure({ KEY_STYLE = "snake" })
		dispatch.handle("orders", "order.created", ENVELOPE, {})
		local b = calls[1].body
		assert.are.equal("42", b.event_id)
		assert.are.equal("order.created", b.event_type)
		assert.are.equal(42, b.payload.order_id)
		assert.are.equal("A1", b.payload.line_items[1].sku_code)
		assert.is_nil(b.eventId)
		dispatch.configure({ KEY_STYLE = "preserve" })
		dispatch.handle("orders", "order.created", ENVELOPE, {})
		assert.are.equal("42", calls[2].body.eventId)
		assert.are.equal("preserve", dispatch.config().KEY_STYLE)
	end)

	it("an event_consumer gets the payload and meta through dispatch, with either key style", function()
		local seen = {}
		router.consumer("orders", "order.*")(handlers.event_consumer(function(payload, meta)
			seen[#seen + 1] = { payload = payload, meta = meta }
		end))
		assert.are.equal("ok", dispatch.handle("orders", "order.created", ENVELOPE, { exchange = "orders" }))
		dispatch.configure({ KEY_STYLE = "snake" })
		local python = [[{"eventId": 9103, "event_time": "2026-11-27T17:50:26.588Z", "event_type": "update.base",]]
			.. [[ "aggregate": "user", "payload": {"firstName": "A"}}]]
		assert.are.equal("ok", dispatch.handle("orders", "order.updated", python, {}))
		assert.are.equal("42", seen[1].meta.event_id)
		assert.are.equal("Zoë", seen[1].payload.customerName)
		assert.are.equal("9103", seen[2].meta.event_id)
		assert.are.equal("update.base", seen[2].meta.event_type)
		assert.are.equal("A", seen[2].payload.first_name)
	end)

	it("returns skipped with the reason for an expired command", function()
		router.consumer("commands", "do.it")(handlers.command_consumer(record("cmd")))
		local status, reason = dispatch.handle("commands", "do.it",
			'{"x":1,"meta":{"expired_time":"2001-01-01T00:00:00Z"}}', {})
		assert.are.equal("skipped", status)
		assert.matches("expired", reason)
		assert.are.equal(0, #calls)
		assert.are.equal("ok", dispatch.handle("commands", "do.it",
			'{"x":1,"meta":{"expired_time":"2999-01-01T00:00:00Z"}}', {}))
		-- command_consumer calls fn(arguments, meta, message): record() sees them as its 3 args
		assert.are.same({ x = 1 }, calls[1].routing_key)
		assert.are.same({ expired_time = "2999-01-01T00:00:00Z" }, calls[1].body)
	end)

	it("lets handler errors propagate, permanent ones recognisable", function()
		router.consumer("ex", "plain", function() error("boom") end)
		router.consumer("ex", "perm", function() handlers.permanent_error("bad input") end)
		local ok, err = pcall(dispatch.handle, "ex", "plain", "{}", {})
		assert.is_false(ok)
		assert.matches("dispatch_spec.lua:%d+: boom", err)
		ok, err = pcall(dispatch.handle, "ex", "perm", "{}", {})
		assert.is_false(ok)
		assert.is_true(handlers.is_permanent(err))
		assert.are.equal("bad input", tostring(err))
	end)

	it("last_handler names the app and the handler's file:line", function()
		local function h() end
		local line = debug.getinfo(h, "S").linedefined
		router._set_current_app("shop")
		router.consumer("ex", "k", handlers.event_consumer(h))
		router._set_current_app(nil)
		pcall(dispatch.handle, "ex", "k", "{}", {}) -- not an envelope: permanent error
		assert.matches("^shop:.*dispatch_spec%.lua:" .. line .. "$", dispatch.last_handler())
		dispatch.handle("ex", "nothing", "{}", {})
		assert.is_nil(dispatch.last_handler())
	end)

	it("configure checks its arguments and keeps unset values", function()
		assert.matches("configure: MAX_JSON_DEPTH must be a positive integer",
			SPEC.error_of(dispatch.configure, { MAX_JSON_DEPTH = 0 }))
		assert.matches('configure: KEY_STYLE must be "preserve" or "snake"',
			SPEC.error_of(dispatch.configure, { KEY_STYLE = "camel" }))
		assert.matches('configure: UNROUTED must be "ack" or "dead%-letter"',
			SPEC.error_of(dispatch.configure, { UNROUTED = "drop" }))
		dispatch.configure({ UNROUTED = "dead-letter", MAX_JSON_DEPTH = 7 })
		dispatch.configure({ KEY_STYLE = "snake" })
		assert.are.same({ MAX_JSON_DEPTH = 7, KEY_STYLE = "snake", UNROUTED = "dead-letter" }, dispatch.config())
	end)

	it("is fast enough (decode + route + call of a ~300-byte envelope)", function()
		router.consumer("orders", "order.*")(function() end)
		local n = 50000
		local t0 = os.clock()
		for _ = 1, n do
			dispatch.handle("orders", "order.created", ENVELOPE, nil)
		end
		local rate = n / (os.clock() - t0)
		assert.is_true(rate > 20000, string.format("%.0f messages/s", rate))
	end)
end)
