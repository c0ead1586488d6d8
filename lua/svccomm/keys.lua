--- Key style conversion for decoded JSON bodies: camelCase <-> snake_case, recursively.
--
-- Only string keys of tables are converted; integer keys (arrays) stay and their elements are
-- converted. Values that are not tables (strings, numbers, booleans, cjson.null) are kept as
-- they are. The input is never mutated; metatables (e.g. cjson's array marker) are carried over.
-- A table that contains itself (a cycle) is an error; a table shared by two parents is fine.
--
-- to_snake word rule: an upper-case letter starts a new word when it follows a lower-case
-- letter or digit, or when it is the last capital of a run followed by a lower-case letter;
-- a run of capitals is one word. So "eventId" -> "event_id", "HTTPServer" -> "http_server",
-- "userID" -> "user_id", "getHTTPResponse" -> "get_http_response", "utf8Name" -> "utf8_name".
-- No "_" is added next to an existing "_".
--
-- to_camel: each "_" followed by a letter or digit is removed and that character upper-cased
-- ("event_id" -> "eventId", "http_server" -> "httpServer"); leading and trailing "_" stay.
--
-- Collisions (two source keys converting to the same key, e.g. "eventId" and "event_id"): the
-- key already in the target style wins; otherwise the lexically smaller source key wins.
local M = {}

local type, pairs, error, next = type, pairs, error, next
local getmetatable, setmetatable = getmetatable, setmetatable
local find, gsub, lower, upper, byte = string.find, string.gsub, string.lower, string.upper, string.byte

local CACHE_LIMIT = 2048

local function is_upper(c)
	return c and c >= 65 and c <= 90
end
local function is_lower_or_digit(c)
	return c and ((c >= 97 and c <= 122) or (c >= 48 and c <= 57))
end
local function is_lower(c)
	return c and c >= 97 and c <= 122
end

--- Convert one camelCase name to snake_case (see the module comment for the rule).
---@param s string
---@return string
function M.snake_name(s)
	if not find(s, "%u") then
		return s
	end
	local out, n = {}, 0
	local len = #s
	for i = 1, len do
		local c = byte(s, i)
		if is_upper(c) and i > 1 then
			local p = byte(s, i - 1)
			if p ~= 95 and (is_lower_or_digit(p) or (is_upper(p) and is_lower(byte(s, i + 1)))) then
				n = n + 1
				out[n] = "_"
			end
		end
		n = n + 1
		out[n] = s:sub(i, i)
	end
	return lower(table.concat(out))
end

--- Convert one snake_case name to camelCase.
---@param s string
---@return string
function M.camel_name(s)
	if not find(s, "_", 1, true) then
		return s
	end
	local lead, body, trail = s:match("^(_*)(.-)(_*)$")
	body = gsub(body, "_+(%w)", upper)
	return lead .. body .. trail
end

local function make_converter(name_fn, what)
	local cache, cache_size = {}, 0

	local function convert_key(k)
		local r = cache[k]
		if r then
			return r
		end
		r = name_fn(k)
		if cache_size >= CACHE_LIMIT then
			cache, cache_size = {}, 0
		end
		cache[k] = r
		cache_size = cache_size + 1
		return r
	end

	local walk
	walk = function(v, visiting)
		if type(v) ~= "table" then
			return v
		end
		if visiting[v] then
			error(what .. ": cycle detected (a table contains itself)", 0)
		end
		visiting[v] = true
		local out, origin = {}, nil
		for k, val in next, v do
			local nk = k
			if type(k) == "string" then
				nk = convert_key(k)
			end
			local nv = walk(val, visiting)
			if out[nk] == nil then
				out[nk] = nv
				if nk ~= k then
					origin = origin or {}
					origin[nk] = k
				end
			else
				-- collision: the key already in target form wins, else the smaller source
				origin = origin or {}
				local prev = origin[nk] or nk
				if prev ~= nk and (k == nk or k < prev) then
					out[nk] = nv
					origin[nk] = k
				end
			end
		end
		visiting[v] = nil
		local mt = getmetatable(v)
		if mt then
			setmetatable(out, mt)
		end
		return out
	end

	return function(value)
		if type(value) ~= "table" then
			return value
		end
		return walk(value, {})
	end
end

--- Return a copy of value with every table key converted from camelCase to snake_case.
---@param value any
---@return any
M.to_snake = make_converter(M.snake_name, "to_snake")

--- Return a copy of value with every table key converted from snake_case to camelCase.
---@param value any
---@return any
M.to_camel = make_converter(M.camel_name, "to_camel")

return M
