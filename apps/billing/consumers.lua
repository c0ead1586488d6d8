-- Receives what the users app publishes, and anything else that no handler takes.
local svccomm = require "svccomm"
local router = svccomm.message_router

router.consumer("billing", "customer.*", svccomm.event_consumer(function(payload, meta)
  print(string.format("billing: customer %s is now %s (event %s)",
    tostring(payload.user_id),
    tostring(payload.name), meta.event_id))
end))

router.default_consumer(function(routing_key, body, message)
  print(string.format("billing: nobody handles %s on %s", routing_key, message.exchange))
end)
