--- svccomm.testing: run a project's handlers under busted without a broker. Messages go
--- through the consumer's own dispatch (svccomm.dispatch: decoding, KEY_STYLE, routing, the
--- handler wrappers); the outbox rows a handler writes are captured where svccomm.events would
--- insert them; time comes from a fake clock.
---
---     local testing = require "svccomm.testing"
---     local t = testing.project(".")
---     local out = t:deliver("user", "update.name", t:event("user", "update.name", { id = 7 }))
---     assert.are.equal("ok", out.status)
---     assert.are.equal("customer.updated", t.outbox[1].routing_key)
local core = require "svccomm.core"
local db = require "svccomm.db"
local dispatch = require "svccomm.dispatch"
local events = require "svccomm.events"
local handlers = require "svccomm.handlers"
local host = require "svccomm.host"
local json = require "svccomm.json"
local router = require "svccomm.message_router"

local M = {}

local type, tostring, pcall, error, setmetatable = type, tostring, pcall, error, setmetatable
local pairs, ipairs = pairs, ipairs
local time = require "svccomm.time"

local NO_DB = "svccomm.db is not available in this test: set SVCCOMM_TEST_DATABASE_URL to a "
	.. "PostgreSQL URL (each test runs in a transaction rolled back afterwards)"

-- ---------------------------------------------------------------------------------------
-- the fake clock
-- ---------------------------------------------------------------------------------------

local Clock = {}
Clock.__index = Clock

--- Set the time: seconds since the epoch, or an ISO 8601 string ("2026-12-01T10:00:00Z").
function Clock:set(t)
	if type(t) == "string" then
		local s, err = time.parse(t)
		if not s then error("clock:set: " .. tostring(err), 2) end
		t = s
	end
	if type(t) ~= "number" then error("clock:set: expected seconds or an ISO 8601 string", 2) end
	self.t = t
end

--- Move the time forward by seconds.
function Clock:advance(seconds)
	if type(seconds) ~= "number" or seconds < 0 then
		error("clock:advance: expected a number of seconds >= 0", 2)
	end
	self.t = self.t + seconds
end

--- The current fake time (seconds since the epoch).
function Clock:now()
	return self.t
end

-- ---------------------------------------------------------------------------------------
-- the database: a real PostgreSQL in a rolled-back transaction, or a connection that says how
-- to get one
-- ---------------------------------------------------------------------------------------

local no_conn = setmetatable({}, {
	__index = function() return function() error(NO_DB, 3) end end,
	__tostring = function() return "svccomm.testing (no database)" end,
})

local T = {}
T.__index = T

local function open_db(self, url)
	if url == nil then url = os.getenv("SVCCOMM_TEST_DATABASE_URL") end
	if not url or url == "" then
		self.conn = no_conn
		return
	end
	local conn, err = core.connect(url, "svccomm-testing")
	if not conn then error("svccomm.testing: SVCCOMM_TEST_DATABASE_URL: " .. tostring(err), 3) end
	self.conn = conn
	conn:exec("BEGIN")
end

-- ---------------------------------------------------------------------------------------
-- outbox capture
-- ---------------------------------------------------------------------------------------

-- The envelope the relay sends for an event row (outbox/envelope.h SVC_ENVELOPE_SQL).
local function envelope_text(row, id, now)
	local t = row.event_time or core.utc_iso(now)
	local tail = "," .. row.body_rest:match("^%s*{(.*)$")
	if row.wire_format == "django" then
		return '{"eventId":' .. id .. ',"event_time":"' .. t:sub(1, 23) .. 'Z"' .. tail
	end
	return '{"eventId":"' .. id .. '","eventTime":"' .. t .. '"' .. tail
end

-- What a captured row looks like: the message the relay would publish.
local function captured(self, row)
	self.next_id = self.next_id + 1
	local id = self.next_id
	local text = row.envelope and envelope_text(row, id, self.clock.t) or row.body
	local tags = row.tags_json and json.decode(row.tags_json) or nil
	local headers = row.headers_json and json.decode(row.headers_json) or nil
	return {
		id = id,
		exchange = row.exchange,
		routing_key = row.routing_key,
		body = json.decode(text),
		raw = text,
		send_after = row.send_after,
		event_time = row.event_time,
		tags = tags,
		-- as the relay sets it (relay/claim.c): the row's own, else "<APP_ID>:<row id>"
		message_id = row.message_id or (tostring(self.settings.APP_ID) .. ":" .. id),
		correlation_id = row.correlation_id,
		headers = headers,
		envelope = row.envelope or false,
	}
end

-- true when every tag of want is in have (values compared as strings), as outbox_cancel does
local function tags_contain(have, want)
	if not have then return false end
	for k, v in pairs(want) do
		if have[k] == nil or tostring(have[k]) ~= tostring(v) then return false end
	end
	return true
end

local function cancel(self, aggregate, event_type, tags_json)
	local want = json.decode(tags_json)
	local n = 0
	for i = #self.outbox, 1, -1 do
		local r = self.outbox[i]
		if r.exchange == aggregate and r.routing_key == event_type and r.send_after
			and tags_contain(r.tags, want) then
			table.remove(self.outbox, i)
			n = n + 1
		end
	end
	self.cancelled[#self.cancelled + 1] = { aggregate = aggregate, event_type = event_type,
		tags = want, count = n }
	return n
end

-- Installs the kit's clock and outbox capture; returns the function that takes them away.
local function install(self)
	local real_time, real_now = core.time, handlers.now
	local function now() return self.clock.t end
	core.time, handlers.now = now, now
	events._capture = {
		insert = function(row)
			self.outbox[#self.outbox + 1] = captured(self, row)
			return nil -- a consumer's rows are deferred: no id inside the handler
		end,
		cancel = function(a, e, tj) return cancel(self, a, e, tj) end,
	}
	return function()
		core.time, handlers.now = real_time, real_now
		events._capture = nil
	end
end

-- ---------------------------------------------------------------------------------------
-- the project
-- ---------------------------------------------------------------------------------------

--- Load settings.lua and the apps of the project in dir, as runconsumer does, without
--- connecting. The clock starts at the real time. opts.database_url: the PostgreSQL of
--- svccomm.db (default: SVCCOMM_TEST_DATABASE_URL; false: none).
---@param dir string|nil  the project directory (default ".")
---@param opts {database_url:string|false|nil}|nil
---@return table kit
function M.project(dir, opts)
	dir = dir or "."
	opts = opts or {}
	router.reset()
	local s = host.load_settings(dir .. "/settings.lua")
	local ok, err = host.load_apps()
	if not ok then error("svccomm.testing: " .. tostring(err), 2) end
	local self = setmetatable({
		dir = dir, settings = s, outbox = {}, cancelled = {}, next_id = 0,
		clock = setmetatable({ t = core.time() }, Clock),
	}, T)
	open_db(self, opts.database_url)
	return self
end

--- Forget the captured outbox and roll the database back (call it in after_each).
function T:reset()
	self.outbox, self.cancelled = {}, {}
	if self.conn ~= no_conn then
		self.conn:exec("ROLLBACK")
		self.conn:exec("BEGIN")
	end
end

--- Roll back and close the database connection.
function T:close()
	if self.conn ~= no_conn and self.conn then
		pcall(self.conn.exec, self.conn, "ROLLBACK")
		self.conn:close()
	end
	self.conn = nil
end

-- The outcome of a failed handler, as src/consumer/batch.c and retry.c decide it.
local function failure(self, err, attempt, handler, exchange, routing_key)
	local s = self.settings
	local permanent = handlers.is_permanent(err)
	local text = tostring(type(err) == "table" and (err.message or err) or err)
	-- paths relative to the project, as the consumer reports them (lua_bridge.c relative_paths)
	local prefix = (s._DIR or self.dir) .. "/"
	text = text:gsub(prefix:gsub("%p", "%%%0"), "")
	local delays = s.RETRY_DELAYS or {}
	if permanent or #delays == 0 or attempt >= s.MAX_ATTEMPTS then
		local reason = permanent and "permanent-error" or "max-attempts"
		return { status = "dead_letter", reason = reason, error = text, err = err, attempt = attempt,
			headers = {
				["x-svccomm-reason"] = reason, ["x-svccomm-handler"] = handler,
				["x-svccomm-error"] = text, ["x-svccomm-attempts"] = tostring(attempt),
				["x-svccomm-exchange"] = exchange, ["x-svccomm-routing-key"] = routing_key,
			} }
	end
	local i = attempt < 1 and 1 or attempt
	local delay = delays[i <= #delays and i or #delays]
	return { status = "retry", error = text, err = err, delay = delay, attempt = attempt,
		headers = {
			["x-svccomm-attempt"] = tostring(attempt + 1), ["x-svccomm-error"] = text,
			["x-svccomm-exchange"] = exchange, ["x-svccomm-routing-key"] = routing_key,
		} }
end

local function dead_letter(reason, text, exchange, routing_key, attempt)
	return { status = "dead_letter", reason = reason, error = text, attempt = attempt, headers = {
		["x-svccomm-reason"] = reason, ["x-svccomm-error"] = text,
		["x-svccomm-attempts"] = tostring(attempt),
		["x-svccomm-exchange"] = exchange, ["x-svccomm-routing-key"] = routing_key,
	} }
end

-- The message table the consumer hands the handler (src/consumer/lua_bridge.c push_message).
local function message_of(exchange, routing_key, p)
	local headers = p.headers or {}
	return {
		exchange = exchange, routing_key = routing_key, redelivered = p.redelivered or false,
		attempt = p.attempt or 1, correlation_id = p.correlation_id, message_id = p.message_id,
		delivery_tag = 1,
		properties = {
			content_type = p.content_type or "application/json", message_id = p.message_id,
			correlation_id = p.correlation_id, app_id = p.app_id, reply_to = p.reply_to,
			type = p.type, timestamp = p.timestamp, headers = headers,
		},
	}
end

-- Runs dispatch.handle as the consumer's invoke_handler does (lua_bridge.c).
local function run(self, exchange, routing_key, body, message)
	local p = message.properties
	local restore = install(self)
	-- db.exec returns what it returns under runconsumer (true when CONSUMER_PIPELINE is on;
	-- here the statement runs at once, so its error reaches the handler)
	db._enter_host(self.conn, self.settings.CONSUMER_PIPELINE ~= false)
	events._set_context { correlation_id = p.correlation_id,
		traceparent = type(p.headers.traceparent) == "string" and p.headers.traceparent or nil }
	local ok, status, reason = pcall(dispatch.handle, exchange, routing_key, body, message)
	events._clear_context()
	db._leave_host()
	restore()
	return ok, status, reason
end

--- Deliver a message as the consumer would and return the outcome: {status = "ok" |
--- "skipped" | "retry" | "dead_letter" | "unrouted", ...}. body: a table (JSON-encoded first)
--- or a string (delivered as bytes). properties: attempt, correlation_id, message_id,
--- reply_to, headers (traceparent, ...), as in the message table a handler gets.
---@param exchange string
---@param routing_key string
---@param body table|string
---@param properties table|nil
---@return table outcome
function T:deliver(exchange, routing_key, body, properties)
	if type(body) ~= "string" then body = json.encode(body) end
	local p = properties or {}
	local message = message_of(exchange, routing_key, p)
	local attempt = message.attempt
	local mark = #self.outbox
	local sp = self.conn ~= no_conn
	if sp then self.conn:exec("SAVEPOINT svccomm_testing") end
	local ok, status, reason = run(self, exchange, routing_key, body, message)
	local handler = dispatch.last_handler()
	local out
	if not ok then
		out = failure(self, status, attempt, handler, exchange, routing_key)
	elseif status == "unrouted" then
		out = dispatch.config().UNROUTED == "dead-letter"
			and dead_letter("unrouted", reason, exchange, routing_key, attempt)
			or { status = "unrouted", action = "ack", reason = reason }
		if out.status == "dead_letter" then out.unrouted = true end
	elseif status == "malformed" then
		local kind = (reason:find("nested") or reason:find("depth")) and "too-deep"
			or reason:find("^invalid JSON") and "invalid-json" or status
		out = dead_letter(kind, reason, exchange, routing_key, attempt)
	else
		out = { status = status, reason = reason }
	end
	out.handler = handler
	if out.status == "retry" or out.status == "dead_letter" then
		-- the handler's transaction is rolled back: its outbox rows go with it
		for i = #self.outbox, mark + 1, -1 do self.outbox[i] = nil end
		if sp then self.conn:exec("ROLLBACK TO SAVEPOINT svccomm_testing") end
	elseif sp then
		self.conn:exec("RELEASE SAVEPOINT svccomm_testing")
	end
	return out
end

--- The envelope (a Lua table) a relay publishes for this event, at the fake clock's time,
--- in the project's WIRE_FORMAT and KEY_STYLE: what svccomm.publish_aggregate_event writes.
---@param aggregate string
---@param event_type string
---@param payload any
---@return table envelope
function T:event(aggregate, event_type, payload)
	local saved, saved_next = self.outbox, self.next_id
	self.outbox = {}
	local restore = install(self)
	db._enter_host(no_conn)
	local ok, err = pcall(events.publish_aggregate_event, aggregate, event_type, payload)
	db._leave_host()
	restore()
	local row = self.outbox[1]
	self.outbox, self.next_id = saved, saved_next + 1
	if not ok then error(err, 2) end
	return row.body
end

--- The captured outbox rows a relay would send now (send_after empty or at most the fake
--- clock's time), in order.
---@return table[]
function T:due_events()
	local out = {}
	for _, r in ipairs(self.outbox) do
		if not r.send_after or (time.parse(r.send_after) or 0) <= self.clock.t then
			out[#out + 1] = r
		end
	end
	return out
end

--- The captured rows whose exchange and routing key match (either nil: any).
---@return table[]
function T:sent(exchange, routing_key)
	local out = {}
	for _, r in ipairs(self.outbox) do
		if (exchange == nil or r.exchange == exchange) and (routing_key == nil or r.routing_key == routing_key) then
			out[#out + 1] = r
		end
	end
	return out
end

M.NO_DB = NO_DB

return M
