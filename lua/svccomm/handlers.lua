--- Handler wrappers, the receiving side (mirroring the Python library): event_consumer,
--- command_consumer, call_consumer, call_response_consumer, and permanent errors (failures
--- that go straight to the dead-letter queue, without retries).
local core = require "svccomm.core"
local events = require "svccomm.events"
local json = require "svccomm.json"
local router = require "svccomm.message_router"
local time = require "svccomm.time"

local M = {}

local type, error, tostring, setmetatable, pairs, ipairs = type, error, tostring, setmetatable, pairs,
	ipairs
local debug_getinfo, format, match, tointeger = debug.getinfo, string.format, string.match, math.tointeger

local CALL_ID_KEYS = { "call_id", "callId", "id" }

local permanent_mt = {
	__tostring = function(self)
		return self.message
	end,
}

--- Raise an error that marks the failure as permanent: the message is dead-lettered at once.
--- The error value is a table {permanent = true, message = msg, where = "file:line"}.
---@param msg any  the reason (converted with tostring)
function M.permanent_error(msg)
	local info = debug_getinfo(2, "Sl")
	local where
	if info and info.currentline and info.currentline > 0 then
		where = info.short_src .. ":" .. info.currentline
	end
	error(setmetatable({ permanent = true, message = tostring(msg), where = where }, permanent_mt), 0)
end

--- True when err was raised by permanent_error (or is any table with permanent = true).
---@param err any
---@return boolean
function M.is_permanent(err)
	return type(err) == "table" and err.permanent == true
end

-- internal: raise a permanent error with the wrapper's own reason (no caller place)
local function reject(msg)
	error(setmetatable({ permanent = true, message = msg }, permanent_mt), 0)
end

local function id_string(v)
	if type(v) == "number" then
		local i = tointeger(v)
		if i then
			return format("%d", i)
		end
		return tostring(v)
	end
	if type(v) == "string" then
		return v
	end
	return nil
end

--- Wrap fn(payload, meta) as a message handler for event envelopes. Accepted shapes:
--- svccomm's {eventId, eventTime, eventType, aggregate, payload}, the Python library's
--- {eventId (number), event_time, event_type, aggregate, payload}, and the snake-cased
--- {event_id, event_time, event_type, ...} (KEY_STYLE = "snake"). meta has event_id (always a
--- string, or nil when absent), event_time, event_type, aggregate (defaults to the exchange),
--- routing_key and message. A body that is not an envelope is a permanent error.
---@param fn fun(payload:any, meta:table):any
---@return function handler(routing_key, body, message)
function M.event_consumer(fn)
	if type(fn) ~= "function" then
		error(format("event_consumer: expected a function, got %s", type(fn)), 2)
	end
	local function handler(routing_key, body, message)
		if type(body) ~= "table" then
			reject("event_consumer: body is not a JSON object (not an event envelope)")
		end
		local payload = body.payload
		if payload == nil then
			reject("event_consumer: not an event envelope: no payload")
		end
		local event_type = body.eventType
		if event_type == nil then
			event_type = body.event_type
		end
		if type(event_type) ~= "string" then
			reject("event_consumer: not an event envelope: no eventType")
		end
		local event_id = body.eventId
		if event_id == nil then
			event_id = body.event_id
		end
		local event_time = body.eventTime
		if event_time == nil then
			event_time = body.event_time
		end
		local aggregate = body.aggregate
		if aggregate == nil and type(message) == "table" then
			aggregate = message.exchange
		end
		local meta = {
			event_id = id_string(event_id),
			event_time = event_time,
			event_type = event_type,
			aggregate = aggregate,
			routing_key = routing_key,
			message = message,
		}
		return fn(payload, meta)
	end
	return router.wrapped(handler, fn)
end

--- Parse an ISO-8601 / RFC 3339 date-time to seconds since the epoch (UTC), with fraction
--- (svccomm.time.parse).
---@param s string
---@return number|nil seconds, string|nil err
M.parse_time = time.parse

--- The clock used for command expiry (seconds since the epoch, with microseconds, as the
--- Python library compares); replaceable in tests.
M.now = core.time

--- Wrap fn(arguments, meta, message) as a handler for commands: the body is the command's
--- arguments plus `meta = {expired_time = "ISO-8601"}` (or `expiredTime`, or epoch seconds).
--- A command whose expiry has passed (compared to the microsecond) is skipped: the handler
--- returns "skipped", reason. An expiry that is not a time is a permanent error (the
--- command is dead-lettered with the reason). `arguments` is a shallow copy of the body
--- without `meta`.
---@param fn fun(arguments:table, meta:table, message:table):any
---@return function handler(routing_key, body, message)
function M.command_consumer(fn)
	if type(fn) ~= "function" then
		error(format("command_consumer: expected a function, got %s", type(fn)), 2)
	end
	local function handler(_, body, message)
		if type(body) ~= "table" then
			reject("command_consumer: body is not a JSON object")
		end
		local meta = body.meta
		if meta == nil then
			meta = {}
		elseif type(meta) ~= "table" then
			reject("command_consumer: meta is not a JSON object")
		end
		local expired = meta.expired_time
		if expired == nil then
			expired = meta.expiredTime
		end
		if expired ~= nil and type(expired) ~= "userdata" then -- userdata: JSON null
			local t, err
			if type(expired) == "number" then
				t = expired
			else
				t, err = M.parse_time(expired)
				if not t then
					reject(format("command_consumer: meta.expired_time %s is not a time: %s",
						tostring(expired), err))
				end
			end
			if t < M.now() then
				return "skipped", "command expired at " .. tostring(expired)
			end
		end
		local args = {}
		for k, v in pairs(body) do
			if k ~= "meta" then
				args[k] = v
			end
		end
		return fn(args, meta, message)
	end
	return router.wrapped(handler, fn)
end

-- A field of a call body under its snake_case or camelCase name; JSON null is nil.
local function field(body, snake, camel)
	local v = body[snake]
	if v == nil then
		v = body[camel]
	end
	if v == json.null then
		return nil
	end
	return v
end

-- The call id of a call or a call response: call_id, callId or id (svccomm writes all
-- three names, the Python library only id), a non-empty string or a number, as sent.
local function call_id_of(body)
	for _, k in ipairs(CALL_ID_KEYS) do
		local v = body[k]
		if (type(v) == "string" and v ~= "") or type(v) == "number" then
			return v
		end
	end
	return nil
end

-- The routing key of the response: call-response.<exchange of the call>.<routing key of the
-- call>. A call in svccomm's format before 0.2 (routing key "call.<method_name>") is answered
-- on call-response.<exchange>.<method_name>, where its caller listens.
local function response_key(exchange, routing_key, method_from_body)
	if method_from_body and routing_key == "call." .. method_from_body then
		routing_key = method_from_body
	end
	return "call-response." .. tostring(exchange) .. "." .. tostring(routing_key)
end

--- Wrap fn(data, meta) as the handler of calls, in svccomm's or the Python library's format:
--- the call id is `call_id`, `callId` or `id` (a string or a number, kept as sent), reply-to
--- is `reply_to` at the top level or in `meta`, the method is `method_name` or else the
--- routing key (without a leading "call."). fn's return value is written, in the handler's transaction, as the response:
--- exchange = reply_to, routing key = call-response.<exchange of the call>.<routing key of
--- the call>, body {id, call_id, data, meta = {time}} (see events). An expired call is not
--- executed (the handler returns "skipped", reason); an error in fn writes no response (the
--- transaction rolls back). A call without an id, or whose expiry is not a time, is a
--- permanent error (dead-lettered with the reason). meta = {service_name, method_name,
--- call_id, reply_to, meta, message}.
---@param fn fun(data:any, meta:table):any
---@return function handler(routing_key, body, message)
function M.call_consumer(fn)
	if type(fn) ~= "function" then
		error("call_consumer: expected a function, got " .. type(fn), 2)
	end
	local function handler(routing_key, body, message)
		if type(body) ~= "table" then
			reject("call_consumer: body is not a JSON object")
		end
		local call_id = call_id_of(body)
		if call_id == nil then
			reject("call_consumer: not a call: no id, call_id or callId")
		end
		local meta = body.meta
		if type(meta) ~= "table" then
			meta = {}
		end
		local body_method = field(body, "method_name", "methodName")
		if type(body_method) ~= "string" then
			body_method = nil
		end
		local method = body_method
		if method == nil and type(routing_key) == "string" then
			method = match(routing_key, "^call%.(.+)$") or routing_key
		end
		local exchange = type(message) == "table" and message.exchange or nil
		local service = field(body, "service_name", "serviceName")
		if service == nil then
			service = exchange
		end
		local reply_to = field(body, "reply_to", "replyTo")
		if reply_to == nil then
			reply_to = field(meta, "reply_to", "replyTo")
		end
		local expired = field(meta, "expired_time", "expiredTime")
		if expired ~= nil then
			local t = type(expired) == "number" and expired or time.parse(expired)
			if not t then
				reject("call_consumer: meta.expired_time is not a time: " .. tostring(expired))
			end
			if t < M.now() then
				return "skipped", "call expired at " .. tostring(expired)
			end
		end
		local result = fn(body.data, {
			service_name = service,
			method_name = method,
			call_id = call_id,
			reply_to = reply_to,
			meta = meta,
			message = message,
		})
		if type(reply_to) == "string" and reply_to ~= "" then
			-- a tail call, so an error writing the response names the handler's caller
			return events._write_call_response(reply_to,
				response_key(exchange or service, routing_key or method, body_method), call_id,
				result, service, method)
		end
	end
	return router.wrapped(handler, fn)
end

--- Wrap fn(data, info) as the handler of call responses, in svccomm's or the Python
--- library's format: the call id is `call_id`, `callId` or `id` (as sent: a string or a
--- number); the service and method come from the body or the routing key
--- call-response.<service>.<method>. A response without an id is a permanent error
--- (dead-lettered). svccomm keeps no record of the calls it made: matching info.call_id to a
--- call (and ignoring one never made) is fn's job. info = {service_name, method_name,
--- call_id, meta, message}.
---@param fn fun(data:any, info:table):any
---@return function handler(routing_key, body, message)
function M.call_response_consumer(fn)
	if type(fn) ~= "function" then
		error("call_response_consumer: expected a function, got " .. type(fn), 2)
	end
	local function handler(routing_key, body, message)
		if type(body) ~= "table" then
			reject("call_response_consumer: body is not a JSON object")
		end
		local call_id = call_id_of(body)
		if call_id == nil then
			reject("call_response_consumer: not a call response: no id, call_id or callId")
		end
		local service, method = field(body, "service_name", "serviceName"), field(body, "method_name", "methodName")
		if (service == nil or method == nil) and type(routing_key) == "string" then
			local s, m = match(routing_key, "^call%-response%.([^.]+)%.(.+)$")
			service, method = service or s, method or m
		end
		local meta = body.meta
		if type(meta) ~= "table" then
			meta = {}
		end
		return fn(body.data, {
			service_name = service,
			method_name = method,
			call_id = call_id,
			meta = meta,
			message = message,
		})
	end
	return router.wrapped(handler, fn)
end

return M
