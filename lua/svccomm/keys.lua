--- Key style conversion for decoded JSON bodies: camelCase <-> snake_case, recursively, with
--- exactly the rules of djangorestframework-camel-case's default options (the version the
--- Python library 2.6 uses), so a key means the same thing to a Python and a Lua handler.
--
-- Only string keys of tables are converted; integer keys (arrays) stay and their elements are
-- converted. Values that are not tables (strings, numbers, booleans, cjson.null) are kept as
-- they are. The input is never mutated; metatables (e.g. cjson's array marker) are carried over.
-- A table that contains itself (a cycle) is an error; a table shared by two parents is fine.
--
-- to_snake (its underscoreize): the regular expression
--   ([a-z0-9]|[A-Z]?(?=[A-Z0-9](?=[a-z0-9]|(?<![A-Z])$)))
--   ([A-Z]|(?<=[a-z])[0-9](?=[0-9A-Z]|$)|(?<=[A-Z])[0-9](?=[0-9]|$))
-- replaced by "\1_\2", then the whole key lower-cased: "userId" -> "user_id",
-- "address1" -> "address_1", "utf8Name" -> "utf_8_name", "a1b2" -> "a1b_2",
-- "Private" -> "_private", "HTTPResponse" -> "http_response", "userID" -> "user_id".
-- Character classes are ASCII; lower-casing also covers Latin-1, Latin Extended-A, Greek and
-- Cyrillic capitals (Python lower-cases all of Unicode; other scripts are left as they are).
--
-- to_camel (its camelize), for keys containing "_": "[a-z0-9]?_[a-z0-9]" replaced by the
-- first character and the upper-cased last one: "user_id" -> "userId", "_private" ->
-- "Private", "a__b" -> "a_B", "x_1y" -> "x1y", "__dunder__" -> "_Dunder__".
--
-- Collisions (two source keys converting to the same key, e.g. "eventId" and "event_id"): the
-- key already in the target style wins; otherwise the lexically smaller source key wins
-- (Python keeps the later one in the object's order, which a Lua table does not keep).
local M = {}

local type, error, next = type, error, next
local getmetatable, setmetatable = getmetatable, setmetatable
local find, lower, upper, byte, sub, char = string.find, string.lower, string.upper, string.byte,
	string.sub, string.char
local concat = table.concat
local utf8_char, utf8_codes = utf8.char, utf8.codes

local CACHE_LIMIT = 2048

local function is_upper(c)
	return c ~= nil and c >= 65 and c <= 90
end
local function is_lower(c)
	return c ~= nil and c >= 97 and c <= 122
end
local function is_digit(c)
	return c ~= nil and c >= 48 and c <= 57
end
local function is_lower_or_digit(c)
	return is_lower(c) or is_digit(c)
end

-- Python's "$": the end, or just before a final newline
local function at_end(s, j, n)
	return j > n or (j == n and byte(s, n) == 10)
end

-- the second group at j: its end (exclusive), or nil
local function second_group(s, j, n)
	local c = byte(s, j)
	if is_upper(c) then
		return j + 1
	end
	if is_digit(c) and j > 1 then
		local p, q = byte(s, j - 1), byte(s, j + 1)
		if is_lower(p) and (is_digit(q) or is_upper(q) or at_end(s, j + 1, n)) then
			return j + 1
		end
		if is_upper(p) and (is_digit(q) or at_end(s, j + 1, n)) then
			return j + 1
		end
	end
	return nil
end

-- the lookahead (?=[A-Z0-9](?=[a-z0-9]|(?<![A-Z])$)) at k
local function ahead(s, k, n)
	local c = byte(s, k)
	if not (is_upper(c) or is_digit(c)) then
		return false
	end
	return is_lower_or_digit(byte(s, k + 1)) or (at_end(s, k + 1, n) and not is_upper(c))
end

-- one match of the expression at i, as Python's backtracking finds it: the end of the first
-- group and of the whole match, or nil
local function match_at(s, i, n)
	local c = byte(s, i)
	local e
	if is_lower_or_digit(c) then
		e = second_group(s, i + 1, n)
		if e then
			return i + 1, e
		end
	end
	if is_upper(c) and ahead(s, i + 1, n) then
		e = second_group(s, i + 1, n)
		if e then
			return i + 1, e
		end
	end
	if ahead(s, i, n) then
		e = second_group(s, i, n)
		if e then
			return i, e
		end
	end
	return nil
end

-- lower-case map of the non-ASCII capitals Python's str.lower() changes most often
local function lower_code(cp)
	if (cp >= 0xC0 and cp <= 0xDE and cp ~= 0xD7) or (cp >= 0x391 and cp <= 0x3AB and cp ~= 0x3A2)
		or (cp >= 0x410 and cp <= 0x42F) then
		return cp + 0x20
	elseif cp >= 0x400 and cp <= 0x40F then
		return cp + 0x50
	elseif cp == 0x178 then
		return 0xFF
	elseif (cp >= 0x100 and cp <= 0x137 and cp ~= 0x130) or (cp >= 0x14A and cp <= 0x177) then
		return cp % 2 == 0 and cp + 1 or cp
	elseif (cp >= 0x139 and cp <= 0x148) or (cp >= 0x179 and cp <= 0x17E) then
		return cp % 2 == 1 and cp + 1 or cp
	elseif cp == 0x130 then
		return nil -- "İ" lower-cases to two code points
	end
	return cp
end

local function unicode_lower(s)
	s = lower(s)
	if not find(s, "[\xC3-\xD0]") or not utf8.len(s) then
		return s
	end
	local out, n = {}, 0
	for _, cp in utf8_codes(s) do
		local l = lower_code(cp)
		n = n + 1
		out[n] = l and utf8_char(l) or "i\u{307}"
	end
	return concat(out)
end

--- Convert one camelCase name to snake_case (djangorestframework-camel-case's rule).
---@param s string
---@return string
function M.snake_name(s)
	local n = #s
	local out, k = {}, 0
	local i, copied = 1, 1
	while i <= n do
		local g1, e = match_at(s, i, n)
		if g1 then
			out[k + 1] = sub(s, copied, g1 - 1)
			out[k + 2] = "_"
			out[k + 3] = sub(s, g1, e - 1)
			k = k + 3
			i, copied = e, e
		else
			i = i + 1
		end
	end
	if k == 0 then
		return unicode_lower(s)
	end
	out[k + 1] = sub(s, copied)
	return unicode_lower(concat(out))
end

--- Convert one snake_case name to camelCase (djangorestframework-camel-case's rule).
---@param s string
---@return string
function M.camel_name(s)
	if not find(s, "_", 1, true) then
		return s
	end
	local n = #s
	local out, k = {}, 0
	local i = 1
	while i <= n do
		local c = byte(s, i)
		if is_lower_or_digit(c) and byte(s, i + 1) == 95 and is_lower_or_digit(byte(s, i + 2)) then
			out[k + 1] = char(c)
			out[k + 2] = upper(char(byte(s, i + 2)))
			k = k + 2
			i = i + 3
		elseif c == 95 and is_lower_or_digit(byte(s, i + 1)) then
			k = k + 1
			out[k] = upper(char(byte(s, i + 1)))
			i = i + 2
		else
			k = k + 1
			out[k] = char(c)
			i = i + 1
		end
	end
	return concat(out)
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
