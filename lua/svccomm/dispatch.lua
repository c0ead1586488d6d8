--- Per-message dispatch, called by the C consume loop: decode the body, convert keys if asked,
--- route, run the handler.
--
-- JSON null decodes to `cjson.null` (a light userdata, also `dispatch.null`), never to nil, so
-- a key present with null is distinguishable from a missing key. Integers that fit in int64
-- decode as Lua integers, other numbers as floats (svccomm.json.try_decode).
local M = {}

local type, tostring, format = type, tostring, string.format

local router = require("svccomm.message_router")
local keys = require("svccomm.keys")
local json = require("svccomm.json")

M.null = json.null

local config = { MAX_JSON_DEPTH = 128, KEY_STYLE = "preserve", UNROUTED = "ack" }
local try_decode = json.try_decode
local to_snake = keys.to_snake
local snake = false
local last -- route chosen for the last message

--- Configure decoding and key style (from the normalized settings). Unset fields keep
--- their current value.
---@param opts {MAX_JSON_DEPTH:integer|nil, KEY_STYLE:string|nil, UNROUTED:string|nil}
function M.configure(opts)
	if opts ~= nil and type(opts) ~= "table" then
		error("configure: expected a table of settings", 2)
	end
	opts = opts or {}
	local depth = opts.MAX_JSON_DEPTH or config.MAX_JSON_DEPTH
	if math.type(depth) ~= "integer" or depth < 1 or depth > 1000 then
		error("configure: MAX_JSON_DEPTH must be a positive integer (at most 1000)", 2)
	end
	local style = opts.KEY_STYLE or config.KEY_STYLE
	if style ~= "preserve" and style ~= "snake" then
		error('configure: KEY_STYLE must be "preserve" or "snake"', 2)
	end
	local unrouted = opts.UNROUTED or config.UNROUTED
	if unrouted ~= "ack" and unrouted ~= "dead-letter" then
		error('configure: UNROUTED must be "ack" or "dead-letter"', 2)
	end
	config = { MAX_JSON_DEPTH = depth, KEY_STYLE = style, UNROUTED = unrouted }
	snake = style == "snake"
end

--- The active configuration (a copy).
---@return table
function M.config()
	return { MAX_JSON_DEPTH = config.MAX_JSON_DEPTH, KEY_STYLE = config.KEY_STYLE,
		UNROUTED = config.UNROUTED }
end

--- Handle one message. Returns "ok", "unrouted", reason, "skipped", reason (a handler, e.g. an
--- expired command, returned "skipped") or "malformed", reason (invalid JSON, too deep). A
--- handler error propagates to the caller (the C side calls this under a protected call).
---@param exchange string
---@param routing_key string
---@param body_string string  the raw body (UTF-8 and size already checked by C)
---@param message table|nil   exchange, routing_key, redelivered, attempt, properties, ...
---@return string status, string|nil reason
function M.handle(exchange, routing_key, body_string, message)
	last = nil
	local body, err = try_decode(body_string, config.MAX_JSON_DEPTH)
	if body == nil then
		return "malformed", "invalid JSON: " .. tostring(err)
	end
	if snake then
		body = to_snake(body)
	end
	local entry = router.match(exchange, routing_key)
	if not entry then
		return "unrouted", format("no handler for exchange '%s' routing key '%s'", exchange,
			routing_key)
	end
	last = entry
	local status, reason = entry.fn(routing_key, body, message)
	if status == "skipped" then
		return "skipped", reason ~= nil and tostring(reason) or nil
	end
	return "ok"
end

--- "app:file:line" of the handler chosen for the last message ("-" as app outside any app),
--- or nil when the last message was not routed.
---@return string|nil
function M.last_handler()
	return last and last.handler_id
end

M.configure()

return M
