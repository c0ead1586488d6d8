--- settings.lua: the one schema of every settings key, loading, validation, normalization.
--
-- `load(path, env)` runs the settings file (a Lua chunk returning a table; it sees the
-- standard globals), applies the environment overrides (SVCCOMM_BROKER_URL,
-- SVCCOMM_DATABASE_URL, SVCCOMM_LOG_LEVEL; an empty variable counts as unset), checks every
-- key against the schema and returns a normalized table where every key is present (defaults
-- filled in) plus _PATH (the file) and _DIR (its directory, the project directory).
--
-- Every mistake raises a string (no position prefix) "<path>: KEY: <expected>, got <what>".
-- URLs are checked with svccomm.core when that native module is available; passwords never
-- appear in a message.
local M = {}

local type, pairs, ipairs, tostring, error, pcall = type, pairs, ipairs, tostring, error, pcall
local format, find, sub, gsub, match, lower =
	string.format, string.find, string.sub, string.gsub, string.match, string.lower
local tointeger, mtype, huge = math.tointeger, math.type, math.huge
local sort, concat = table.sort, table.concat

-- A validation failure carries its key so the caller can prefix the path.
local function fail(key, msg)
	error({ settings_error = true, key = key, msg = msg }, 0)
end

--- Mask the password of a URL ("scheme://user:pass@host" -> "scheme://user:****@host") and of a
--- libpq conninfo string ("password=secret" -> "password=****").
---@param url string
---@return string
function M.mask_url(url)
	if type(url) ~= "string" then
		return url
	end
	local s = url
	local scheme_end = select(2, find(s, "^%a[%w+.-]*://"))
	if scheme_end then
		-- the userinfo ends at the last '@' (an unencoded '@' in a password is still masked)
		local at
		local pos = scheme_end + 1
		while true do
			local a = find(s, "@", pos, true)
			if not a then
				break
			end
			at, pos = a, a + 1
		end
		if at then
			local userinfo = sub(s, scheme_end + 1, at - 1)
			local colon = find(userinfo, ":", 1, true)
			if colon then
				s = sub(s, 1, scheme_end) .. sub(userinfo, 1, colon) .. "****" .. sub(s, at)
			end
		end
		s = gsub(s, "([?&][Pp][Aa][Ss][Ss][Ww][Oo][Rr][Dd]=)[^&#]*", "%1****")
	else
		s = gsub(s, "([Pp][Aa][Ss][Ss][Ww][Oo][Rr][Dd]%s*=%s*)'[^']*'", "%1****")
		s = gsub(s, "([Pp][Aa][Ss][Ss][Ww][Oo][Rr][Dd]%s*=%s*)[^%s']+", "%1****")
	end
	return s
end

-- The raw passwords found in a URL or conninfo (to scrub them from any message).
local function secrets_of(url)
	local out = {}
	local scheme_end = select(2, find(url, "^%a[%w+.-]*://"))
	if scheme_end then
		local userinfo = match(sub(url, scheme_end + 1), "^(.*)@")
		if userinfo then
			local pw = match(userinfo, "^[^:]*:(.*)$")
			if pw and pw ~= "" then
				out[#out + 1] = pw
			end
		end
		for pw in url:gmatch("[?&][Pp][Aa][Ss][Ss][Ww][Oo][Rr][Dd]=([^&#]*)") do
			if pw ~= "" then
				out[#out + 1] = pw
			end
		end
	else
		for pw in url:gmatch("[Pp][Aa][Ss][Ss][Ww][Oo][Rr][Dd]%s*=%s*'([^']*)'") do
			out[#out + 1] = pw
		end
		for pw in url:gmatch("[Pp][Aa][Ss][Ss][Ww][Oo][Rr][Dd]%s*=%s*([^%s']+)") do
			out[#out + 1] = pw
		end
	end
	return out
end

local function replace_plain(text, what, with)
	local parts, pos = {}, 1
	while true do
		local a, b = find(text, what, pos, true)
		if not a then
			break
		end
		parts[#parts + 1] = sub(text, pos, a - 1) .. with
		pos = b + 1
	end
	parts[#parts + 1] = sub(text, pos)
	return concat(parts)
end

-- Remove every password of `url` from an error text: the URL itself is replaced by its masked
-- form; a password still present is masked too, and when it is too short to mask without
-- mangling the text the detail is dropped.
local function scrub(text, url)
	text = replace_plain(tostring(text), url, M.mask_url(url))
	for _, pw in ipairs(secrets_of(url)) do
		if find(text, pw, 1, true) then
			if #pw < 4 then
				return "details hidden because they contain the password"
			end
			text = replace_plain(text, pw, "****")
		end
	end
	return text
end

-- Describe a value for "got ..." (strings quoted and cut; never used for URLs).
local function show(v)
	local t = type(v)
	if t == "string" then
		if #v > 60 then
			v = sub(v, 1, 57) .. "..."
		end
		return format("%q", v)
	elseif t == "number" then
		if mtype(v) == "float" and v == math.floor(v) and v > -1e15 and v < 1e15 then
			return format("%.1f", v)
		end
		return tostring(v)
	elseif t == "boolean" or t == "nil" then
		return tostring(v)
	end
	return "a " .. t
end

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

local IDENT = "^[A-Za-z_][A-Za-z0-9_]*$"
local function ident_ok(s)
	return type(s) == "string" and #s <= 63 and find(s, IDENT) ~= nil
end

local function check_identifier(v, key)
	local ok = false
	if type(v) == "string" then
		local schema, name = match(v, "^([^.]*)%.([^.]*)$")
		if schema then
			ok = ident_ok(schema) and ident_ok(name)
		else
			ok = ident_ok(v)
		end
	end
	if not ok then
		expect(key, "a table name ([A-Za-z_][A-Za-z0-9_]*, at most 63 characters, "
			.. "optionally schema.table)", v)
	end
	return v
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

local function load_core()
	local ok, core = pcall(require, "svccomm.core")
	if ok and type(core) == "table" then
		return core
	end
	return nil
end

local function check_amqp_url(v, key)
	if type(v) ~= "string" or v == "" then
		expect(key, "an amqp:// or amqps:// URL", v)
	end
	local core = load_core()
	if core and core.parse_amqp_url then
		local parsed, err = core.parse_amqp_url(v)
		if not parsed then
			fail(key, format("expected an amqp:// or amqps:// URL, got %q (%s)", M.mask_url(v),
				scrub(err or "unparsable", v)))
		end
	end
	return v
end

local function check_database_url(v, key)
	if type(v) ~= "string" or v == "" then
		expect(key, "a PostgreSQL connection string (postgresql://... or key=value ...)", v)
	end
	local core = load_core()
	if core and core.parse_conninfo then
		local ok, err = core.parse_conninfo(v)
		if not ok then
			fail(key, format("expected a PostgreSQL connection string, got %q (%s)", M.mask_url(v),
				scrub(err or "unparsable", v)))
		end
	end
	return v
end

local EXCHANGE_TYPES = { direct = true, fanout = true, topic = true, headers = true }

local function check_exchanges(v, key)
	if not is_list(v) then
		expect(key, "a list of exchanges", v)
	end
	local out, seen = {}, {}
	for i, e in ipairs(v) do
		local k = format("%s[%d]", key, i)
		local name, etype
		if type(e) == "string" then
			name, etype = e, "topic"
		elseif type(e) == "table" then
			name = e[1] or e.name
			etype = e[2] or e.type or "topic"
			if type(name) ~= "string" then
				expect(k, '"name" or {"name", "type"}', name == nil and e or name)
			end
		else
			expect(k, '"name" or {"name", "type"}', e)
		end
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
		local ex, rk
		if type(b) == "string" then
			ex, rk = b, "#"
		elseif type(b) == "table" then
			ex = b[1] or b.exchange
			rk = b[2] or b.routing_key or "#"
			if type(ex) ~= "string" then
				expect(k, '"exchange" or {"exchange", "routing_key"}', ex == nil and b or ex)
			end
		else
			expect(k, '"exchange" or {"exchange", "routing_key"}', b)
		end
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

-- The schema, in reference order. `nullable`: nil is a valid value (the default is nil).
-- `type` is the text shown in the reference; `check` normalizes or raises.
local SCHEMA = {
	{ key = "APP_ID", type = "string", default = "svccomm",
		check = check_string { max = 255 },
		doc = "AMQP app_id of published messages; names this service in logs." },
	{ key = "BROKER_CONNECTION_URL", type = "URL", default = "amqp://guest:guest@localhost:5672/%2f",
		check = check_amqp_url, env = "SVCCOMM_BROKER_URL",
		doc = "RabbitMQ URL (amqp:// or amqps://). Env SVCCOMM_BROKER_URL overrides." },
	{ key = "DATABASE_URL", type = "conninfo", nullable = true,
		check = check_database_url, env = "SVCCOMM_DATABASE_URL",
		doc = "PostgreSQL URL or key=value conninfo; unset = no transactions, no outbox. "
			.. "Env SVCCOMM_DATABASE_URL overrides." },
	{ key = "QUEUE", type = "string", nullable = true,
		check = check_string { max = 255 },
		doc = "The queue runconsumer consumes from (required by runconsumer)." },
	{ key = "QUEUE_ARGUMENTS", type = "table", default = {},
		check = check_queue_arguments,
		doc = 'Queue arguments, e.g. { ["x-queue-type"] = "quorum" }.' },
	{ key = "EXCHANGES", type = "list", default = {},
		check = check_exchanges,
		doc = 'Exchanges to declare: "name" or {"name", "type"} (type direct|fanout|topic|headers, '
			.. "default topic)." },
	{ key = "BINDS", type = "list", default = {},
		check = check_binds,
		doc = 'Bindings of QUEUE: "exchange" (routing key "#") or {"exchange", "routing_key"}.' },
	{ key = "DO_NOT_DECLARE", type = "boolean", default = false,
		check = check_boolean,
		doc = "Do not declare exchanges, queue and binds; only check they exist." },
	{ key = "INSTALLED_APPS", type = "list", nullable = true,
		check = check_apps,
		doc = "Apps to load (apps/<name>/consumers.lua); unset = every app, sorted by name." },
	{ key = "PREFETCH_COUNT", type = "integer", default = 1000,
		check = check_integer(1, 65535),
		doc = "basic.qos prefetch: unacknowledged messages per consumer (also the largest "
			.. "batch per transaction). Lower it for slow handlers so work spreads across "
			.. "workers and consumers." },
	{ key = "MAX_ATTEMPTS", type = "integer", default = 4,
		check = check_integer(1, 1000),
		doc = "Deliveries of a failing message before it goes to <QUEUE>.dlq." },
	{ key = "RETRY_DELAYS", type = "list of seconds", default = { 1, 10, 60 },
		check = check_retry_delays,
		doc = "Delay before each retry; the last one repeats." },
	{ key = "HANDLER_TIMEOUT", type = "seconds", default = 30,
		check = check_number(0, true),
		doc = "A handler running longer is stopped and counts as failed." },
	{ key = "LUA_MEMORY_LIMIT_MB", type = "integer", default = 64,
		check = check_integer(1, 1048576),
		doc = "Memory cap of the Lua state, in MiB." },
	{ key = "UNROUTED", type = "enum", default = "ack",
		check = check_enum { "ack", "dead-letter" },
		doc = 'A message no handler takes: "ack" (logged at warning) or "dead-letter".' },
	{ key = "KEY_STYLE", type = "enum", default = "preserve",
		check = check_enum { "preserve", "snake" },
		doc = '"snake" converts incoming body keys from camelCase to snake_case.' },
	{ key = "MAX_JSON_DEPTH", type = "integer", default = 128,
		check = check_integer(1, 1000),
		doc = "Deeper JSON bodies are dead-lettered as malformed." },
	{ key = "MAX_MESSAGE_BYTES", type = "integer", default = 8388608,
		check = check_integer(1, 536870912),
		doc = "Larger bodies are dead-lettered without being read." },
	{ key = "INBOX", type = "boolean", default = false,
		check = check_boolean,
		doc = "Record handled message ids and skip duplicates (needs DATABASE_URL)." },
	{ key = "INBOX_TABLE", type = "identifier", default = "svccomm_inbox",
		check = check_identifier,
		doc = "Inbox table name (optionally schema.table)." },
	{ key = "INBOX_RETENTION", type = "seconds", default = 604800,
		check = check_number(0, true),
		doc = "Inbox rows older than this are deleted." },
	{ key = "HEARTBEAT", type = "integer", default = 30,
		check = check_integer(0, 65535),
		doc = "AMQP heartbeat in seconds (0 disables it)." },
	{ key = "SHUTDOWN_TIMEOUT", type = "seconds", default = 30,
		check = check_number(0, false),
		doc = "On SIGTERM, time allowed to finish the handler in progress." },
	{ key = "CONSUMER_COMMIT_INTERVAL", type = "seconds", default = 0.02,
		check = check_number(0, false, 10),
		doc = "Longest wait before committing (and acking) handled messages together." },
	{ key = "RECONNECT_MAX_DELAY", type = "seconds", default = 30,
		check = check_number(0, true),
		doc = "Cap of the exponential reconnect backoff." },
	{ key = "OUTBOX_TABLE", type = "identifier", default = "svccomm_outbox",
		check = check_identifier,
		doc = "Outbox table name (optionally schema.table)." },
	{ key = "PUBLISHER_MODE", type = "enum", default = "listen",
		check = check_enum { "listen", "poll" },
		doc = '"listen" wakes on NOTIFY (and polls as a fallback); "poll" only polls.' },
	{ key = "PUBLISHER_POLL_INTERVAL", type = "seconds", default = 1,
		check = check_number(0, true),
		doc = "Polling interval of the relay." },
	{ key = "PUBLISHER_BATCH_SIZE", type = "integer", default = 500,
		check = check_integer(1, 100000),
		doc = "Outbox rows claimed per batch." },
	{ key = "PUBLISHER_WINDOW", type = "integer", default = 2000,
		check = check_integer(1, 1000000),
		doc = "Most published messages awaiting broker confirmation." },
	{ key = "PUBLISHER_UNROUTABLE", type = "enum", default = "drop",
		check = check_enum { "drop", "keep" },
		doc = 'A returned (unroutable) event: "drop" (logged) or "keep" (set aside in the outbox).' },
	{ key = "STATS_INTERVAL", type = "seconds", default = 60,
		check = check_number(0, false),
		doc = "Seconds between stats log lines (0 = off)." },
	{ key = "LOG_LEVEL", type = "enum", default = "info",
		check = check_enum({ "debug", "info", "warning", "error" }, true), env = "SVCCOMM_LOG_LEVEL",
		doc = 'debug, info, warning or error. Env SVCCOMM_LOG_LEVEL overrides.' },
}

local BY_KEY = {}
for _, row in ipairs(SCHEMA) do
	BY_KEY[row.key] = row
end

local function deep_copy(v)
	if type(v) ~= "table" then
		return v
	end
	local out = {}
	for k, val in pairs(v) do
		out[k] = deep_copy(val)
	end
	return out
end

-- Levenshtein distance (case-insensitive)
local function distance(a, b)
	a, b = lower(a), lower(b)
	local la, lb = #a, #b
	local prev, cur = {}, {}
	for j = 0, lb do
		prev[j] = j
	end
	for i = 1, la do
		cur[0] = i
		local ca = a:byte(i)
		for j = 1, lb do
			local cost = (ca == b:byte(j)) and 0 or 1
			local d = prev[j] + 1
			if cur[j - 1] + 1 < d then
				d = cur[j - 1] + 1
			end
			if prev[j - 1] + cost < d then
				d = prev[j - 1] + cost
			end
			cur[j] = d
		end
		prev, cur = cur, prev
	end
	return prev[lb]
end

--- The known key closest to `key`, if it is close enough to be a likely typo.
---@param key string
---@return string|nil
function M.suggest(key)
	local best, best_d
	for _, row in ipairs(SCHEMA) do
		local d = distance(key, row.key)
		if not best_d or d < best_d then
			best, best_d = row.key, d
		end
	end
	local limit = math.max(2, #key // 3)
	if best_d and best_d <= limit then
		return best
	end
	-- else a key that has every word of it ("BROKER_URL" -> BROKER_CONNECTION_URL)
	local words = {}
	for w in lower(key):gmatch("[^_]+") do
		words[#words + 1] = w
	end
	if #words < 2 then
		return nil
	end
	for _, row in ipairs(SCHEMA) do
		local known, all = "_" .. lower(row.key) .. "_", true
		for _, w in ipairs(words) do
			if not find(known, "_" .. w .. "_", 1, true) then
				all = false
				break
			end
		end
		if all then
			return row.key
		end
	end
	return nil
end

-- Lua shortens long chunk names in messages ("...tail/of/path.lua:3: msg"); put back the
-- full path when the shown name is the tail of `path`.
local function unshorten(msg, path)
	if type(msg) ~= "string" or sub(msg, 1, 3) ~= "..." then
		return msg
	end
	local shown, line, rest = match(msg, "^%.%.%.(.-):(%d+): (.*)$")
	if shown and #shown > 0 and #path > #shown and sub(path, -#shown) == shown then
		return path .. ":" .. line .. ": " .. rest
	end
	return msg
end

local function dir_of(path)
	local d = match(path, "^(.*)/[^/]*$")
	if d == nil then
		return "."
	end
	if d == "" then
		return "/"
	end
	return d
end

local function getenv_value(env, name)
	local v = env(name)
	if v == nil or v == "" then
		return nil
	end
	return v
end

--- Validate and normalize a settings table (as returned by a settings file).
---@param tbl table
---@param env fun(name:string):string|nil  like os.getenv (default os.getenv)
---@param path string|nil  the settings file, for messages (default "settings.lua")
---@return table normalized
function M.validate(tbl, env, path)
	path = path or "settings.lua"
	env = env or os.getenv
	if type(env) ~= "function" then
		error("validate: env must be a function like os.getenv", 2)
	end
	if type(tbl) ~= "table" then
		error(format("%s: expected the file to return a table, got %s", path, show(tbl)), 0)
	end
	local ok, res = pcall(function()
		-- unknown keys first, in a stable order
		local unknown = {}
		for k in pairs(tbl) do
			if type(k) ~= "string" then
				fail("[" .. tostring(k) .. "]", "unexpected entry (settings keys are names like QUEUE)")
			end
			if not BY_KEY[k] then
				unknown[#unknown + 1] = k
			end
		end
		sort(unknown)
		if unknown[1] then
			local k = unknown[1]
			local s = M.suggest(k)
			fail(k, s and format("unknown key (did you mean %s?)", s) or "unknown key")
		end
		local out = {}
		for _, row in ipairs(SCHEMA) do
			local key = row.key
			local v = tbl[key]
			local label = key
			if row.env then
				local ev = getenv_value(env, row.env)
				if ev ~= nil then
					v = ev
					label = format("%s (from %s)", key, row.env)
				end
			end
			if v == nil then
				out[key] = deep_copy(row.default)
			else
				out[key] = row.check(v, label)
			end
		end
		if not out.DO_NOT_DECLARE then
			local declared = {}
			for _, e in ipairs(out.EXCHANGES) do
				declared[e.name] = true
			end
			for i, b in ipairs(out.BINDS) do
				-- amq.* exchanges are predeclared by the broker
				if not declared[b.exchange] and sub(b.exchange, 1, 4) ~= "amq." then
					fail(format("BINDS[%d]", i),
						format("expected an exchange listed in EXCHANGES (or DO_NOT_DECLARE = true), got %q",
							b.exchange))
				end
			end
		end
		if out.INBOX and out.DATABASE_URL == nil then
			fail("INBOX", "expected DATABASE_URL to be set when INBOX = true, got DATABASE_URL nil")
		end
		return out
	end)
	if not ok then
		if type(res) == "table" and res.settings_error then
			error(format("%s: %s: %s", path, res.key, res.msg), 0)
		end
		error(res, 0)
	end
	res._PATH = path
	res._DIR = dir_of(path)
	return res
end

--- Load, validate and normalize a settings file.
---@param path string
---@param env fun(name:string):string|nil  like os.getenv (default os.getenv)
---@return table normalized
function M.load(path, env)
	if type(path) ~= "string" or path == "" then
		error("load: path must be a non-empty string", 2)
	end
	if env ~= nil and type(env) ~= "function" then
		error("load: env must be a function like os.getenv", 2)
	end
	local fh = io.open(path, "r")
	if not fh then
		local _, err = io.open(path, "r")
		err = err and gsub(err, "^" .. gsub(path, "%p", "%%%0") .. ": ", "") or "cannot open"
		error(format("%s: cannot read the settings file (%s)", path, err), 0)
	end
	fh:close()
	local fenv = setmetatable({}, { __index = _G })
	local chunk, err = loadfile(path, "t", fenv)
	if not chunk then
		error(unshorten(err, path), 0) -- "<path>:<line>: <message>"
	end
	local ok, res = pcall(chunk)
	if not ok then
		local msg = unshorten(tostring(res), path)
		if not find(msg, "^[^\n]*:%d+: ") then
			msg = path .. ": " .. msg
		end
		error(msg, 0)
	end
	return M.validate(res, env, path)
end

--- Raise "<path>: KEY: required by <command>, not set" for the first key that is nil.
---@param settings table  normalized settings
---@param keys string[]
---@param command string
function M.require_keys(settings, keys, command)
	if type(settings) ~= "table" or type(keys) ~= "table" then
		error("require_keys: expected (settings, keys, command)", 2)
	end
	for _, k in ipairs(keys) do
		if settings[k] == nil then
			error(format("%s: %s: required by %s, not set", settings._PATH or "settings.lua", k,
				tostring(command)), 0)
		end
	end
end

local function render(v)
	if v == nil then
		return "nil"
	end
	if type(v) == "string" then
		return format("%q", v)
	end
	if type(v) == "table" then
		local parts = {}
		for i, x in ipairs(v) do
			parts[i] = render(x)
		end
		return "{" .. concat(parts, ", ") .. "}"
	end
	return tostring(v)
end

--- Rows {key, type, default, doc} of the schema, in schema order, for the README reference.
--- `default` is rendered as Lua source text ("nil" when unset); `value` is the raw default.
---@return table[]
function M.reference()
	local rows = {}
	for i, row in ipairs(SCHEMA) do
		rows[i] = {
			key = row.key,
			type = row.type,
			default = render(row.default),
			value = deep_copy(row.default),
			doc = row.doc,
			env = row.env,
		}
	end
	return rows
end

--- The settings keys in schema order.
---@return string[]
function M.keys()
	local out = {}
	for i, row in ipairs(SCHEMA) do
		out[i] = row.key
	end
	return out
end

return M
