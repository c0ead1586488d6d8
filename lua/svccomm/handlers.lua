--- Handler wrappers (mirroring the Python library): event_consumer, command_consumer, and
--- permanent errors (failures that go straight to the dead-letter queue, without retries).
local M = {}

local type, error, tostring, setmetatable, pairs = type, error, tostring, setmetatable, pairs
local format, match, tonumber = string.format, string.match, tonumber
local tointeger, floor = math.tointeger, math.floor
local router = require("svccomm.message_router")

local permanent_mt = {
	__tostring = function(self)
		return self.message
	end,
}

--- Raise an error that marks the failure as permanent: the message is dead-lettered at once.
--- The error value is a table {permanent = true, message = msg, where = "file:line"}.
---@param msg any  the reason (converted with tostring)
function M.permanent_error(msg)
	local info = debug.getinfo(2, "Sl")
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

local function is_leap(y)
	return (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0
end

local mdays = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

-- days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)
local function days_from_civil(y, m, d)
	if m <= 2 then
		y = y - 1
	end
	local era = floor(y / 400)
	local yoe = y - era * 400
	local mp = (m + 9) % 12
	local doy = (153 * mp + 2) // 5 + d - 1
	local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
	return era * 146097 + doe - 719468
end

--- Parse an ISO-8601 / RFC 3339 date-time to seconds since the epoch (UTC), with fraction.
--- Accepts "YYYY-MM-DDTHH:MM:SS[.fff][Z|+hh:mm|-hh:mm|+hhmm]" ('T' or space; a time without
--- a zone is taken as UTC).
---@param s string
---@return number|nil seconds, string|nil err
function M.parse_time(s)
	if type(s) ~= "string" then
		return nil, "not a string"
	end
	local y, mo, d, h, mi, sec, rest =
		match(s, "^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(.*)$")
	if not y then
		return nil, "not an ISO-8601 date-time"
	end
	y, mo, d, h, mi, sec = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi),
		tonumber(sec)
	local frac = 0
	local f, after = match(rest, "^[.,](%d+)(.*)$")
	if f then
		frac = tonumber("0." .. f)
		rest = after
	end
	local offset = 0
	if rest == "Z" or rest == "z" or rest == "" then
		offset = 0
	else
		local sign, oh, om = match(rest, "^([+-])(%d%d):?(%d%d)$")
		if not sign then
			return nil, "bad time zone designator"
		end
		oh, om = tonumber(oh), tonumber(om)
		if oh > 23 or om > 59 then
			return nil, "time zone offset out of range"
		end
		offset = (oh * 60 + om) * 60
		if sign == "-" then
			offset = -offset
		end
	end
	if mo < 1 or mo > 12 then
		return nil, "month out of range"
	end
	local dim = mdays[mo]
	if mo == 2 and is_leap(y) then
		dim = 29
	end
	if d < 1 or d > dim then
		return nil, "day out of range"
	end
	if h > 23 or mi > 59 or sec > 60 then
		return nil, "time out of range"
	end
	local days = days_from_civil(y, mo, d)
	return days * 86400 + h * 3600 + mi * 60 + sec + frac - offset
end

--- The clock used for command expiry (seconds since the epoch); replaceable in tests.
M.now = os.time

--- Wrap fn(arguments, meta, message) as a handler for commands: the body is the command's
--- arguments plus `meta = {expired_time = "ISO-8601"}` (or `expiredTime`, or epoch seconds).
--- A command whose expiry has passed is skipped: the handler returns "skipped", reason.
--- `arguments` is a shallow copy of the body without `meta`.
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
					reject(format("command_consumer: meta.expired_time %s: %s", tostring(expired), err))
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

return M
