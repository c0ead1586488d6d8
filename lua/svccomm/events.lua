--- svccomm.events: the outbox write side. Every function here writes (or deletes) outbox rows
--- in the caller's current PostgreSQL transaction (svccomm.db.current(): a consumer
--- handler's transaction, or db:transaction()); `svccomm runpublisher` sends them after
--- commit. Outside a transaction they raise and write nothing.
---
--- Inside a consumer handler the rows are deferred: the batch's rows are inserted with one
--- statement just before its COMMIT (a row the database refuses then fails the batch, which is
--- retried one message at a time), and each takes its id (the eventId) there, from the
--- table's sequence like any other writer's row, while the transaction holds its locks: so the
--- relay's id order keeps per-aggregate order against other writers. The functions therefore
--- return nil instead of the id inside a handler (send_call still returns its call id). Until
--- then SQL in the handler does not see the rows; cancel_future_* and a nested
--- db:transaction() write the pending rows first.
---
--- Event envelope (the body of the row, published as is):
---   {"eventId":"<row id>","eventTime":"2023-06-02T10:58:58.340174Z",
---    "eventType":"<event_type>","aggregate":"<aggregate>","payload":<payload>}
--- exchange = aggregate, routing key = event_type. eventId is the row id as a string (the
--- relay's AMQP message_id is "<APP_ID>:<row id>"); eventTime is UTC with microseconds: the
--- client's clock at insert (clock_gettime), or the due time of a scheduled event.
---
--- Payload encoding (svccomm.json.encode): any Lua value made of tables, strings (UTF-8),
--- numbers, booleans and svccomm.null. An empty table is an object {}; use svccomm.array()
--- (or svccomm.array(t)) for an empty array []. NaN/infinity, functions, userdata, cycles,
--- mixed or sparse tables and tables nested deeper than MAX_JSON_DEPTH raise a clear error
--- before anything is written. Object keys are written sorted. With KEY_STYLE = "snake" the
--- keys of payloads, command arguments and call data are camelCased (svccomm.keys.to_camel);
--- the envelope and meta keys are fixed.
---
--- WIRE_FORMAT = "django" writes exactly the Python library 2.6's bodies instead (readers
--- accept both): events {"eventId":<row id as a JSON number>,"event_time":"<UTC, ms>",
--- "event_type","aggregate","payload"}; the relay sends them as content type text/json.
---
--- Commands: exchange = service, routing key = command_name, AMQP message_id =
--- "<APP_ID>:<row id>" (set by the relay), body = the arguments object plus meta =
--- {expired_time = "<ISO UTC>" | null} ("django": meta = {expiredTime = "<ISO UTC, ms>"} or {}).
--- Calls: exchange = service, routing key = "<method>" (the Python library's), message_id =
--- the call id, body = {id, call_id (the same uuid), service_name, method_name, reply_to,
--- data, meta = {time, replyTo, expiredTime}} ("django": {id = <a JSON number from the
--- outbox id sequence>, data, meta = {time, replyTo, expiredTime}}). The response, written
--- by svccomm.handlers.call_consumer in the handler's transaction (through
--- _write_call_response): exchange = reply_to, routing key =
--- "call-response.<exchange of the call>.<routing key of the call>", correlation_id = the
--- call id, body = {id, call_id (the call's id, with its JSON type), service_name,
--- method_name, data = handler result, meta = {time}} ("django": {id, data, meta = {time}}).
local core = require "svccomm.core"
local db = require "svccomm.db"
local json = require "svccomm.json"
local keys = require "svccomm.keys"
local checks = require "svccomm.settings_checks"
local time = require "svccomm.time"

local M = {}

local type, error, tostring, pairs, pcall, format = type, error, tostring, pairs, pcall, string.format
local math_type, huge = math.type, math.huge
local find, concat = string.find, table.concat

local config = {
	OUTBOX_TABLE = "svccomm_outbox",
	KEY_STYLE = "preserve",
	WIRE_FORMAT = "svccomm",
	APP_ID = "svccomm",
	MAX_JSON_DEPTH = 128,
}

--- Mark a table as a JSON array (an empty one encodes as []).
M.array = json.array

--- Configure the outbox writes (the binary does it from settings.lua).
---@param opts {OUTBOX_TABLE: string|nil, KEY_STYLE: "preserve"|"snake"|nil, WIRE_FORMAT: "svccomm"|"django"|nil, APP_ID: string|nil, MAX_JSON_DEPTH: integer|nil}
function M.configure(opts)
	if type(opts) ~= "table" then
		error("events.configure: expected a table", 2)
	end
	local new = {}
	for k, v in pairs(config) do
		new[k] = v
	end
	if opts.OUTBOX_TABLE ~= nil then
		local ok, err = core.quote_ident(tostring(opts.OUTBOX_TABLE))
		if type(opts.OUTBOX_TABLE) ~= "string" or not ok then
			error("events.configure: OUTBOX_TABLE: " .. (err or "must be a string"), 2)
		end
		new.OUTBOX_TABLE = opts.OUTBOX_TABLE
	end
	if opts.KEY_STYLE ~= nil then
		if opts.KEY_STYLE ~= "preserve" and opts.KEY_STYLE ~= "snake" then
			error('events.configure: KEY_STYLE: must be "preserve" or "snake"', 2)
		end
		new.KEY_STYLE = opts.KEY_STYLE
	end
	if opts.WIRE_FORMAT ~= nil then
		if opts.WIRE_FORMAT ~= "svccomm" and opts.WIRE_FORMAT ~= "django" then
			error('events.configure: WIRE_FORMAT: must be "svccomm" or "django"', 2)
		end
		new.WIRE_FORMAT = opts.WIRE_FORMAT
	end
	if opts.APP_ID ~= nil then
		if type(opts.APP_ID) ~= "string" or opts.APP_ID == "" then
			error("events.configure: APP_ID: must be a non-empty string", 2)
		end
		new.APP_ID = opts.APP_ID
	end
	if opts.MAX_JSON_DEPTH ~= nil then
		if math_type(opts.MAX_JSON_DEPTH) ~= "integer" or opts.MAX_JSON_DEPTH < 1 then
			error("events.configure: MAX_JSON_DEPTH: must be a positive integer", 2)
		end
		new.MAX_JSON_DEPTH = opts.MAX_JSON_DEPTH
	end
	config = new
end

--- The current configuration (a copy).
---@return table
function M.config()
	local c = {}
	for k, v in pairs(config) do
		c[k] = v
	end
	return c
end

--- (for svccomm.testing) {insert = fn(row) -> id|nil, cancel = fn(aggregate, event_type,
--- tags_json) -> n}: outbox writes go there instead of the database. nil otherwise.
M._capture = nil

-- Context the consumer sets for the duration of a handler: {correlation_id=, traceparent=}.
local host_ctx = nil

--- (for the consumer) the incoming message's correlation id and traceparent.
---@param ctx table|nil
function M._set_context(ctx)
	host_ctx = ctx
end

--- (for the consumer) the handler is over.
function M._clear_context()
	host_ctx = nil
end

-- ---------------------------------------------------------------------------------------
-- helpers
-- ---------------------------------------------------------------------------------------

local function current(fname)
	local d = db.current()
	if not d then
		error(fname .. ": no transaction: outbox rows are written in the caller's PostgreSQL "
			.. "transaction; call it inside a consumer handler or inside "
			.. "db:transaction(function() ... end)", 3)
	end
	return d
end

local function check_name(fname, what, v)
	if type(v) ~= "string" or v == "" then
		error(format("%s: %s must be a non-empty string, got %s", fname, what,
			type(v) == "string" and '""' or type(v)), 3)
	end
	if #v > 255 then
		error(format("%s: %s is longer than 255 bytes", fname, what), 3)
	end
	if find(v, "\0", 1, true) then -- the name is stored as a C string: "a\0evil" would be "a"
		error(format("%s: %s contains a zero byte", fname, what), 3)
	end
end

-- A table argument with a key the function does not know is a typo ({paylod = ...} once
-- published an empty payload): refuse it, naming the key and the likely one.
local function known_keys(fname, what, t, names, level)
	for k in pairs(t) do
		local known = false
		for i = 1, #names do
			if k == names[i] then
				known = true
				break
			end
		end
		if not known then
			local s = type(k) == "string" and checks.closest(k, names)
			error(format("%s: %s: unknown key %s (%s)", fname, what, tostring(k),
				s and ("did you mean " .. s .. "?") or ("known: " .. concat(names, ", "))), level or 3)
		end
	end
end

-- The table form of publish_*: its known keys, and a payload that must be given (a misspelt
-- one would otherwise become {}).
local function event_table(fname, t, names)
	known_keys(fname, "argument table", t, names, 4)
	if t.payload == nil then
		error(fname .. ": payload is required in the table form (give {} for an empty one)", 3)
	end
end

local function to_json(fname, what, value, convert)
	local ok, res = pcall(function()
		if convert and config.KEY_STYLE == "snake" and type(value) == "table" then
			value = keys.to_camel(value)
		end
		return json.encode(value, config.MAX_JSON_DEPTH, what)
	end)
	if not ok then
		error(fname .. ": " .. tostring(res), 3)
	end
	return res
end

local function quote(s)
	return json.encode(s)
end

-- seconds since the epoch for a time given as a number or an ISO 8601 string
local function to_seconds(fname, what, t)
	if type(t) == "number" then
		if t ~= t or t == huge or t == -huge then
			error(format("%s: %s is not a finite number", fname, what), 3)
		end
		return t
	elseif type(t) == "string" then
		local s, err = time.parse(t)
		if not s then
			error(format("%s: %s %q: %s", fname, what, t, err), 3)
		end
		return s
	end
	error(format("%s: %s must be seconds since the epoch or an ISO 8601 string, got %s", fname,
		what, type(t)), 3)
end

local function tags_json(fname, tags, required)
	if tags == nil then
		if required then
			error(fname .. ": tags must be a non-empty table", 3)
		end
		return nil
	end
	if type(tags) ~= "table" then
		error(fname .. ": tags must be a table of string keys, got " .. type(tags), 3)
	end
	local t, n = {}, 0
	for k, v in pairs(tags) do
		if type(k) ~= "string" then
			error(fname .. ": tags keys must be strings", 3)
		end
		local tv = type(v)
		if tv == "string" then
			t[k] = v
		elseif tv == "number" then
			t[k] = math_type(v) == "integer" and format("%d", v) or tostring(v)
		elseif tv == "boolean" then
			t[k] = tostring(v)
		else
			error(format("%s: tags.%s must be a string, number or boolean", fname, k), 3)
		end
		n = n + 1
	end
	if n == 0 then
		if required then
			error(fname .. ": tags must not be empty (it would match every scheduled event)", 3)
		end
		return nil
	end
	local ok, res = pcall(json.encode, t, 2, "tags")
	if not ok then
		error(fname .. ": " .. res, 3)
	end
	return res
end

-- The outbox id sequence of the current table (looked up once per connection and table: a
-- catalog scan per row otherwise; nextval() still resolves it by name each time).
local function id_sequence(d)
	local seqs = d._seqs
	if not seqs then
		seqs = {}
		d._seqs = seqs
	end
	local table_name = config.OUTBOX_TABLE
	local seq = seqs[table_name]
	if not seq then
		local rs = d.conn:query("SELECT pg_get_serial_sequence($1, 'id') AS s",
			core.quote_ident(table_name))
		seq = rs[1] and rs[1].s
		if seq then
			seqs[table_name] = seq
		end
	end
	return seq
end

local function insert(d, row)
	local ctx = d._ctx
	local hc = host_ctx
	if row.correlation_id == nil then
		row.correlation_id = (ctx and ctx.correlation_id) or (hc and hc.correlation_id) or nil
	end
	local tp = (ctx and ctx.traceparent) or (hc and hc.traceparent)
	if tp then
		row.headers_json = '{"traceparent":' .. quote(tp) .. "}"
	end
	if M._capture then -- svccomm.testing: the row as written, kept instead of inserted
		return M._capture.insert(row)
	end
	row.id_sequence = id_sequence(d)
	return core.outbox_insert(d.conn, config.OUTBOX_TABLE, row)
end

-- nil for a row deferred inside a consumer handler: its id is taken when the batch is written
local function id_string(id)
	return id and format("%d", id) or nil
end

-- the envelope's members after eventId and eventTime (outbox/envelope.h builds the envelope)
local function event_body(event_type, aggregate, payload_json)
	return core.envelope_members(quote(event_type), quote(aggregate), payload_json,
		config.WIRE_FORMAT)
end

-- A time in meta as the wire format writes it: microseconds, or the Python library's
-- milliseconds
local function wire_time(t)
	local iso = core.utc_iso(t)
	if config.WIRE_FORMAT == "django" then
		return iso:sub(1, 23) .. "Z"
	end
	return iso
end

-- ---------------------------------------------------------------------------------------
-- events
-- ---------------------------------------------------------------------------------------

-- The write of publish_aggregate_event and publish_future_aggregate_event (when: the due time
-- of a scheduled event, also its eventTime). Called in tail position, so the level-3 errors of
-- to_json, tags_json and current still point at the application's call.
local function write_event(F, aggregate, event_type, payload, when, tags)
	if payload == nil then
		payload = {}
	end
	local pj = to_json(F, "payload", payload, true)
	local tj = when and tags_json(F, tags, false) or nil
	local d = current(F)
	local id = insert(d, {
		exchange = aggregate,
		routing_key = event_type,
		body_rest = event_body(event_type, aggregate, pj),
		envelope = true,
		wire_format = config.WIRE_FORMAT,
		send_after = when,
		event_time = when,
		tags_json = tj,
	})
	return id_string(id)
end

--- Write an event to the outbox in the current transaction; returns its eventId (nil inside a
--- consumer handler: the id is taken when the batch's rows are written, see above).
--- Named: publish_aggregate_event{aggregate=, event_type=, payload=[, delay=]} or positional
--- (aggregate, event_type, payload). A nil payload is {}. delay = seconds (>= 0, named form
--- only) publishes it that much later: the same as publish_future_aggregate_event with
--- event_time = now + delay (eventTime is the due time).
---@param aggregate string|table
---@param event_type string|nil
---@param payload any
---@return string|nil event_id
function M.publish_aggregate_event(aggregate, event_type, payload)
	local F = "publish_aggregate_event"
	local when
	if type(aggregate) == "table" and event_type == nil then
		local a = aggregate
		event_table(F, a, { "aggregate", "event_type", "payload", "delay" })
		aggregate, event_type, payload = a.aggregate, a.event_type, a.payload
		if a.delay ~= nil then
			local dl = a.delay
			if type(dl) ~= "number" or dl ~= dl or dl < 0 or dl == huge then
				error(format("%s: delay must be a number of seconds >= 0, got %s", F, tostring(dl)), 2)
			end
			when = core.utc_iso(core.time() + dl)
		end
	end
	check_name(F, "aggregate", aggregate)
	check_name(F, "event_type", event_type)
	return write_event(F, aggregate, event_type, payload, when) -- a tail call: errors still blame the caller
end

--- Schedule an event: published once event_time (seconds since the epoch, or an ISO 8601
--- string; no zone = UTC) has come. eventTime of the envelope is event_time. tags (string
--- keys, values compared as strings) let cancel_future_aggregate_event find it. Named or
--- positional (aggregate, event_type, event_time, payload, tags). Returns the eventId (nil
--- inside a consumer handler).
---@param aggregate string|table
---@return string|nil event_id
function M.publish_future_aggregate_event(aggregate, event_type, event_time, payload, tags)
	local F = "publish_future_aggregate_event"
	if type(aggregate) == "table" and event_type == nil then
		local a = aggregate
		event_table(F, a, { "aggregate", "event_type", "event_time", "payload", "tags" })
		aggregate, event_type, event_time, payload, tags =
			a.aggregate, a.event_type, a.event_time, a.payload, a.tags
	end
	check_name(F, "aggregate", aggregate)
	check_name(F, "event_type", event_type)
	if event_time == nil then
		error(F .. ": event_time is required", 2)
	end
	local when = core.utc_iso(to_seconds(F, "event_time", event_time))
	return write_event(F, aggregate, event_type, payload, when, tags)
end

--- Delete every pending (not yet published) event of aggregate + event_type whose tags
--- contain all the given tags (values compared as strings). Empty tags is an error. Named or
--- positional (aggregate, event_type, tags). Returns the number of events cancelled.
---@return integer cancelled
function M.cancel_future_aggregate_event(aggregate, event_type, tags)
	local F = "cancel_future_aggregate_event"
	if type(aggregate) == "table" and event_type == nil then
		local a = aggregate
		known_keys(F, "argument table", a, { "aggregate", "event_type", "tags" })
		aggregate, event_type, tags = a.aggregate, a.event_type, a.tags
	end
	check_name(F, "aggregate", aggregate)
	check_name(F, "event_type", event_type)
	local tj = tags_json(F, tags, true)
	local d = current(F)
	if M._capture then
		return M._capture.cancel(aggregate, event_type, tj)
	end
	return core.outbox_cancel(d.conn, config.OUTBOX_TABLE, aggregate, event_type, tj)
end

-- ---------------------------------------------------------------------------------------
-- commands and calls
-- ---------------------------------------------------------------------------------------

-- expiry from opts {timeout=, expired_time=}: ISO text or nil
local function expiry(F, opts)
	local timeout, expired = opts.timeout, opts.expired_time
	if timeout ~= nil and expired ~= nil then
		error(F .. ": give timeout or expired_time, not both", 3)
	end
	local now = core.time()
	local t
	if timeout ~= nil then
		if type(timeout) ~= "number" or timeout ~= timeout or timeout <= 0 or timeout == huge then
			error(F .. ": timeout must be a positive number of seconds", 3)
		end
		t = now + timeout
	elseif expired ~= nil then
		t = to_seconds(F, "expired_time", expired)
		if t <= now then
			error(format("%s: expired_time %s is in the past", F, core.utc_iso(t)), 3)
		end
	else
		return nil
	end
	return t
end

local function object_copy(F, what, t)
	if t == nil then
		return {}
	end
	if type(t) ~= "table" then
		error(format("%s: %s must be a table (a JSON object), got %s", F, what, type(t)), 3)
	end
	local c = {}
	for k, v in pairs(t) do
		if type(k) ~= "string" then
			error(format("%s: %s must have string keys only (a JSON object)", F, what), 3)
		end
		c[k] = v
	end
	return c
end

--- Write a command for another service: exchange = service, routing key =
--- opts.command_name, body = arguments + meta.expired_time (opts.timeout seconds from now,
--- or opts.expired_time; not both; not in the past). Returns the row id (nil inside a
--- consumer handler).
---@param service string
---@param arguments table|nil
---@param opts {command_name: string, timeout: number|nil, expired_time: number|string|nil}
---@return string|nil row_id
function M.send_command(service, arguments, opts)
	local F = "send_command"
	check_name(F, "service", service)
	if type(opts) ~= "table" then
		error(F .. ": opts must be a table with command_name", 2)
	end
	known_keys(F, "opts", opts, { "command_name", "timeout", "expired_time" })
	check_name(F, "command_name", opts.command_name)
	local exp = expiry(F, opts)
	local args = arguments
	if config.KEY_STYLE == "snake" and type(args) == "table" then
		local ok, res = pcall(keys.to_camel, args)
		if not ok then
			error(F .. ": arguments: " .. tostring(res), 2)
		end
		args = res
	end
	local body = object_copy(F, "arguments", args)
	local meta = object_copy(F, "arguments.meta", body.meta)
	if config.WIRE_FORMAT == "django" then
		meta.expiredTime = exp and wire_time(exp) or nil
	else
		meta.expired_time = exp and core.utc_iso(exp) or json.null
	end
	body.meta = meta
	local bj = to_json(F, "arguments", body, false)
	local d = current(F)
	return id_string(insert(d, {
		exchange = service,
		routing_key = opts.command_name,
		body = bj,
	}))
end

--- Call a method of another service: writes the call (exchange = service, routing key =
--- method, as the Python library does) and returns the call id (a string). The response
--- comes to exchange opts.reply_to (default APP_ID) with routing key
--- "call-response.<service>.<method>"; handle it with call_response_consumer.
--- opts.timeout (seconds) or opts.expired_time sets meta.expiredTime.
---@param service string
---@param method string
---@param data any
---@param opts {reply_to: string|nil, timeout: number|nil, expired_time: number|string|nil}|nil
---@return string call_id
function M.send_call(service, method, data, opts)
	local F = "send_call"
	check_name(F, "service", service)
	check_name(F, "method", method)
	if opts ~= nil and type(opts) ~= "table" then
		error(F .. ": opts must be a table", 2)
	end
	opts = opts or {}
	known_keys(F, "opts", opts, { "reply_to", "timeout", "expired_time" })
	local reply_to = opts.reply_to or config.APP_ID
	check_name(F, "reply_to", reply_to)
	local exp = expiry(F, opts)
	local dj = to_json(F, "data", data, true)
	local d = current(F)
	local meta = '{"time":' .. quote(wire_time(core.time())) .. ',"replyTo":' .. quote(reply_to)
		.. (exp and (',"expiredTime":' .. quote(wire_time(exp))) or "") .. "}"
	local call_id, body, message_id
	if config.WIRE_FORMAT == "django" then
		-- the Python library's call id: a JSON number from its outbox id sequence
		local rs = d.conn:query("SELECT nextval($1::regclass)::text AS id", id_sequence(d))
		call_id = rs[1].id
		body = '{"id":' .. call_id .. ',"data":' .. dj .. ',"meta":' .. meta .. "}"
	else
		call_id = core.uuid4()
		message_id = call_id
		local q = quote(call_id)
		body = '{"id":' .. q .. ',"call_id":' .. q .. ',"service_name":' .. quote(service)
			.. ',"method_name":' .. quote(method) .. ',"reply_to":' .. quote(reply_to)
			.. ',"data":' .. dj .. ',"meta":' .. meta .. "}"
	end
	insert(d, {
		exchange = service,
		routing_key = method,
		body = body,
		message_id = message_id,
	})
	return call_id
end

--- (for svccomm.handlers.call_consumer) Write the response to a call in the current
--- transaction: exchange = reply_to, routing key = routing_key, correlation_id = the call
--- id, body = {id = call_id, call_id, data = result, meta = {time}, method_name,
--- service_name} ("django": {id, data, meta = {time}}). call_id keeps its JSON type.
---@param reply_to string
---@param routing_key string  call-response.<exchange of the call>.<routing key of the call>
---@param call_id string|number
---@param result any  the handler's result
---@param service any  the called service (tostring'd)
---@param method any  the called method (tostring'd)
function M._write_call_response(reply_to, routing_key, call_id, result, service, method)
	local F = "call_consumer"
	local rj = to_json(F, "result", result, true)
	local d = current(F)
	local id = json.encode(call_id)
	local meta = '{"time":' .. quote(wire_time(core.time())) .. "}"
	local body
	if config.WIRE_FORMAT == "django" then
		body = '{"id":' .. id .. ',"data":' .. rj .. ',"meta":' .. meta .. "}"
	else
		body = '{"id":' .. id .. ',"call_id":' .. id .. ',"service_name":'
			.. quote(tostring(service)) .. ',"method_name":' .. quote(tostring(method))
			.. ',"data":' .. rj .. ',"meta":' .. meta .. "}"
	end
	local cid = call_id
	if type(cid) == "number" then
		cid = json.encode(cid)
	end
	insert(d, {
		exchange = reply_to,
		routing_key = routing_key,
		body = body,
		correlation_id = cid,
	})
end

-- ---------------------------------------------------------------------------------------
-- correlation
-- ---------------------------------------------------------------------------------------

--- Set the correlation id stored with every row the current transaction writes from now on
--- (inside a handler the incoming message's correlation id is used by default). nil clears.
---@param id string|nil
function M.set_correlation_id(id)
	if id ~= nil and (type(id) ~= "string" or #id > 255) then
		error("set_correlation_id: id must be a string of at most 255 bytes or nil", 2)
	end
	local d = current("set_correlation_id")
	d._ctx = d._ctx or {}
	d._ctx.correlation_id = id
end

--- Set the W3C traceparent ("00-<32 hex>-<16 hex>-<2 hex>") sent as an AMQP header with
--- every row the current transaction writes from now on. nil clears.
---@param tp string|nil
function M.set_traceparent(tp)
	if tp ~= nil then
		if type(tp) ~= "string" or not tp:match("^%x%x%-%x+%-%x+%-%x%x$") then
			error("set_traceparent: not a W3C traceparent (00-<trace id>-<parent id>-<flags>)", 2)
		end
		local v, trace, parent = tp:match("^(%x%x)%-(%x+)%-(%x+)%-")
		if #trace ~= 32 or #parent ~= 16 or v:lower() == "ff" then
			error("set_traceparent: not a W3C traceparent (00-<trace id>-<parent id>-<flags>)", 2)
		end
		tp = tp:lower()
	end
	local d = current("set_traceparent")
	d._ctx = d._ctx or {}
	d._ctx.traceparent = tp
end

return M
