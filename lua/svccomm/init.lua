--- svccomm: RabbitMQ consumers in Lua and a PostgreSQL transactional outbox.
---
--- This is the public facade; every function lives in a module of its own:
--- message_router (routing), handlers (event, command and call wrappers), events (outbox writes,
--- commands and calls), db (PostgreSQL), keys (camelCase/snake_case).
local router = require "svccomm.message_router"
local handlers = require "svccomm.handlers"
local events = require "svccomm.events"
local db = require "svccomm.db"
local cjson = require "cjson"

local M = {}

M.VERSION = require("svccomm.core").VERSION

M.message_router = router
M.db = db
--- Handler logging through svccomm's logger: log.debug/info/warning/error(msg, fields).
M.log = require "svccomm.log"

--- JSON null, as decoded bodies carry it and as a parameter for SQL NULL.
M.null = cjson.null

--- Consumer wrappers.
M.event_consumer = handlers.event_consumer
M.command_consumer = handlers.command_consumer
M.permanent_error = handlers.permanent_error
M.is_permanent = handlers.is_permanent
M.call_consumer = handlers.call_consumer
M.call_response_consumer = handlers.call_response_consumer
M.call_handler = router.call_handler

--- Outbox writes (inside a transaction: a consumer handler or db:transaction()).
M.publish_aggregate_event = events.publish_aggregate_event
M.publish_future_aggregate_event = events.publish_future_aggregate_event
M.cancel_future_aggregate_event = events.cancel_future_aggregate_event
M.send_command = events.send_command
M.send_call = events.send_call
M.set_correlation_id = events.set_correlation_id
M.set_traceparent = events.set_traceparent
M.configure = events.configure
M.array = events.array

return M
