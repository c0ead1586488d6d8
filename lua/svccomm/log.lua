--- svccomm.log: handler logging through svccomm's own logger (util/log.c).
---
--- Each call writes one line in the format of svccomm's own lines, on stderr:
---   2026-12-01T05:00:00.123Z info [worker 2 ][handler] order stored message_id=abc order=17
--- It honours the log level setting (a disabled level costs one C call), carries the worker
--- id and the id of the message being handled, and escapes control characters so one call is
--- one line. Fields are rendered key=value in key order; a table value is JSON-encoded. With
--- LOG_FORMAT = "json" the line is one JSON object and each field a string member of it.
local core = require "svccomm.core"

local type, tostring, pairs, ipairs, error, pcall = type, tostring, pairs, ipairs, error, pcall
local sort = table.sort

local M = {}

local function encode(v)
	local json = require "svccomm.json"
	local ok, text = pcall(json.encode, v)
	return ok and text or tostring(v)
end

-- {key = value} -> {"a", "1", "b", "x"} sorted by key
local function flatten(fields)
	local keys, flat = {}, {}
	for k in pairs(fields) do
		if type(k) ~= "string" or not k:match("^[%a_][%w_%.%-]*$") then
			error("svccomm.log: field names are identifiers (letters, digits, _ . -), got "
				.. tostring(k), 3)
		end
		keys[#keys + 1] = k
	end
	sort(keys)
	for i, k in ipairs(keys) do
		local v = fields[k]
		flat[2 * i - 1] = k
		flat[2 * i] = type(v) == "table" and encode(v) or tostring(v)
	end
	return flat
end

local function logger(level)
	---@param msg string
	---@param fields? table<string, any>
	return function(msg, fields)
		if not core.log_enabled(level) then
			return
		end
		if fields ~= nil and type(fields) ~= "table" then
			error("svccomm.log." .. level .. ": fields must be a table, got " .. type(fields), 2)
		end
		core.log(level, tostring(msg), fields and flatten(fields) or nil)
	end
end

M.debug = logger("debug")
M.info = logger("info")
M.warning = logger("warning")
M.warn = M.warning
M.error = logger("error")

return M
