--- svccomm.scaffold: the files `svccomm init` writes for a new service. settings.lua is made
--- from svccomm.settings_schema (every key, commented, at its default), so it cannot drift
--- from the settings svccomm knows. Not part of the public API.
local schema = require "svccomm.settings_schema"

local M = {}

local format, concat, gsub = string.format, table.concat, string.gsub

-- Wraps text into "-- " comment lines of at most width columns.
local function comment(text, width)
	local lines, line = {}, "--"
	for word in text:gmatch("%S+") do
		if #line + 1 + #word > width and line ~= "--" then
			lines[#lines + 1] = line
			line = "--"
		end
		line = line .. " " .. word
	end
	lines[#lines + 1] = line
	return lines
end

-- Settings the scaffold sets rather than leaving at the default: a runnable service needs
-- a queue, and the example app's exchange must be declared and bound.
local OVERRIDES = {
	APP_ID = '"%s"',
	QUEUE = '"%s"',
	EXCHANGES = '{ "example" }',
	BINDS = '{ { "example", "thing.*" } }',
}

--- The text of settings.lua for a service named name: every schema key, documented, at
--- its default (commented out), except the few OVERRIDES.
---@param name string
---@return string
function M.settings(name)
	local out = {
		"-- Settings of " .. name .. ", written by `svccomm init`. Every key svccomm knows is",
		"-- listed with its documentation and its default (commented out: the default applies);",
		"-- uncomment a line to change it. `svccomm check` validates this file.",
		"return {",
	}
	for _, row in ipairs(schema.reference()) do
		local full = schema.by_key[row.key]
		out[#out + 1] = ""
		for _, l in ipairs(comment(full.doc, 96)) do
			out[#out + 1] = "\t" .. l
		end
		local over = OVERRIDES[row.key]
		if over then
			out[#out + 1] = format("\t%s = %s, -- set by init (default %s)", row.key,
				format(over, name), row.default)
		else
			-- commented out: the default applies, and uncommenting one line changes only that
			-- key (BROKER_TLS written out would be an error with an amqp:// URL)
			out[#out + 1] = format("\t-- %s = %s,", row.key, row.default)
		end
	end
	out[#out + 1] = "}"
	return concat(out, "\n") .. "\n"
end

-- JSON string literal of s (paths only: backslash and quote escaped).
local function json_string(s)
	return '"' .. gsub(s, '[\\"]', "\\%0") .. '"'
end

--- The files of a new service: an array of {path, text}, paths relative to its directory.
---@param name string the service name (APP_ID, QUEUE)
---@param templates table<string, string> template path -> text (the embedded templates)
---@param types_dir string where the LuaLS definition files are installed
---@return table[]
function M.files(name, templates, types_dir)
	local luarc = gsub(templates[".luarc.json"], "@TYPES_DIR@", function()
		return json_string(types_dir)
	end)
	return {
		{ "settings.lua", M.settings(name) },
		{ "apps/example/consumers.lua", templates["apps/example/consumers.lua"] },
		{ "spec/example_spec.lua", templates["spec/example_spec.lua"] },
		{ ".luarc.json", luarc },
		{ ".gitignore", templates[".gitignore"] },
	}
end

-- The LuaLS type of a schema type (the README's words).
local LUA_TYPES = {
	string = "string", URL = "string", ["URL or list"] = "string|string[]", conninfo = "string", identifier = "string",
	enum = "string", boolean = "boolean", integer = "integer", seconds = "number",
	table = "table", list = "table", ["list of seconds"] = "number[]",
}

--- The text of types/svccomm.settings.lua: a LuaLS class with one field per schema key, so
--- the editor completes and checks settings.lua (tests/spec/scaffold_spec.lua keeps the
--- shipped file equal to it; scripts/settings-types.lua prints it).
---@return string
function M.settings_types()
	local out = {
		"---@meta svccomm.settings",
		"-- Generated from lua/svccomm/settings_schema.lua by scripts/settings-types.lua; do not edit.",
		"",
		"---The table settings.lua returns (see the README, Settings).",
		"---@class svccomm.Settings",
	}
	for _, row in ipairs(schema.reference()) do
		local full = schema.by_key[row.key]
		local doc = full.doc:gsub("%s+", " ")
		out[#out + 1] = format("---@field %s %s|nil %s (default %s)", row.key,
			LUA_TYPES[row.type] or "any", doc, row.default)
	end
	out[#out + 1] = ""
	return concat(out, "\n") .. "\n"
end

return M
