--- svccomm.json: the JSON text svccomm writes (outbox payloads, parameters of json/jsonb
--- columns) and reads (json/jsonb columns).
---
--- The encoder is not cjson's: lua-cjson 2.1 writes numbers with 14 significant digits
--- (integers above 1e14 lose digits) and cannot write an empty array. Nor is the decoder
--- (svccomm.core.json_decode, src/lua/json_decode.c): strict RFC 8259, JSON null -> json.null,
--- integers that fit in int64 -> Lua integers exactly, every other number -> float.
---
--- svccomm.db re-exports encode as db.encode_json and array as db.array (and svccomm.array).
local cjson = require "cjson"
local core = require "svccomm.core"

local M = {}

local type, error, next, tostring, tonumber = type, error, next, tostring, tonumber
local setmetatable, getmetatable, rawlen = setmetatable, getmetatable, rawlen
local format, gsub, char, concat, sort = string.format, string.gsub, string.char, table.concat, table.sort
local math_type, tointeger, huge = math.type, math.tointeger, math.huge
local utf8len = utf8.len

local cjson_empty_array = cjson.empty_array
local cjson_array_mt = cjson.array_mt
local NULL = cjson.null

--- JSON null (the same value as cjson.null and svccomm.null).
M.null = NULL

local array_mt = { __name = "svccomm.array" }
M.array_mt = array_mt

--- Mark t (default a new table) as a JSON array, so that an empty one encodes as [] (an
--- unmarked empty table encodes as {}). Returns t. cjson.empty_array and tables carrying
--- cjson.array_mt are honoured too when the cjson build has them.
---@param t table|nil
---@return table
function M.array(t)
	if t == nil then
		t = {}
	elseif type(t) ~= "table" then
		error("array: expected a table, got " .. type(t), 2)
	end
	return setmetatable(t, array_mt)
end

local escapes = {
	['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
	["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}
for i = 0, 31 do
	local c = char(i)
	if not escapes[c] then
		escapes[c] = format("\\u%04x", i)
	end
end

local function path_string(path, depth)
	local parts = {}
	for i = 1, depth do
		local k = path[i]
		if type(k) == "number" then
			parts[#parts + 1] = "[" .. k .. "]"
		elseif k:match("^[%a_][%w_]*$") then
			parts[#parts + 1] = "." .. k
		else
			parts[#parts + 1] = format("[%q]", k)
		end
	end
	return concat(parts)
end

--- Encode a Lua value as JSON text. Strings must be valid UTF-8; integers are exact; floats
--- use the shortest form that reads back equal; object keys are sorted; an empty table is {}
--- unless marked with json.array(). Raises (before producing anything) on NaN or infinity,
--- functions, userdata other than null, cycles, non-string keys in an object, sparse or
--- mixed tables, and nesting deeper than max_depth (default 128). `what` names the value in
--- error messages (default "value").
---@param value any
---@param max_depth integer|nil
---@param what string|nil
---@return string
function M.encode(value, max_depth, what)
	if type(value) == "string" and utf8len(value) then
		-- the common case of names and ids: no encoder state needed
		return '"' .. gsub(value, '[%z\1-\31"\\]', escapes) .. '"'
	end
	max_depth = max_depth or 128
	what = what or "value"
	local buf, n = {}, 0
	local path, visiting = {}, {}

	local function fail(depth, msg)
		error(format("%s%s: %s", what, path_string(path, depth), msg), 0)
	end

	local function quote(s, depth)
		if not utf8len(s) then
			fail(depth, "string is not valid UTF-8")
		end
		return '"' .. gsub(s, '[%z\1-\31"\\]', escapes) .. '"'
	end

	local enc

	local function enc_table(t, depth)
		if visiting[t] then
			fail(depth, "cycle: the table contains itself")
		end
		if depth >= max_depth then
			fail(depth, format("nested deeper than %d levels", max_depth))
		end
		local mt = getmetatable(t)
		local is_array = t == cjson_empty_array or (mt ~= nil and (mt == array_mt or mt == cjson_array_mt))
		local len = rawlen(t)
		local count, strkeys, bad = 0, nil, nil
		for k in next, t do
			count = count + 1
			local tk = type(k)
			if tk == "string" then
				strkeys = strkeys or {}
				strkeys[#strkeys + 1] = k
			elseif tk == "number" then
				if not (math_type(k) == "integer" and k >= 1 and k <= len) then
					bad = bad or k
				end
			else
				fail(depth, "table key of type " .. tk .. " (JSON keys are strings)")
			end
		end
		visiting[t] = true
		if count == 0 then
			n = n + 1
			buf[n] = is_array and "[]" or "{}"
		elseif not strkeys and not bad and count == len then
			n = n + 1
			buf[n] = "["
			for i = 1, len do
				if i > 1 then
					n = n + 1
					buf[n] = ","
				end
				path[depth + 1] = i
				enc(t[i], depth + 1)
			end
			n = n + 1
			buf[n] = "]"
		elseif strkeys and #strkeys == count and not is_array then
			sort(strkeys)
			n = n + 1
			buf[n] = "{"
			for i = 1, #strkeys do
				local k = strkeys[i]
				path[depth + 1] = k
				n = n + 1
				buf[n] = (i > 1 and "," or "") .. quote(k, depth + 1) .. ":"
				enc(t[k], depth + 1)
			end
			n = n + 1
			buf[n] = "}"
		elseif strkeys then
			fail(depth, "table mixes string keys and array items (JSON has no such value)")
		else
			fail(depth, format("sparse array or non-sequence number key (%s)", tostring(bad or len + 1)))
		end
		visiting[t] = nil
	end

	enc = function(v, depth)
		local tv = type(v)
		if tv == "string" then
			n = n + 1
			buf[n] = quote(v, depth)
		elseif tv == "number" then
			local s
			if math_type(v) == "integer" then
				s = format("%d", v)
			elseif v ~= v or v == huge or v == -huge then
				fail(depth, "NaN or infinity cannot be encoded as JSON")
			else
				local i = tointeger(v)
				if i then
					s = format("%d", i)
				else
					for p = 14, 17 do
						s = format("%." .. p .. "g", v)
						if tonumber(s) == v then
							break
						end
					end
				end
			end
			n = n + 1
			buf[n] = s
		elseif tv == "boolean" then
			n = n + 1
			buf[n] = v and "true" or "false"
		elseif tv == "table" then
			enc_table(v, depth)
		elseif v == nil or v == NULL then
			n = n + 1
			buf[n] = "null"
		else
			fail(depth, "a " .. tv .. " cannot be encoded as JSON")
		end
	end

	enc(value, 0)
	return concat(buf, "", 1, n)
end
local core_decode = core.json_decode

--- Decode JSON text (strict RFC 8259): JSON null is json.null; an integer without fraction or
--- exponent that fits in int64 is a Lua integer, exactly; every other number is a float (an
--- integer beyond int64: the nearest float, logged at debug); arrays and objects are plain
--- tables. Raises on invalid text or nesting deeper than max_depth (default 1000, at most 1000).
---@param text string
---@param max_depth integer|nil
---@return any
function M.decode(text, max_depth)
	if type(text) ~= "string" then
		error("decode: expected a string, got " .. type(text), 2)
	end
	local v, err = core_decode(text, max_depth)
	if err then
		error("decode: invalid JSON: " .. err, 2)
	end
	return v
end

--- As decode, but invalid text returns nil, message instead of raising.
---@param text string
---@param max_depth integer|nil
---@return any value
---@return string|nil err
function M.try_decode(text, max_depth)
	if type(text) ~= "string" then
		error("try_decode: expected a string, got " .. type(text), 2)
	end
	return core_decode(text, max_depth)
end

return M
