-- Specs of the example app; run them with `busted --lua=lua5.4` in the service directory.
-- svccomm.testing delivers each message as runconsumer would (routing, handler wrappers,
-- retries and dead letters) and records what the handler writes to the outbox.
local testing = require "svccomm.testing"

local source = debug.getinfo(1, "S").source:sub(2)
local dir = source:match("^(.*)/spec/[^/]*$") or "."

describe("example app", function()
	local t
	before_each(function()
		t = testing.project(dir)
	end)

	it("handles a thing event and writes nothing to the outbox", function()
		local r = t:deliver("example", "thing.created", t:event("example", "thing.created", { id = 1 }))
		assert.are.equal("ok", r.status)
		assert.are.equal(0, #t.outbox)
	end)

	it("dead-letters an event without an id", function()
		local r = t:deliver("example", "thing.created", t:event("example", "thing.created", {}))
		assert.are.equal("dead_letter", r.status)
		assert.are.equal("permanent-error", r.reason)
	end)

	it("does not take other routing keys", function()
		local r = t:deliver("example", "other", t:event("example", "other", { id = 1 }))
		assert.are.equal("unrouted", r.status)
	end)
end)
