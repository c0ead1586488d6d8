--- svccomm.chunks: error messages about the project's own Lua files (settings.lua,
--- apps/<name>/consumers.lua), shared by svccomm.settings and svccomm.apps.
local M = {}

local type, find, sub, match = type, string.find, string.sub, string.match

--- Lua shortens long chunk names in messages ("...tail/of/path.lua:3: msg"); put back the
--- full path when the shown name is the tail of `path`. Other messages are returned as given.
---@param msg any
---@param path string  the file the message is about
---@return any
function M.unshorten(msg, path)
	if type(msg) ~= "string" or sub(msg, 1, 3) ~= "..." then
		return msg
	end
	local shown, line, rest = match(msg, "^%.%.%.(.-):(%d+): (.*)$")
	if shown and #shown > 0 and #path > #shown and sub(path, -#shown) == shown then
		return path .. ":" .. line .. ": " .. rest
	end
	return msg
end

--- True when the first line of msg starts with a "<file>:<line>: " position.
---@param msg string
---@return boolean
function M.has_position(msg)
	return find(msg, "^[^\n]-:%d+: ") ~= nil
end

return M
