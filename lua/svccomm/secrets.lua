--- svccomm.secrets: passwords out of what svccomm shows (settings errors, `svccomm check`).
---
--- Not a masker of its own: both functions are the C masker of svccomm.core (src/util/secret.c,
--- built on amqp_parse_url and PQconninfoParse), the one the binary uses for its logs and
--- errors, so Lua and C hide the same passwords the same way. Without svccomm.core they raise
--- rather than show a string that may hold a password.
local M = {}

local type, tostring, pcall, require, error = type, tostring, pcall, require, error

-- svccomm.core, looked up at each call: settings load without the native module (they only
-- skip the URL checks then), so this module must load without it too.
local function native()
	local ok, core = pcall(require, "svccomm.core")
	if not ok or type(core) ~= "table" or not core.mask_secret then
		error("svccomm.secrets: the native module svccomm.core is not available", 3)
	end
	return core
end

--- The URL or libpq conninfo with every password replaced by "****": user:password@ of a URL
--- (up to the last '@', so an unencoded '@' in a password is masked whole), ?password= and
--- &password= query parameters, password=... of a key=value conninfo. A value that is not a
--- string is returned as it is.
---@param url any
---@return any
function M.mask(url)
	if type(url) ~= "string" then
		return url
	end
	return native().mask_secret(url)
end

--- An error text without any password of url: url becomes its masked form and each password
--- (raw, percent-decoded, and each '@'-separated piece of 4+ bytes) becomes "****"; a text
--- still holding a password shorter than 4 bytes is replaced whole by
--- "(details hidden because they contain the password)".
---@param text any  converted with tostring
---@param url string  the URL or conninfo whose passwords must not show
---@return string
function M.scrub(text, url)
	if type(url) ~= "string" then
		error("scrub: url must be a string, got " .. type(url), 2)
	end
	return native().scrub_secret(tostring(text), url)
end

return M
