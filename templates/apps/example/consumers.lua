-- An example event handler: takes "thing.*" events of the "example" exchange (settings.lua
-- declares the exchange and binds QUEUE to it). Replace it with your own apps: every
-- apps/<name>/consumers.lua is loaded (or those INSTALLED_APPS lists).
local svccomm = require "svccomm"
local router = svccomm.message_router

--- Handles one "thing.*" event. A plain error is retried (RETRY_DELAYS, MAX_ATTEMPTS);
--- svccomm.permanent_error dead-letters the message at once.
---@param payload table   the event's payload
---@param meta svccomm.EventMeta
local function on_thing(payload, meta)
	if type(payload.id) ~= "number" then
		svccomm.permanent_error("thing event without a numeric id")
	end
	svccomm.log.info("thing " .. meta.event_type, { id = payload.id, event_id = meta.event_id })
	-- With DATABASE_URL set, the handler runs in a transaction: svccomm.db.exec(...) and
	-- svccomm.publish_aggregate_event("thing", "thing.seen", { id = payload.id }) commit together.
end

router.consumer("example", "thing.*")(svccomm.event_consumer(on_thing))
