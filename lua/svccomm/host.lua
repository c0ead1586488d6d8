--- What the svccomm binary asks of the Lua side: load settings and apps, describe them for
--- `svccomm check`, write an event for `svccomm publish`. Not part of the public API.
local apps = require "svccomm.apps"
local dispatch = require "svccomm.dispatch"
local events = require "svccomm.events"
local json = require "svccomm.json"
local router = require "svccomm.message_router"
local settings_mod = require "svccomm.settings"
local svccomm = require "svccomm"
local time = require "svccomm.time"
local core = require "svccomm.core"

local M = {}

local type, ipairs, pairs, pcall, tostring, assert = type, ipairs, pairs, pcall, tostring, assert
local format, rep = string.format, string.rep
local concat, sort, max = table.concat, table.sort, math.max

---@type table|nil the normalized settings once load_settings succeeded
M.settings = nil

--- Loads and validates the settings file and configures the modules that depend on it.
---@param path string
---@return table settings
function M.load_settings(path)
	local s = settings_mod.load(path)
	M.settings = s
	events.configure {
		OUTBOX_TABLE = s.OUTBOX_TABLE, KEY_STYLE = s.KEY_STYLE, APP_ID = s.APP_ID,
		WIRE_FORMAT = s.WIRE_FORMAT,
		MAX_JSON_DEPTH = s.MAX_JSON_DEPTH,
	}
	dispatch.configure {
		MAX_JSON_DEPTH = s.MAX_JSON_DEPTH, KEY_STYLE = s.KEY_STYLE, UNROUTED = s.UNROUTED,
	}
	return s
end

--- Loads every installed app. Returns true, or nil and a message naming the app.
---@return boolean|nil ok
---@return string|nil err
function M.load_apps(keep)
	local s = assert(M.settings, "load_settings first")
	local ok, err = pcall(apps.load_all, s._DIR, s.INSTALLED_APPS)
	if not ok then
		return nil, tostring(err)
	end
	-- a reload (devconsumer) must not drop an app silently: its routes would just vanish
	for name in (keep or ""):gmatch("[^\n]+") do
		local found = false
		for _, a in ipairs(apps.loaded()) do
			found = found or a.name == name
		end
		if not found then
			return nil, format("app '%s' is gone (its folder or consumers.lua was removed, or it left "
				.. "INSTALLED_APPS): restart devconsumer to run without it", name)
		end
	end
	return true
end

--- The names of the apps loaded, one per line (what a reload must keep).
---@return string
function M.app_names()
	local names = {}
	for i, a in ipairs(apps.loaded()) do
		names[i] = a.name
	end
	return concat(names, "\n")
end

-- The line that registered a route (what to edit to change it) and, when the function is
-- defined elsewhere, where: "apps/a/consumers.lua:17 (function at :7)".
local function handler_place(r)
	local where, defined = r.where or "?", r.defined_at or "?"
	if where == defined or defined == "?" then
		return where
	end
	local wf, df, dl = where:match("^(.*):%d+$"), defined:match("^(.*):(%d+)$")
	if wf and wf == df then
		return format("%s (function at :%s)", where, dl)
	end
	return format("%s (function at %s)", where, defined)
end

local function rows_to_text(rows)
	local widths = {}
	for _, row in ipairs(rows) do
		for i, cell in ipairs(row) do
			widths[i] = max(widths[i] or 0, #cell)
		end
	end
	local out = {}
	for _, row in ipairs(rows) do
		local cells = {}
		for i, cell in ipairs(row) do
			cells[i] = i < #row and cell .. rep(" ", widths[i] - #cell) or cell
		end
		out[#out + 1] = "  " .. concat(cells, "  ")
	end
	return concat(out, "\n")
end

local function sorted_keys(t)
	local keys = {}
	for k in pairs(t) do keys[#keys + 1] = k end
	sort(keys)
	return keys
end

--- Adds the "tls:" lines of `svccomm check` (file names and switches, never key material);
--- returns the number of warnings (verification off) it added.
---@param s table  normalized settings
---@param add fun(fmt:string, ...)
---@return integer warnings
function M.tls_lines(s, add)
	local t = s.BROKER_TLS
	if not settings_mod.broker_urls(s)[1]:lower():find("^amqps://") then
		add("tls:      off (amqp:// URL)")
		return 0
	end
	local function onoff(b) return b and "on" or "OFF" end
	add("tls:      CA file %s", t.ca_file or "/etc/ssl/certs/ca-certificates.crt (system store)")
	add("          client certificate %s", t.cert_file
		and (t.cert_file .. (t.key_file and t.key_file ~= t.cert_file and ", key file " .. t.key_file or ""))
		or "(none)")
	add("          verify peer %s, verify host name %s; TLS 1.2 or later", onoff(t.verify_peer),
		onoff(t.verify_hostname))
	if t.verify_peer and t.verify_hostname then
		return 0
	end
	add("warning: BROKER_TLS: %s verification is off: a man in the middle can read and change "
		.. "the broker connection", not t.verify_peer and "certificate" or "host name")
	return 1
end

--- Where each key an environment variable can override got its value: the settings file, its
--- default or the variable (an exported SVCCOMM_DATABASE_URL silently wins otherwise).
---@param s table  validated settings (with _SOURCES)
---@param add fun(fmt:string, ...)
function M.source_lines(s, add)
	local rows = {}
	for _, row in ipairs(require("svccomm.settings_schema").rows) do
		if (row.env or row.env_fields) and s._SOURCES and s._SOURCES[row.key] then
			rows[#rows + 1] = { row.key, s._SOURCES[row.key] }
		end
	end
	if #rows == 0 then return end
	add("")
	add("sources (keys an environment variable can override):")
	add("%s", rows_to_text(rows))
end

--- The report `svccomm check` prints: settings, topology, routing table, warnings.
---@return string report
---@return integer warnings
function M.check_report()
	local s = assert(M.settings, "load_settings first")
	local lines, warnings = {}, 0
	local function add(fmt, ...) lines[#lines + 1] = format(fmt, ...) end

	add("settings: %s", s._PATH)
	add("app id:   %s", s.APP_ID)
	local urls = settings_mod.broker_urls(s)
	for i, u in ipairs(urls) do
		add("%s%s", i == 1 and "broker:   " or "          ", settings_mod.mask_url(u))
	end
	if #urls > 1 then
		add("          (%d nodes, tried %s)", #urls, s.BROKER_SHUFFLE and "in an order shuffled per process" or "in this order")
	end
	warnings = warnings + M.tls_lines(s, add)
	add("database: %s", s.DATABASE_URL and settings_mod.mask_url(s.DATABASE_URL) or "(none: handlers run without a transaction)")
	local function args_text(t)
		local out = {}
		for _, k in ipairs(sorted_keys(t or {})) do
			out[#out + 1] = k .. "=" .. tostring(t[k])
		end
		return #out > 0 and " (" .. concat(out, ", ") .. ")" or ""
	end
	add("queue:    %s%s", s.QUEUE or "(none: runconsumer needs QUEUE)", args_text(s.QUEUE_ARGUMENTS))
	if s.QUEUE then
		-- svccomm's own queues, as runconsumer declares them (following QUEUE_ARGUMENTS unless set)
		add("retries:  %s.retry.<ms>%s", s.QUEUE, args_text(s.RETRY_QUEUE_ARGUMENTS))
		add("dlq:      %s.dlq%s", s.QUEUE, args_text(s.DEAD_LETTER_QUEUE_ARGUMENTS))
	end
	add("declare:  %s", s.DO_NOT_DECLARE and "no (DO_NOT_DECLARE: checked passively)" or "yes")
	M.source_lines(s, add)

	add("")
	add("exchanges:")
	local declared = {}
	if #s.EXCHANGES == 0 then add("  (none)") end
	local ex_rows = {}
	for _, ex in ipairs(s.EXCHANGES) do
		declared[ex.name] = true
		ex_rows[#ex_rows + 1] = { ex.name, ex.type, "durable" }
	end
	if #ex_rows > 0 then add("%s", rows_to_text(ex_rows)) end

	add("")
	add("bindings:")
	local bound = {}
	if #s.BINDS == 0 then add("  (none)") end
	local bind_rows = {}
	for _, b in ipairs(s.BINDS) do
		bound[b.exchange] = true
		bind_rows[#bind_rows + 1] = { s.QUEUE or "(QUEUE)", "<-", b.exchange, b.routing_key }
	end
	if #bind_rows > 0 then add("%s", rows_to_text(bind_rows)) end

	add("")
	add("routes:")
	local routes = router.routes()
	local route_rows = { { "EXCHANGE", "ROUTING KEY", "APP", "HANDLER" } }
	local notes = {}
	for _, r in ipairs(routes) do
		local key = r.kind == "default" and "(no other match)" or (r.pattern or "(any)")
		route_rows[#route_rows + 1] = { r.exchange or "(default)", key, r.app or "-", handler_place(r) }
		if r.exchange and not bound[r.exchange] then
			notes[#notes + 1] = format(
				"warning: %s handles exchange '%s', which BINDS does not bind to QUEUE: it will receive nothing",
				r.where or "a handler", r.exchange)
		end
	end
	if #routes == 0 then
		add("  (none: no app registered a consumer)")
	else
		add("%s", rows_to_text(route_rows))
	end

	local loaded = apps.loaded()
	add("")
	if #loaded > 0 then
		local names = {}
		for _, a in ipairs(loaded) do names[#names + 1] = a.name end
		add("apps:     %s", concat(names, ", "))
	end
	for _, n in ipairs(notes) do
		add("%s", n)
		warnings = warnings + 1
	end
	add("OK: %d exchange%s, %d binding%s, %d route%s%s", #s.EXCHANGES, #s.EXCHANGES == 1 and "" or "s",
		#s.BINDS, #s.BINDS == 1 and "" or "s", #routes, #routes == 1 and "" or "s",
		warnings > 0 and format(", %d warning%s", warnings, warnings == 1 and "" or "s") or "")
	return concat(lines, "\n") .. "\n", warnings
end

--- `svccomm publish`: writes one event (or a scheduled one) in its own transaction.
--- Returns the eventId, or nil, message, kind ("usage" for bad input, "runtime" otherwise).
---@param aggregate string
---@param event_type string
---@param payload_json string
---@param at string|nil  the due time (ISO 8601) of a scheduled event
---@param tags_json string|nil  a JSON object of tags (with at only)
---@return string|nil event_id
---@return string|nil err
---@return "usage"|"runtime"|nil kind
function M.publish(aggregate, event_type, payload_json, at, tags_json)
	local s = assert(M.settings, "load_settings first")
	-- What the command line got wrong is a usage error (exit 2), found before connecting.
	for _, a in ipairs { { "aggregate", aggregate }, { "event_type", event_type } } do
		local what, v = a[1], a[2]
		if v == "" or #v > 255 or v:find("\0", 1, true) then
			return nil, format("%s must be 1 to 255 bytes (an exchange or routing key), got %d",
				what, #v), "usage"
		end
	end
	local payload, perr = json.try_decode(payload_json)
	if payload == nil then
		return nil, "payload is not valid JSON: " .. tostring(perr), "usage"
	end
	local tags
	if tags_json then
		if not at then return nil, "--tags needs --at", "usage" end
		tags = json.try_decode(tags_json)
		if type(tags) ~= "table" then return nil, "--tags is not a JSON object", "usage" end
	end
	if at then
		local due, terr
		if at:sub(1, 1) == "+" then
			due, terr = time.parse_relative(at)
			due = due and core.time() + due
		else
			due, terr = time.parse(at)
		end
		if not due then
			return nil, format("--at %q: %s (ISO 8601 such as 2026-12-01T10:00:00Z, or +10s, +5m, +1h)", at, terr), "usage"
		end
		at = due
	end
	local has_db, missing = pcall(settings_mod.require_keys, s, { "DATABASE_URL" }, "publish")
	if not has_db then
		return nil, missing, "usage"
	end
	local db, err = svccomm.db.connect(s.DATABASE_URL)
	if not db then return nil, err, "runtime" end
	local ok, res = pcall(db.transaction, db, function()
		if at then
			return svccomm.publish_future_aggregate_event {
				aggregate = aggregate, event_type = event_type, event_time = at, payload = payload, tags = tags,
			}
		end
		return svccomm.publish_aggregate_event { aggregate = aggregate, event_type = event_type, payload = payload }
	end)
	db:close()
	if not ok then
		-- name the database and where its URL came from: an exported SVCCOMM_DATABASE_URL
		-- makes "relation ... does not exist" otherwise a riddle
		return nil, format("%s (database %s, DATABASE_URL from %s)",
			tostring(type(res) == "table" and (res.message or res) or res),
			settings_mod.mask_url(s.DATABASE_URL), s._SOURCES and s._SOURCES.DATABASE_URL or "?"), "runtime"
	end
	return res
end

return M
