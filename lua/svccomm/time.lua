--- svccomm.time: ISO 8601 date-times read from messages and given to the outbox API
--- (command and call expiry, scheduled events). Writing them is svccomm.core.utc_iso's job.
local M = {}

local type, tonumber, match, floor = type, tonumber, string.match, math.floor

local function is_leap(y)
	return (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0
end

local mdays = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

-- days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)
local function days_from_civil(y, m, d)
	if m <= 2 then
		y = y - 1
	end
	local era = floor(y / 400)
	local yoe = y - era * 400
	local mp = (m + 9) % 12
	local doy = (153 * mp + 2) // 5 + d - 1
	local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
	return era * 146097 + doe - 719468
end

--- Parse an ISO-8601 / RFC 3339 date-time to seconds since the epoch (UTC), with fraction.
--- Accepts "YYYY-MM-DDTHH:MM:SS[.fff][Z|+hh:mm|-hh:mm|+hhmm]" ('T' or space; a time without
--- a zone is taken as UTC).
---@param s string
---@return number|nil seconds, string|nil err
function M.parse(s)
	if type(s) ~= "string" then
		return nil, "not a string"
	end
	local y, mo, d, h, mi, sec, rest =
		match(s, "^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(.*)$")
	if not y then
		return nil, "not an ISO-8601 date-time"
	end
	y, mo, d, h, mi, sec = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi),
		tonumber(sec)
	local frac = 0
	local f, after = match(rest, "^[.,](%d+)(.*)$")
	if f then
		frac = tonumber("0." .. f)
		rest = after
	end
	local offset = 0
	if rest == "Z" or rest == "z" or rest == "" then
		offset = 0
	else
		local sign, oh, om = match(rest, "^([+-])(%d%d):?(%d%d)$")
		if not sign then
			return nil, "bad time zone designator"
		end
		oh, om = tonumber(oh), tonumber(om)
		if oh > 23 or om > 59 then
			return nil, "time zone offset out of range"
		end
		offset = (oh * 60 + om) * 60
		if sign == "-" then
			offset = -offset
		end
	end
	if mo < 1 or mo > 12 then
		return nil, "month out of range"
	end
	local dim = mdays[mo]
	if mo == 2 and is_leap(y) then
		dim = 29
	end
	if d < 1 or d > dim then
		return nil, "day out of range"
	end
	if h > 23 or mi > 59 or sec > 60 then
		return nil, "time out of range"
	end
	local days = days_from_civil(y, mo, d)
	return days * 86400 + h * 3600 + mi * 60 + sec + frac - offset
end

local units = { s = 1, m = 60, h = 3600, d = 86400 }

--- Parse a relative time "+10s", "+5m", "+1h", "+2d" (also "+1.5h") to a number of seconds.
---@param s string
---@return number|nil seconds, string|nil err
function M.parse_relative(s)
	if type(s) ~= "string" then
		return nil, "not a string"
	end
	local n, unit = match(s, "^%+(%d+%.?%d*)([smhd])$")
	if not n then
		return nil, "not a relative time (+<number><s|m|h|d>, e.g. +10s, +5m, +1h)"
	end
	return tonumber(n) * units[unit]
end

return M
