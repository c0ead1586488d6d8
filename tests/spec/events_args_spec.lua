-- Table arguments of the write side refuse keys they do not know (issue 22: a misspelt
-- `paylod` once published an empty payload). Every refusal happens before any SQL, so no
-- database is needed.
local events = require "svccomm.events"
local db = require "svccomm.db"

local function err_of(f, ...)
	local ok, e = pcall(f, ...)
	assert.is_false(ok)
	return tostring(e)
end

describe("table arguments", function()
	it("publish_aggregate_event refuses an unknown key and names the likely one", function()
		local e = err_of(events.publish_aggregate_event,
			{ aggregate = "user", event_type = "seen", paylod = { id = 1 } })
		assert.matches("publish_aggregate_event: argument table: unknown key paylod", e, 1, true)
		assert.matches("did you mean payload?", e, 1, true)
	end)

	it("publish_aggregate_event's table form needs a payload", function()
		local e = err_of(events.publish_aggregate_event, { aggregate = "user", event_type = "seen" })
		assert.matches("payload is required", e, 1, true)
	end)

	it("the error points at the caller", function()
		local e = err_of(function()
			events.publish_aggregate_event { aggregate = "user", event_type = "seen", payload = {}, x = 1 }
		end)
		assert.matches("events_args_spec.lua:%d+: publish_aggregate_event", e)
	end)

	it("publish_future_aggregate_event and cancel_future_aggregate_event refuse unknown keys", function()
		local e = err_of(events.publish_future_aggregate_event,
			{ aggregate = "a", event_type = "t", event_tme = 1, payload = {} })
		assert.matches("unknown key event_tme (did you mean event_time?)", e, 1, true)
		e = err_of(events.publish_future_aggregate_event, { aggregate = "a", event_type = "t", event_time = 1 })
		assert.matches("payload is required", e, 1, true)
		e = err_of(events.cancel_future_aggregate_event, { aggregate = "a", event_type = "t", tag = { k = "v" } })
		assert.matches("unknown key tag (did you mean tags?)", e, 1, true)
	end)

	it("send_command and send_call refuse unknown option keys", function()
		local e = err_of(events.send_command, "svc", {}, { command_name = "c", timout = 5 })
		assert.matches("send_command: opts: unknown key timout (did you mean timeout?)", e, 1, true)
		e = err_of(events.send_call, "svc", "m", {}, { replyto = "me" })
		assert.matches("send_call: opts: unknown key replyto (did you mean reply_to?)", e, 1, true)
		e = err_of(events.send_call, "svc", "m", {}, { zzzzzzzz = 1 })
		assert.matches("known: reply_to, timeout, expired_time", e, 1, true)
	end)

	it("db.connect refuses unknown option keys", function()
		local e = err_of(db.connect, "postgresql://nowhere.invalid/x", { application = "me" })
		assert.matches("unknown key application (known: application_name)", e, 1, true)
	end)
end)
