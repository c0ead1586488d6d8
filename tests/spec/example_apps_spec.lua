-- The example apps (apps/users, apps/billing with the repo's settings.lua), tested with
-- svccomm.testing: what they publish, how failures are retried or dead-lettered, the clock.
local testing = require "svccomm.testing"

describe("example apps", function()
	local t
	before_each(function()
		t = testing.project(SPEC.root)
		t.clock:set("2026-12-01T10:00:00Z")
	end)
	after_each(function()
		t:reset()
		t:close()
	end)

	it("users: an update publishes customer.updated to billing", function()
		local ev = t:event("user", "update.name", { id = 7, name = "Ada" })
		local out = t:deliver("user", "update.name", ev, { correlation_id = "corr-1" })
		assert.are.equal("ok", out.status)
		assert.are.equal(1, #t.outbox)
		local row = t.outbox[1]
		assert.are.equal("billing", row.exchange)
		assert.are.equal("customer.updated", row.routing_key)
		assert.are.same({ user_id = 7, name = "Ada" }, row.body.payload)
		assert.are.equal("customer.updated", row.body.eventType)
		assert.are.equal("2026-12-01T10:00:00.000000Z", row.body.eventTime)
		assert.are.equal("corr-1", row.correlation_id)
		assert.are.same({ row }, t:due_events())
	end)

	it("users: a body that is not an envelope is dead-lettered at once", function()
		local out = t:deliver("user", "update.name", { id = 7 })
		assert.are.equal("dead_letter", out.status)
		assert.are.equal("permanent-error", out.headers["x-svccomm-reason"])
		assert.matches("not an event envelope", out.headers["x-svccomm-error"])
		assert.are.equal(0, #t.outbox)
	end)

	it("users: invalid JSON is dead-lettered as invalid-json", function()
		local out = t:deliver("user", "update.name", "{not json")
		assert.are.equal("dead_letter", out.status)
		assert.are.equal("invalid-json", out.reason)
	end)

	it("users: a failed publish is retried with RETRY_DELAYS, then dead-lettered", function()
		local svccomm = require "svccomm"
		local real = svccomm.publish_aggregate_event
		svccomm.publish_aggregate_event = function() error("outbox unavailable", 0) end
		finally(function() svccomm.publish_aggregate_event = real end)
		local ev = t:event("user", "update.name", { id = 7, name = "Ada" })
		local delays = {}
		for attempt = 1, 3 do
			local out = t:deliver("user", "update.name", ev, { attempt = attempt })
			assert.are.equal("retry", out.status)
			assert.matches("outbox unavailable", out.error)
			delays[attempt] = out.delay
		end
		local last = t:deliver("user", "update.name", ev, { attempt = 4 })
		assert.are.same({ 1, 10, 60 }, delays) -- settings.lua: RETRY_DELAYS = { 1, 10, 60 }
		assert.are.equal("dead_letter", last.status)
		assert.are.equal("max-attempts", last.headers["x-svccomm-reason"])
		assert.matches("apps/users/consumers.lua", last.headers["x-svccomm-handler"])
		assert.are.equal("outbox unavailable", last.error)
		assert.are.equal(0, #t.outbox)
	end)

	it("users: eventTime of what it publishes follows the fake clock", function()
		t.clock:advance(90)
		t:deliver("user", "update.name", t:event("user", "update.name", { id = 1, name = "B" }))
		assert.are.equal("2026-12-01T10:01:30.000000Z", t.outbox[1].body.eventTime)
		assert.are.equal(1, #t:due_events())
	end)

	it("billing: takes customer events and anything no other handler takes", function()
		local out = t:deliver("billing", "customer.updated",
			t:event("billing", "customer.updated", { user_id = 7, name = "Ada" }))
		assert.are.equal("ok", out.status)
		assert.matches("apps/billing/consumers.lua", out.handler)
		assert.are.equal("ok", t:deliver("nobody", "x.y", {}).status)
	end)
end)
