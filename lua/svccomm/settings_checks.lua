--- svccomm.settings_checks: the checkers of the settings schema (svccomm.settings_schema).
---
--- A checker is `check(value, key) -> normalized value`; a mistake raises (through M.fail) a
--- table {settings_error = true, key =, msg = "expected <what>, got <value>"} that
--- svccomm.settings turns into "<path>: KEY: expected ..., got ...". URLs and table names are
--- checked with svccomm.core when that native module is available (only their type
--- otherwise); passwords never appear in a message (svccomm.secrets).
local secrets = require "svccomm.secrets"

local M = {}

local type, pairs, ipairs, tostring, tonumber, error, pcall, require = type, pairs, ipairs, tostring, tonumber, error, pcall, require
local format, find, sub, lower, gsub = string.format, string.find, string.sub, string.lower, string.gsub
local tointeger, mtype, huge, floor = math.tointeger, math.type, math.huge, math.floor
local concat, sort, open = table.concat, table.sort, io.open

--- Raise a validation failure of `key` (the caller prefixes the settings path).
---@param key string
---@param msg string
function M.fail(key, msg)
	error({ settings_error = true, key = key, msg = msg }, 0)
end
local fail = M.fail

-- svccomm.core, looked up at each check (nil when the native module is not available).
local function load_core()
	local ok, core = pcall(require, "svccomm.core")
	if ok and type(core) == "table" then
		return core
	end
	return nil
end

--- Describe a value for "got ..." (strings quoted and cut; never used for URLs).
---@param v any
---@return string
function M.show(v)
	local t = type(v)
	if t == "string" then
		if #v > 60 then
			v = sub(v, 1, 57) .. "..."
		end
		return format("%q", v)
	elseif t == "number" then
		if mtype(v) == "float" and v == floor(v) and v > -1e15 and v < 1e15 then
			return format("%.1f", v)
		end
		return tostring(v)
	elseif t == "boolean" or t == "nil" then
		return tostring(v)
	end
	return "a " .. t
end
local show = M.show

local function expect(key, expected, v)
	fail(key, format("expected %s, got %s", expected, show(v)))
end

-- checkers: (value, key) -> normalized value; raise with fail()

local function check_string(opts)
	opts = opts or {}
	return function(v, key)
		local what = opts.what or "a non-empty string"
		if type(v) ~= "string" or v == "" then
			expect(key, what, v)
		end
		if opts.max and #v > opts.max then
			fail(key, format("expected %s of at most %d bytes, got %d bytes", what, opts.max, #v))
		end
		return v
	end
end

-- The longest "<QUEUE>.retry.<ms>" suffix: ms is at most 2^31 - 1 (10 digits).
local RETRY_SUFFIX_MAX = #".retry.2147483647"
local QUEUE_MAX = 255 - RETRY_SUFFIX_MAX

-- QUEUE, with svccomm's own <QUEUE>.dlq and <QUEUE>.retry.<ms>: each an AMQP name (at most
-- 255 bytes of UTF-8) the broker accepts, found here rather than by a consumer that would
-- reconnect forever.
local function check_queue(v, key)
	if type(v) ~= "string" or v == "" then
		expect(key, "a non-empty string", v)
	end
	local what = format("a queue name (1 to %d bytes of UTF-8, no zero byte, not starting with "
		.. "\"amq.\", so that <QUEUE>.retry.<ms> fits in 255 bytes)", QUEUE_MAX)
	if #v > QUEUE_MAX or not utf8.len(v) or find(v, "\0", 1, true)
		or sub(v, 1, 4) == "amq." then
		if #v > QUEUE_MAX then
			fail(key, format("expected %s, got %d bytes", what, #v))
		end
		expect(key, what, v)
	end
	return v
end

local function check_integer(min, max)
	local what
	if max then
		what = format("an integer from %d to %d", min, max)
	else
		what = format("an integer >= %d", min)
	end
	return function(v, key)
		local i = type(v) == "number" and tointeger(v)
		if not i or i < min or (max and i > max) then
			expect(key, what, v)
		end
		return i
	end
end

-- numbers: min_exclusive means v > min, else v >= min
local function check_number(min, min_exclusive, max)
	local what = format("a number %s %s", min_exclusive and ">" or ">=", tostring(min))
	if max then
		what = what .. format(" and <= %s", tostring(max))
	end
	what = what .. " (seconds)"
	return function(v, key)
		if type(v) ~= "number" or v ~= v or v == huge or v == -huge
			or (min_exclusive and v <= min) or (not min_exclusive and v < min)
			or (max and v > max) then
			expect(key, what, v)
		end
		return v
	end
end

local function check_boolean(v, key)
	if type(v) ~= "boolean" then
		expect(key, "true or false", v)
	end
	return v
end

local function check_enum(values, fold)
	local set, quoted = {}, {}
	for i, s in ipairs(values) do
		set[s] = true
		quoted[i] = format("%q", s)
	end
	local what = "one of " .. concat(quoted, ", ")
	return function(v, key)
		if type(v) == "string" and fold then
			v = lower(v)
		end
		if type(v) ~= "string" or not set[v] then
			expect(key, what, v)
		end
		return v
	end
end

local function is_list(t)
	if type(t) ~= "table" then
		return false
	end
	local n = #t
	for k in pairs(t) do
		if tointeger(k) == nil or k < 1 or k > n then
			return false
		end
	end
	return true
end

-- The table name of OUTBOX_TABLE / INBOX_TABLE: svccomm.core.quote_ident is the one validator
-- (util/ident.c, the C side uses it too); without the native module only the type is checked.
local function check_identifier(v, key)
	-- a NUL byte is refused here too, so the check holds without the native module
	local ok = type(v) == "string" and v ~= "" and not find(v, "\0", 1, true)
	local core = ok and load_core()
	if core and core.quote_ident then
		ok = core.quote_ident(v) ~= nil
	end
	if not ok then
		expect(key, "a table name ([A-Za-z_][A-Za-z0-9_]*, at most 63 characters, "
			.. "optionally schema.table)", v)
	end
	return v
end

-- A URL checker: `what` (shown for a value that is not a string) and `parsed_what` (shown
-- with the masked URL and the scrubbed reason when svccomm.core[parser] refuses it).
local function check_url(what, parsed_what, parser)
	return function(v, key)
		if type(v) ~= "string" or v == "" then
			expect(key, what, v)
		end
		local core = load_core()
		if core and core[parser] then
			local ok, err = core[parser](v)
			if not ok then
				fail(key, format("expected %s, got %q (%s)", parsed_what, secrets.mask(v),
					secrets.scrub(err or "unparsable", v)))
			end
		end
		return v
	end
end

local check_amqp_url = check_url("an amqp:// or amqps:// URL", "an amqp:// or amqps:// URL", "parse_amqp_url")
-- BROKER_CONNECTION_URL: one URL or a list of them (the nodes of a cluster, tried in order). A
-- string holding several URLs separated by commas ("amqp://a,amqp://b", the form of
-- SVCCOMM_BROKER_URL) is split where a comma is followed by amqp:// or amqps://, so a comma
-- inside a password stays part of it. Normalized: a string for one URL, a list for several.
-- Every entry must parse; amqp:// and amqps:// do not mix (BROKER_TLS applies to all or none).
local function split_urls(s)
	local out, start = {}, 1
	local low = lower(s)
	local pos = 1
	while true do
		local c = find(low, ",", pos, true)
		if not c then
			break
		end
		local after = find(low, "^%s*amqps?://", c + 1)
		if after then
			out[#out + 1] = (gsub(sub(s, start, c - 1), "%s+$", ""))
			start = c + 1
			while find(s, "^%s", start) do
				start = start + 1
			end
		end
		pos = c + 1
	end
	out[#out + 1] = sub(s, start)
	return out
end

local function check_amqp_urls(v, key)
	local list
	if type(v) == "string" then
		list = split_urls(v)
	elseif is_list(v) then
		list = v
	else
		expect(key, "an amqp:// or amqps:// URL, or a list of them", v)
	end
	if #list == 0 then
		fail(key, "expected at least one amqp:// or amqps:// URL, got an empty list")
	end
	local out, scheme = {}, nil
	for i, u in ipairs(list) do
		local k = #list > 1 and format("%s[%d]", key, i) or key
		if type(v) == "table" then
			k = format("%s[%d]", key, i)
		end
		out[i] = check_amqp_url(u, k)
		local tls = find(lower(u), "^amqps://") ~= nil
		if scheme == nil then
			scheme = tls
		elseif scheme ~= tls then
			fail(k, format("expected %s like the first entry (amqp:// and amqps:// do not mix), got %q",
				scheme and "an amqps:// URL" or "an amqp:// URL", secrets.mask(u)))
		end
	end
	return #out == 1 and out[1] or out
end

local check_database_url = check_url("a PostgreSQL connection string (postgresql://... or key=value ...)",
	"a PostgreSQL connection string", "parse_conninfo")

-- An entry of EXCHANGES or BINDS: "first" or {"first", "second"} (or {first=, second=}); the
-- second part defaults to `default`. The first part must be a string.
local function pair(e, k, first, second, default)
	local shape = format('"%s" or {"%s", "%s"}', first, first, second)
	if type(e) == "string" then
		return e, default
	elseif type(e) ~= "table" then
		expect(k, shape, e)
	end
	local a = e[1] or e[first]
	if type(a) ~= "string" then
		expect(k, shape, a == nil and e or a)
	end
	return a, e[2] or e[second] or default
end

local EXCHANGE_TYPES = { direct = true, fanout = true, topic = true, headers = true }

local function check_exchanges(v, key)
	if not is_list(v) then
		expect(key, "a list of exchanges", v)
	end
	local out, seen = {}, {}
	for i, e in ipairs(v) do
		local k = format("%s[%d]", key, i)
		local name, etype = pair(e, k, "name", "type", "topic")
		if name == "" or #name > 255 or sub(name, 1, 4) == "amq." then
			expect(k, "an exchange name (1 to 255 bytes, not starting with \"amq.\")", name)
		end
		if type(etype) ~= "string" or not EXCHANGE_TYPES[etype] then
			fail(k, format('expected an exchange type "direct", "fanout", "topic" or "headers", got %s',
				show(etype)))
		end
		if seen[name] then
			fail(k, format("exchange %q is listed twice (also %s[%d])", name, key, seen[name]))
		end
		seen[name] = i
		out[i] = { name = name, type = etype }
	end
	return out
end

local function check_binds(v, key)
	if not is_list(v) then
		expect(key, "a list of binds", v)
	end
	local out = {}
	for i, b in ipairs(v) do
		local k = format("%s[%d]", key, i)
		local ex, rk = pair(b, k, "exchange", "routing_key", "#")
		if ex == "" or #ex > 255 then
			expect(k, "an exchange name (1 to 255 bytes)", ex)
		end
		if type(rk) ~= "string" or #rk > 255 then
			expect(k, "a routing key (a string of at most 255 bytes)", rk)
		end
		out[i] = { exchange = ex, routing_key = rk }
	end
	return out
end

local function check_queue_arguments(v, key)
	if type(v) ~= "table" then
		expect(key, "a table of queue arguments", v)
	end
	local out = {}
	for k, val in pairs(v) do
		if type(k) ~= "string" or k == "" then
			expect(key, "string keys (argument names)", k)
		end
		local kk = format("%s[%q]", key, k)
		local t = type(val)
		if t == "number" then
			local i = tointeger(val)
			if not i then
				expect(kk, "a string, an integer or a boolean", val)
			end
			val = i
		elseif t ~= "string" and t ~= "boolean" then
			expect(kk, "a string, an integer or a boolean", val)
		end
		out[k] = val
	end
	return out
end

-- svccomm sets these on its retry queues: the TTL is the delay, the dead-letter target QUEUE
local RETRY_OWN = { "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key" }

local function check_retry_queue_arguments(v, key)
	local out = check_queue_arguments(v, key)
	for _, k in ipairs(RETRY_OWN) do
		if out[k] ~= nil then
			fail(format("%s[%q]", key, k), "is set by svccomm on retry queues (remove it)")
		end
	end
	local qt = out["x-queue-type"]
	if qt ~= nil and qt ~= "classic" and qt ~= "quorum" then
		expect(format("%s[%q]", key, "x-queue-type"),
			'"classic" or "quorum" (a retry queue dead-letters back to QUEUE)', qt)
	end
	return out
end

local function copy_table(t)
	local out = {}
	for k, v in pairs(t) do
		out[k] = v
	end
	return out
end

--- The arguments of svccomm's own queues as declared: RETRY_QUEUE_ARGUMENTS and
--- DEAD_LETTER_QUEUE_ARGUMENTS as set, or (nil) following QUEUE_ARGUMENTS: quorum when QUEUE is
--- quorum (with its x-quorum-initial-group-size), classic otherwise (a stream cannot hold a
--- message for a delay nor dead-letter it). A quorum retry queue dead-letters at-least-once,
--- which needs x-overflow reject-publish (RabbitMQ falls back to at-most-once otherwise).
---@param s table normalized settings (QUEUE_ARGUMENTS, RETRY_QUEUE_ARGUMENTS, DEAD_LETTER_QUEUE_ARGUMENTS)
---@return table retry, table dlq
function M.own_queue_arguments(s)
	local main = s.QUEUE_ARGUMENTS or {}
	local function follow()
		if main["x-queue-type"] ~= "quorum" then
			return {}
		end
		return { ["x-queue-type"] = "quorum",
			["x-quorum-initial-group-size"] = main["x-quorum-initial-group-size"] }
	end
	local retry = s.RETRY_QUEUE_ARGUMENTS and copy_table(s.RETRY_QUEUE_ARGUMENTS) or follow()
	local dlq = s.DEAD_LETTER_QUEUE_ARGUMENTS and copy_table(s.DEAD_LETTER_QUEUE_ARGUMENTS) or follow()
	if retry["x-queue-type"] == "quorum" then
		if retry["x-dead-letter-strategy"] == nil then
			retry["x-dead-letter-strategy"] = "at-least-once"
		end
		if retry["x-overflow"] == nil and retry["x-dead-letter-strategy"] == "at-least-once" then
			retry["x-overflow"] = "reject-publish"
		end
		if retry["x-dead-letter-strategy"] == "at-least-once" and retry["x-overflow"] ~= "reject-publish" then
			fail("RETRY_QUEUE_ARGUMENTS", format('expected x-overflow "reject-publish" with '
				.. 'x-dead-letter-strategy "at-least-once" (RabbitMQ would dead-letter at most '
				.. "once), got %s", show(retry["x-overflow"])))
		end
	end
	return retry, dlq
end

local function check_retry_delays(v, key)
	if not is_list(v) or #v == 0 then
		expect(key, "a non-empty list of delays in seconds", v)
	end
	local out = {}
	for i, d in ipairs(v) do
		if type(d) ~= "number" or d ~= d or d <= 0 or d > 4294967 then
			expect(format("%s[%d]", key, i), "a number of seconds > 0 and <= 4294967", d)
		end
		out[i] = d
	end
	return out
end

local function check_apps(v, key)
	if not is_list(v) then
		expect(key, "a list of app names", v)
	end
	local out, seen = {}, {}
	for i, name in ipairs(v) do
		local k = format("%s[%d]", key, i)
		if type(name) ~= "string" or not find(name, "^[A-Za-z_][A-Za-z0-9_-]*$") then
			expect(k, "an app name (a directory under apps/: letters, digits, _ and -)", name)
		end
		if seen[name] then
			fail(k, format("app %q is listed twice (also %s[%d])", name, key, seen[name]))
		end
		seen[name] = i
		out[i] = name
	end
	return out
end

-- Levenshtein distance (case-insensitive), for "did you mean" on table fields.
local function distance(a, b)
	a, b = lower(a), lower(b)
	local prev = {}
	for j = 0, #b do
		prev[j] = j
	end
	for i = 1, #a do
		local cur = { [0] = i }
		for j = 1, #b do
			local cost = sub(a, i, i) == sub(b, j, j) and 0 or 1
			local d = prev[j] + 1
			if cur[j - 1] + 1 < d then d = cur[j - 1] + 1 end
			if prev[j - 1] + cost < d then d = prev[j - 1] + cost end
			cur[j] = d
		end
		prev = cur
	end
	return prev[#b]
end

--- The name of `names` closest to `name` when it is a likely typo (nil otherwise).
---@param name string
---@param names string[]
---@return string|nil
function M.closest(name, names)
	local best, best_d
	for _, n in ipairs(names) do
		local d = distance(name, n)
		if not best_d or d < best_d then
			best, best_d = n, d
		end
	end
	if best_d and best_d <= (#name // 3 > 2 and #name // 3 or 2) then
		return best
	end
	return nil
end

--- Fail unless `path` names a file this process can read now (the message names the file).
---@param path any
---@param key string
---@return string path
function M.readable_file(path, key)
	if type(path) ~= "string" or path == "" or find(path, "\0", 1, true) then
		expect(key, "the path of a readable file", path)
	end
	local fh, err = open(path, "r")
	if fh then
		local ok, rerr = fh:read(0) -- fails on a directory
		local size = not (ok == nil and rerr) and fh:seek("end") or nil
		fh:close()
		if size and size > 0 then
			return path
		end
		err = size == 0 and "the file is empty" or rerr
	end
	err = err and gsub(err, "^.*: ", "") -- io.open says "<path>: <reason>"
	fail(key, format("cannot read %q (%s)", path, err or "cannot open it"))
end

local TLS_FIELDS = { "ca_file", "cert_file", "key_file", "verify_peer", "verify_hostname" }

-- BROKER_TLS: { ca_file, cert_file, key_file, verify_peer = true, verify_hostname = true }.
-- `from` names the environment variable a field came from (for the messages).
local function check_broker_tls(v, key, from)
	from = from or {}
	if type(v) ~= "table" then
		expect(key, "a table { ca_file = ..., cert_file = ..., key_file = ..., verify_peer = true, "
			.. "verify_hostname = true }", v)
	end
	local names = {}
	for k in pairs(v) do
		names[#names + 1] = k
	end
	sort(names, function(a, b) return tostring(a) < tostring(b) end)
	local known = {}
	for _, f in ipairs(TLS_FIELDS) do known[f] = true end
	for _, k in ipairs(names) do
		if type(k) ~= "string" or not known[k] then
			local s = type(k) == "string" and M.closest(k, TLS_FIELDS)
			fail(format("%s.%s", key, tostring(k)),
				s and format("unknown field (did you mean %s?)", s)
				or "unknown field (known: " .. concat(TLS_FIELDS, ", ") .. ")")
		end
	end
	local function label(f)
		return from[f] and format("%s.%s (from %s)", key, f, from[f]) or format("%s.%s", key, f)
	end
	local out = { verify_peer = true, verify_hostname = true }
	for _, f in ipairs({ "verify_peer", "verify_hostname" }) do
		if v[f] ~= nil then
			out[f] = check_boolean(v[f], label(f))
		end
	end
	for _, f in ipairs({ "ca_file", "cert_file", "key_file" }) do
		if v[f] ~= nil then
			out[f] = M.readable_file(v[f], label(f))
		end
	end
	if out.key_file and not out.cert_file then
		fail(label("key_file"), "expected cert_file too (the client certificate of this key)")
	end
	return out
end

-- The checkers by what they check; the schema names them.
-- METRICS_ADDRESS: "host:port" or "[v6 address]:port", port 1-65535. Whether the host resolves
-- and the port is free is found when the listener starts (exit 2 with the reason).
local function check_host_port(v, key)
	local what = 'a "host:port" string (port 1-65535)'
	if type(v) ~= "string" then
		expect(key, what, v)
	end
	local host, port = v:match("^%[([^%]]+)%]:(%d+)$")
	if not host then
		host, port = v:match("^([^:%[%]]+):(%d+)$")
	end
	local n = port and tointeger(tonumber(port))
	if not host or not n or n < 1 or n > 65535 or #port > 5 or #host > 253 then
		expect(key, what, v)
	end
	return v
end

M.string = check_string
M.host_port = check_host_port
M.queue = check_queue
M.integer = check_integer
M.number = check_number
M.boolean = check_boolean
M.enum = check_enum
M.identifier = check_identifier
M.amqp_url = check_amqp_url
M.amqp_urls = check_amqp_urls
M.split_urls = split_urls
M.database_url = check_database_url
M.exchanges = check_exchanges
M.binds = check_binds
M.queue_arguments = check_queue_arguments
M.retry_queue_arguments = check_retry_queue_arguments
M.retry_delays = check_retry_delays
M.apps = check_apps
M.broker_tls = check_broker_tls

return M
