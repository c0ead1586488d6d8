--- svccomm.settings: loading, validation and normalization of the settings file.
--
-- `load(path, env)` runs the settings file (a Lua chunk returning a table; it sees the
-- standard globals), applies the environment overrides (SVCCOMM_BROKER_URL,
-- SVCCOMM_DATABASE_URL, SVCCOMM_LOG_LEVEL, SVCCOMM_LOG_FORMAT, SVCCOMM_BROKER_CA_FILE /
-- _CERT_FILE / _KEY_FILE; an empty variable counts as unset), checks every
-- key against the schema and returns a normalized table where every key is present (defaults
-- filled in) plus _PATH (the file) and _DIR (its directory, the project directory).
--
-- Every mistake raises a string (no position prefix) "<path>: KEY: <expected>, got <what>".
-- URLs and table names are checked with svccomm.core when that native module is available;
-- passwords never appear in a message.
--
-- The keys, their types, defaults and docs are svccomm.settings_schema; the checkers
-- svccomm.settings_checks; password masking svccomm.secrets (the C masker of svccomm.core).
local chunks = require "svccomm.chunks"
local checks = require "svccomm.settings_checks"
local schema = require "svccomm.settings_schema"
local secrets = require "svccomm.secrets"

local M = {}

local type, pairs, ipairs, tostring, error, pcall = type, pairs, ipairs, tostring, error, pcall
local setmetatable, loadfile, open, getenv, _G, next = setmetatable, loadfile, io.open, os.getenv, _G, next
local format, find, sub, gsub, match, lower =
	string.format, string.find, string.sub, string.gsub, string.match, string.lower
local max, sort, concat = math.max, table.sort, table.concat
local fail, show = checks.fail, checks.show

--- Mask the password of a URL ("scheme://user:pass@host" -> "scheme://user:****@host", also
--- ?password=) and of a libpq conninfo string ("password=secret" -> "password=****"); see
--- svccomm.secrets.mask. A value that is not a string is returned as it is.
---@param url any
---@return any
M.mask_url = secrets.mask

--- The URLs of BROKER_CONNECTION_URL in normalized settings, always as a list (the setting
--- is a string when it names one node).
---@param s table  normalized settings
---@return string[]
function M.broker_urls(s)
	local v = s.BROKER_CONNECTION_URL
	if type(v) == "table" then
		return v
	end
	return { v }
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
	for _, row in ipairs(schema.rows) do
		local d = distance(key, row.key)
		if not best_d or d < best_d then
			best, best_d = row.key, d
		end
	end
	local limit = max(2, #key // 3)
	if best_d and best_d <= 1 then
		return best
	end
	-- a key that has every word of it ("BROKER_URL" -> BROKER_CONNECTION_URL, not the
	-- nearer BROKER_TLS); else the nearest key when near enough
	local words = {}
	for w in lower(key):gmatch("[^_]+") do
		words[#words + 1] = w
	end
	for _, row in ipairs(#words >= 2 and schema.rows or {}) do
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
	if best_d and best_d <= limit then
		return best
	end
	return nil
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

-- A table setting with its `env_fields` overrides applied (a copy: the settings file's table
-- is not changed), and which variable each overridden field came from (nil when none).
local function env_fields(row, v, env)
	local copy, from = nil, nil
	for field, name in pairs(row.env_fields) do
		local ev = getenv_value(env, name)
		if ev ~= nil then
			if not copy then
				copy = {}
				for k, x in pairs(v or {}) do
					copy[k] = x
				end
				from = {}
			end
			copy[field], from[field] = ev, name
		end
	end
	return copy or v, from
end

--- Validate and normalize a settings table (as returned by a settings file).
---@param tbl table
---@param env fun(name:string):string|nil  like os.getenv (default os.getenv)
---@param path string|nil  the settings file, for messages (default "settings.lua")
---@return table normalized
function M.validate(tbl, env, path)
	path = path or "settings.lua"
	env = env or getenv
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
			if not schema.by_key[k] then
				unknown[#unknown + 1] = k
			end
		end
		sort(unknown)
		if unknown[1] then
			local k = unknown[1]
			local s = M.suggest(k)
			fail(k, s and format("unknown key (did you mean %s?)", s) or "unknown key")
		end
		local out, from_env, sources = {}, {}, {}
		for _, row in ipairs(schema.rows) do
			local key = row.key
			local v = tbl[key]
			local label = key
			sources[key] = v == nil and "default" or "settings file"
			if row.env_fields and (v == nil or type(v) == "table") then
				v, from_env[key] = env_fields(row, v, env)
				if from_env[key] then
					local names = {}
					for _, name in pairs(from_env[key]) do
						names[#names + 1] = name
					end
					sort(names)
					sources[key] = format("%s + env %s", sources[key], concat(names, ", "))
				end
			end
			if row.env then
				local ev = getenv_value(env, row.env)
				if ev ~= nil then
					v = ev
					label = format("%s (from %s)", key, row.env)
					sources[key] = format("env %s%s", row.env,
						tbl[key] ~= nil and " (overrides the settings file)" or "")
				end
			end
			if v == nil then
				out[key] = schema.default(row)
			else
				out[key] = row.check(v, label, from_env[key])
			end
		end
		-- where each value came from, for `svccomm check`: "settings file", "default",
		-- "env NAME[ (overrides the settings file)]"
		out._SOURCES = sources
		-- TLS options with a plain amqp:// URL are a mistake that would send the credentials
		-- unencrypted: refuse it rather than ignore BROKER_TLS
		if (tbl.BROKER_TLS ~= nil or next(from_env.BROKER_TLS or {}) ~= nil)
			and not find(lower(M.broker_urls(out)[1]), "^amqps://") then
			fail("BROKER_TLS", "is set but BROKER_CONNECTION_URL is not an amqps:// URL (use "
				.. "amqps://, or remove BROKER_TLS and SVCCOMM_BROKER_*_FILE)")
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
		-- what the retry queues and the DLQ are declared with: as set, or following QUEUE
		out.RETRY_QUEUE_ARGUMENTS, out.DEAD_LETTER_QUEUE_ARGUMENTS = checks.own_queue_arguments(out)
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
	local fh, oerr = open(path, "r")
	if not fh then
		oerr = oerr and gsub(oerr, "^" .. gsub(path, "%p", "%%%0") .. ": ", "") or "cannot open"
		error(format("%s: cannot read the settings file (%s)", path, oerr), 0)
	end
	fh:close()
	local fenv = setmetatable({}, { __index = _G })
	local chunk, err = loadfile(path, "t", fenv)
	if not chunk then
		error(chunks.unshorten(err, path), 0) -- "<path>:<line>: <message>"
	end
	local ok, res = pcall(chunk)
	if not ok then
		local msg = chunks.unshorten(tostring(res), path)
		if not chunks.has_position(msg) then
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

--- Rows {key, type, default, doc} of the schema, in schema order, for the README reference.
--- `default` is rendered as Lua source text ("nil" when unset); `value` is the raw default.
---@return table[]
M.reference = schema.reference

--- The settings keys in schema order.
---@return string[]
M.keys = schema.keys

return M
