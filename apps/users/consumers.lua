-- Reacts to user updates: the handler runs inside a database transaction, and the event it
-- publishes is written to the outbox in that same transaction, so it goes out if and only
-- if the handler's work commits.
local svccomm = require "svccomm"
local router = svccomm.message_router

local function on_user_update(payload, meta)
  print(string.format("users: %s for user %s (%s), event %s", meta.event_type,
    tostring(payload.id), tostring(payload.name), meta.event_id))
  svccomm.publish_aggregate_event {
    aggregate = "billing",
    event_type = "customer.updated",
    payload = { user_id = payload.id, name = payload.name },
  }
end

router.consumer("user", "update.*")(svccomm.event_consumer(on_user_update))
