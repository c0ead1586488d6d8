-- Specs of the example app; run them with `busted` in the service directory. With the
-- svccomm.testing kit installed they deliver messages as the consumer would; without it they
-- load settings.lua and the apps through the public modules and call the routed handler.
local svccomm = require "svccomm"
local cjson = require "cjson"

local source = debug.getinfo(1, "S").source:sub(2)
local dir = source:match("^(.*)/spec/[^/]*$") or "."

-- an event envelope as a relay publishes it
local function event(event_type, payload)
	return { aggregate = "example", eventType = event_type, eventId = "example:1",
		eventTime = "2026-01-01T00:00:00Z", payload = payload }
end

local has_kit, testing = pcall(require, "svccomm.testing")

describe("example app", function()
	if has_kit then
		local t
		before_each(function()
			t = testing.project(dir)
		end)

		it("handles a thing event and writes nothing to the outbox", function()
			local r = t:deliver("example", "thing.created", cjson.encode(event("thing.created", { id = 1 })))
			assert.are.equal("ok", r.outcome)
			assert.are.equal(0, #t.outbox)
		end)

		it("dead-letters an event without an id", function()
			local r = t:deliver("example", "thing.created", cjson.encode(event("thing.created", {})))
			assert.are.equal("dead_letter", r.outcome)
		end)

		it("does not take other routing keys", function()
			local r = t:deliver("example", "other", cjson.encode(event("other", { id = 1 })))
			assert.are.equal("unrouted", r.outcome)
		end)
	else
		local router = svccomm.message_router
		setup(function()
			router.reset()
			local s = require("svccomm.settings").load(dir .. "/settings.lua")
			require("svccomm.apps").load_all(s._DIR, s.INSTALLED_APPS)
		end)

		it("handles a thing event", function()
			local route = assert(router.match("example", "thing.created"))
			route.fn("thing.created", event("thing.created", { id = 1 }), { exchange = "example" })
		end)

		it("rejects an event without an id permanently (dead letter)", function()
			local route = assert(router.match("example", "thing.created"))
			local ok, err = pcall(route.fn, "thing.created", event("thing.created", {}),
				{ exchange = "example" })
			assert.is_false(ok)
			assert.is_true(svccomm.is_permanent(err))
		end)

		it("does not take other routing keys", function()
			assert.is_nil(router.match("example", "other"))
		end)
	end
end)
