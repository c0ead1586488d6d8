--- Routing table: which Lua handler takes a message, by (exchange, routing key).
--
-- Handlers register with `consumer(exchange, pattern)(fn)` (decorator style, returns fn so
-- decorators stack), `consumer(exchange, pattern, fn)` (direct style), `consumer(exchange)(fn)`
-- (every routing key of the exchange) and `default_consumer(fn)` (messages no one else takes).
--
-- Patterns use AMQP topic semantics, exactly as RabbitMQ's topic exchange: words are separated
-- by '.', a word "*" matches exactly one word, a word "#" matches zero or more words; "*" or "#"
-- inside a longer word is a literal. The empty routing key has zero words.
--
-- Precedence when several handlers of an exchange match one routing key (first wins):
--   1. the exact routing key (a pattern without wildcards);
--   2. wildcard patterns, most specific first: fewer "#" words, then fewer "*" words, then more
--      literal words, then the one registered first;
--   3. the exchange-wide handler (`consumer(exchange)`);
--   4. the default consumer.
-- Note that the pattern "#" is a pattern (rule 2) and so beats the exchange-wide handler.
local M = {}

local type, error, pairs, ipairs, tostring = type, error, pairs, ipairs, tostring
local sort, concat = table.sort, table.concat
local find, sub, format = string.find, string.sub, string.format
local getinfo = debug.getinfo

local MAX_KEY_BYTES = 255 -- AMQP shortstr
local CACHE_LIMIT = 4096
-- The cache also holds at most this many bytes of keys (plus a per-entry overhead), and never a
-- key no AMQP delivery can carry: routing keys come from the network, so a flood of distinct
-- long keys must not grow the Lua state towards LUA_MEMORY_LIMIT_MB.
local CACHE_BYTES = 256 * 1024
local CACHE_ENTRY_OVERHEAD = 64
local MAX_CACHED_KEY = 2 * MAX_KEY_BYTES + 1 -- exchange .. "\0" .. routing key

---@class svccomm.Route
---@field exchange string|nil   nil for the default consumer
---@field pattern string|nil    nil for exchange-wide and default handlers
---@field fn function           the registered handler
---@field app string|nil        the app being loaded when it was registered
---@field where string          file:line of the registration
---@field defined string        file:line where the handler function is defined
---@field defined_at string     the same as defined (alias)
---@field kind string           "exact" | "pattern" | "exchange" | "default"
---@field handler_id string     "app:file:line" of the handler (for dead-letter headers)

local state -- see reset()
local current_app
-- wrapper function -> the user function it wraps (so routes name the user's code)
local origins = setmetatable({}, { __mode = "k" })

local function place_of(info, line)
	local src = info.source
	local file
	if sub(src, 1, 1) == "@" then
		file = sub(src, 2)
	else
		file = info.short_src
	end
	return file .. ":" .. tostring(line)
end

-- file:line of the code that called the public function (level counted from the caller of this)
local function caller_place(level)
	local info = getinfo(level + 1, "Sl")
	if not info then
		return "?"
	end
	return place_of(info, info.currentline)
end

local function definition_place(fn)
	local inner = origins[fn]
	while inner do
		fn = inner
		inner = origins[fn]
	end
	local info = getinfo(fn, "S")
	if info.what == "C" then
		return "[C]"
	end
	return place_of(info, info.linedefined)
end

--- Split a routing key or pattern into words ("" has zero words, as in RabbitMQ).
---@param key string
---@return string[]
function M.split(key)
	local words = {}
	if key == "" then
		return words
	end
	local n, start = 0, 1
	while true do
		local dot = find(key, ".", start, true)
		n = n + 1
		if not dot then
			words[n] = sub(key, start)
			return words
		end
		words[n] = sub(key, start, dot - 1)
		start = dot + 1
	end
end

-- Backtracking matcher with memoisation: O(#pattern * #key) even for "#.#.#" patterns.
local function match_words(pw, np, kw, nk)
	local memo = {}
	local function m(i, j)
		local slot = i * (nk + 2) + j
		local r = memo[slot]
		if r ~= nil then
			return r
		end
		if i > np then
			r = j > nk
		else
			local w = pw[i]
			if w == "#" then
				r = m(i + 1, j) or (j <= nk and m(i, j + 1))
			elseif j > nk then
				r = false
			elseif w == "*" or w == kw[j] then
				r = m(i + 1, j + 1)
			else
				r = false
			end
		end
		memo[slot] = r
		return r
	end
	return m(1, 1)
end

--- True when the routing key matches the topic pattern (RabbitMQ semantics).
---@param pattern string
---@param routing_key string
---@return boolean
function M.topic_match(pattern, routing_key)
	if type(pattern) ~= "string" then
		error("topic_match: pattern must be a string", 2)
	end
	if type(routing_key) ~= "string" then
		error("topic_match: routing key must be a string", 2)
	end
	local pw, kw = M.split(pattern), M.split(routing_key)
	return match_words(pw, #pw, kw, #kw)
end

-- true when a sorts before b in pattern precedence
local function more_specific(a, b)
	if a.nhash ~= b.nhash then
		return a.nhash < b.nhash
	end
	if a.nstar ~= b.nstar then
		return a.nstar < b.nstar
	end
	if a.nlit ~= b.nlit then
		return a.nlit > b.nlit
	end
	return a.seq < b.seq
end

local function exchange_state(exchange)
	local ex = state.exchanges[exchange]
	if not ex then
		-- patterns: sorted by precedence when first matched (sorted = false after an add);
		-- by_pattern: the same entries by pattern text, for the duplicate check
		ex = { exact = {}, patterns = {}, by_pattern = {}, sorted = true, wide = nil }
		state.exchanges[exchange] = ex
	end
	return ex
end

local function describe(entry)
	local s = entry.where
	if entry.app then
		s = s .. " (app '" .. entry.app .. "')"
	end
	return s
end

local function duplicate_error(what, old, new)
	error(format("message_router: %s is registered twice: first at %s, again at %s", what,
		describe(old), describe(new)), 0)
end

local function add(entry)
	state.seq = state.seq + 1
	entry.seq = state.seq
	entry.defined_at = entry.defined
	entry.handler_id = (entry.app or "-") .. ":" .. entry.defined
	if entry.kind == "default" then
		if state.default then
			duplicate_error("the default consumer", state.default, entry)
		end
		state.default = entry
	else
		local ex = exchange_state(entry.exchange)
		if entry.kind == "exchange" then
			if ex.wide then
				duplicate_error(format("the consumer of every routing key of exchange '%s'",
					entry.exchange), ex.wide, entry)
			end
			ex.wide = entry
		elseif entry.kind == "exact" then
			local old = ex.exact[entry.pattern]
			if old then
				duplicate_error(format("the consumer for exchange '%s' routing key '%s'",
					entry.exchange, entry.pattern), old, entry)
			end
			ex.exact[entry.pattern] = entry
		else
			local old = ex.by_pattern[entry.pattern]
			if old then
				duplicate_error(format("the consumer for exchange '%s' routing key '%s'",
					entry.exchange, entry.pattern), old, entry)
			end
			ex.by_pattern[entry.pattern] = entry
			local pats = ex.patterns
			pats[#pats + 1] = entry
			ex.sorted = false -- sorted once, at the first lookup (not once per add)
		end
	end
	state.entries[#state.entries + 1] = entry
	state.cache, state.cache_size, state.cache_bytes = {}, 0, 0
	return entry
end

local function new_entry(exchange, pattern, fn, where)
	local entry = {
		exchange = exchange,
		pattern = pattern,
		fn = fn,
		app = current_app,
		where = where,
		defined = definition_place(fn),
	}
	if pattern == nil then
		entry.kind = "exchange"
	else
		local words = M.split(pattern)
		local nhash, nstar = 0, 0
		for _, w in ipairs(words) do
			if w == "#" then
				nhash = nhash + 1
			elseif w == "*" then
				nstar = nstar + 1
			end
		end
		entry.words, entry.nwords = words, #words
		entry.nhash, entry.nstar = nhash, nstar
		entry.nlit = #words - nhash - nstar
		entry.kind = (nhash + nstar > 0) and "pattern" or "exact"
	end
	return entry
end

--- Register a handler for an exchange and routing-key pattern.
--- `consumer(ex, pattern)(fn)` and `consumer(ex)(fn)` return fn (decorators stack);
--- `consumer(ex, pattern, fn)` registers directly and returns fn.
---@param exchange string
---@param pattern string|nil  routing key or topic pattern; nil = every routing key
---@param fn function|nil     handler(routing_key, body, message)
---@return function
function M.consumer(exchange, pattern, fn)
	if type(exchange) ~= "string" or exchange == "" then
		error(format("consumer: exchange must be a non-empty string, got %s",
			type(exchange) == "string" and '""' or type(exchange)), 2)
	end
	if #exchange > MAX_KEY_BYTES then
		error("consumer: exchange name longer than 255 bytes", 2)
	end
	if pattern ~= nil then
		if type(pattern) ~= "string" then
			error(format("consumer: routing key pattern must be a string or nil, got %s",
				type(pattern)), 2)
		end
		if #pattern > MAX_KEY_BYTES then
			error("consumer: routing key pattern longer than 255 bytes", 2)
		end
	end
	local where = caller_place(2)
	if fn ~= nil then
		if type(fn) ~= "function" then
			error(format("consumer: handler must be a function, got %s", type(fn)), 2)
		end
		add(new_entry(exchange, pattern, fn, where))
		return fn
	end
	return function(f)
		if type(f) ~= "function" then
			error(format("consumer: handler must be a function, got %s", type(f)), 2)
		end
		add(new_entry(exchange, pattern, f, where))
		return f
	end
end

--- Register a call handler (e.g. svccomm.call_consumer(fn)) for method on exchange under both
--- routing keys callers use: `<method>` (the Python library, and svccomm's send_call now) and
--- `call.<method>` (svccomm's send_call before), for the migration period while old callers
--- still run; drop the second key (register with consumer(exchange, method)) once they are
--- gone. `call_handler(ex, method)(h)` and `call_handler(ex, method, h)` return h.
---@param exchange string
---@param method string
---@param handler function|nil
---@return function
function M.call_handler(exchange, method, handler)
	if type(exchange) ~= "string" or exchange == "" or #exchange > MAX_KEY_BYTES then
		error("call_handler: exchange must be a non-empty string of at most 255 bytes", 2)
	end
	if type(method) ~= "string" or method == "" or #method + 5 > MAX_KEY_BYTES then
		error("call_handler: method must be a non-empty string of at most 250 bytes", 2)
	end
	local where = caller_place(2)
	local function register(h)
		if type(h) ~= "function" then
			error(format("call_handler: handler must be a function, got %s", type(h)), 3)
		end
		add(new_entry(exchange, method, h, where))
		add(new_entry(exchange, "call." .. method, h, where))
		return h
	end
	if handler ~= nil then
		return register(handler)
	end
	return register
end

--- Register the handler for messages no other handler takes (at most one).
---@param fn function handler(routing_key, body, message)
---@return function fn
function M.default_consumer(fn)
	if type(fn) ~= "function" then
		error(format("default_consumer: handler must be a function, got %s", type(fn)), 2)
	end
	local entry = {
		fn = fn,
		app = current_app,
		where = caller_place(2),
		defined = definition_place(fn),
		kind = "default",
	}
	add(entry)
	return fn
end

local function lookup(exchange, routing_key)
	local ex = state.exchanges[exchange]
	if ex then
		local e = ex.exact[routing_key]
		if e then
			return e
		end
		local pats = ex.patterns
		if not ex.sorted then
			sort(pats, more_specific)
			ex.sorted = true
		end
		if pats[1] then
			local kw = M.split(routing_key)
			local nk = #kw
			for i = 1, #pats do
				local p = pats[i]
				if match_words(p.words, p.nwords, kw, nk) then
					return p
				end
			end
		end
		if ex.wide then
			return ex.wide
		end
	end
	return state.default
end

--- The handler for a message, or nil when no handler (not even a default) takes it.
--- The returned entry is shared: treat it as read-only.
---@param exchange string
---@param routing_key string
---@return svccomm.Route|nil
function M.match(exchange, routing_key)
	if type(exchange) ~= "string" or type(routing_key) ~= "string" then
		error("match: exchange and routing key must be strings", 2)
	end
	if #exchange + #routing_key >= MAX_CACHED_KEY then
		return lookup(exchange, routing_key)
	end
	local ck = exchange .. "\0" .. routing_key
	local cache = state.cache
	local hit = cache[ck]
	if hit ~= nil then
		return hit or nil
	end
	local e = lookup(exchange, routing_key)
	local cost = #ck + CACHE_ENTRY_OVERHEAD
	if state.cache_size >= CACHE_LIMIT or state.cache_bytes + cost > CACHE_BYTES then
		cache = {}
		state.cache, state.cache_size, state.cache_bytes = cache, 0, 0
	end
	cache[ck] = e or false
	state.cache_size = state.cache_size + 1
	state.cache_bytes = state.cache_bytes + cost
	return e
end

local kind_rank = { exact = 1, pattern = 2, exchange = 3, default = 4 }

--- Every registration, sorted by exchange, then precedence (exact keys alphabetically,
--- patterns in match order, exchange-wide); the default consumer comes last.
---@return svccomm.Route[]
function M.routes()
	local out = {}
	for i, e in ipairs(state.entries) do
		out[i] = e
	end
	sort(out, function(a, b)
		if a.kind == "default" or b.kind == "default" then
			return b.kind == "default" and a.kind ~= "default"
		end
		if a.exchange ~= b.exchange then
			return a.exchange < b.exchange
		end
		if a.kind ~= b.kind then
			return kind_rank[a.kind] < kind_rank[b.kind]
		end
		if a.kind == "exact" then
			return a.pattern < b.pattern
		end
		if a.kind == "pattern" then
			return more_specific(a, b)
		end
		return a.seq < b.seq
	end)
	return out
end

--- Exchanges that have at least one handler, sorted.
---@return string[]
function M.exchanges()
	local out = {}
	for name in pairs(state.exchanges) do
		out[#out + 1] = name
	end
	sort(out)
	return out
end

--- Name the app whose consumers.lua is being loaded (nil when done); used by apps.lua.
---@param name string|nil
function M._set_current_app(name)
	if name ~= nil and type(name) ~= "string" then
		error("_set_current_app: name must be a string or nil", 2)
	end
	current_app = name
end

--- Record that `wrapper` calls `fn`, so routes report where fn is defined (used by handlers.lua).
---@param wrapper function
---@param fn function
---@return function wrapper
function M.wrapped(wrapper, fn)
	origins[wrapper] = fn
	return wrapper
end

--- Forget every registration (tests, or reloading apps).
function M.reset()
	state = { exchanges = {}, entries = {}, default = nil, seq = 0, cache = {}, cache_size = 0,
		cache_bytes = 0 }
	current_app = nil
end

--- Render the routing table as text lines (used by `svccomm check`).
---@return string
function M.format_routes()
	local lines = {}
	for _, e in ipairs(M.routes()) do
		local key
		if e.kind == "default" then
			key = "(default consumer)"
		elseif e.kind == "exchange" then
			key = e.exchange .. "  (every routing key)"
		else
			key = e.exchange .. "  " .. e.pattern
		end
		lines[#lines + 1] = format("%s  -> %s", key, e.handler_id)
	end
	return concat(lines, "\n")
end

M.reset()

return M
