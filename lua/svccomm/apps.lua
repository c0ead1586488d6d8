--- App loader: finds apps/<name>/consumers.lua under the project directory and runs them, so
--- their message_router registrations are attributed to the app.
local chunks = require("svccomm.chunks")
local router = require("svccomm.message_router")

local M = {}

local type, ipairs, error, format, tostring = type, ipairs, error, string.format, tostring
local pcall, xpcall, loadfile, getmetatable = pcall, xpcall, loadfile, getmetatable
local find, sub = string.find, string.sub
local concat, sort, getinfo = table.concat, table.sort, debug.getinfo
local unshorten, has_position = chunks.unshorten, chunks.has_position

local loaded = {} -- apps of the last successful load_all

local function join(dir, rel)
	if dir == "." or dir == "" then
		return rel
	end
	if sub(dir, -1) == "/" then
		return dir .. rel
	end
	return dir .. "/" .. rel
end

-- True when path is a file that can be read.
local function readable(path)
	local fh <close> = io.open(path, "r")
	if not fh then
		return false
	end
	-- a directory opens on Linux, but reading it fails ("Is a directory")
	local _, err = fh:read(1)
	return err == nil
end

-- True when path exists (a file or a directory) and can be opened.
local function exists(path)
	local fh <close> = io.open(path, "r")
	return fh ~= nil
end

local function listdir(dir)
	local ok, core = pcall(require, "svccomm.core")
	if not ok or type(core) ~= "table" or not core.listdir then
		error("apps: the native module svccomm.core (listdir) is not available: " .. tostring(core), 0)
	end
	return core.listdir(dir)
end

--- The apps to load: INSTALLED_APPS in their order, or (nil) every apps/*/consumers.lua
--- sorted by name. An INSTALLED_APPS entry without apps/<name>/consumers.lua is an error.
---@param project_dir string
---@param installed_apps string[]|nil
---@return {name:string, path:string}[]
function M.discover(project_dir, installed_apps)
	if type(project_dir) ~= "string" or project_dir == "" then
		error("discover: project_dir must be a non-empty string", 2)
	end
	if installed_apps ~= nil and type(installed_apps) ~= "table" then
		error("discover: installed_apps must be a list of names or nil", 2)
	end
	local out = {}
	if installed_apps then
		for _, name in ipairs(installed_apps) do
			local rel = "apps/" .. tostring(name) .. "/consumers.lua"
			local path = join(project_dir, rel)
			if not readable(path) then
				error(format("INSTALLED_APPS: app '%s' not found: %s does not exist", tostring(name),
					path), 0)
			end
			out[#out + 1] = { name = name, path = path }
		end
		return out
	end
	local apps_dir = join(project_dir, "apps")
	if not exists(apps_dir) then
		return out -- no apps/ directory: no apps
	end
	local names, err = listdir(apps_dir)
	if not names then
		error(format("apps: cannot list %s: %s", apps_dir, tostring(err)), 0)
	end
	sort(names)
	for _, name in ipairs(names) do
		if sub(name, 1, 1) ~= "." then
			local path = join(project_dir, "apps/" .. name .. "/consumers.lua")
			if readable(path) then
				out[#out + 1] = { name = name, path = path }
			end
		end
	end
	return out
end

--- Prepend <dir>/apps/?.lua;<dir>/apps/?/init.lua;<dir>/?.lua to package.path (once per dir).
--- The one place that sets the path: load_all calls it, and so does the binary's runtime when
--- it creates the Lua state (before settings.lua runs).
---@param project_dir string
function M.extend_path(project_dir)
	local pre = join(project_dir, "apps/?.lua") .. ";" .. join(project_dir, "apps/?/init.lua") .. ";"
		.. join(project_dir, "?.lua") .. ";"
	if find(package.path, pre, 1, true) then
		return
	end
	package.path = pre .. package.path
end

-- file of a stack frame, as loadfile named it
local function frame_file(info)
	local src = info.source
	return sub(src, 1, 1) == "@" and sub(src, 2) or info.short_src
end

-- A traceback from `level` up to the app's main chunk (not the loader's frames), with full
-- file names.
local function app_traceback(level, chunk)
	local lines = { "stack traceback:" }
	while true do
		local info = getinfo(level + 1, "Slnf")
		if not info then
			break
		end
		local where
		if info.what == "C" then
			where = "[C]"
		else
			where = frame_file(info) .. ":" .. (info.currentline or 0)
		end
		local what
		if info.what == "main" then
			what = "main chunk"
		elseif info.name then
			what = format("%s '%s'", info.namewhat ~= "" and info.namewhat or "function", info.name)
		elseif info.what == "C" then
			what = "?"
		else
			what = format("function <%s:%d>", frame_file(info), info.linedefined)
		end
		lines[#lines + 1] = "\t" .. where .. ": in " .. what
		if info.func == chunk then
			break
		end
		level = level + 1
	end
	return concat(lines, "\n")
end

-- A message handler for xpcall: keeps the message and a traceback, and gives a message without
-- a position the line of the app's file that led to it (else the innermost Lua line).
local function error_handler(app_path, chunk)
	return function(e)
		local msg
		if type(e) == "string" then
			msg = e
		else
			local mt = getmetatable(e)
			if mt and mt.__tostring then
				msg = tostring(e)
			else
				msg = format("(error object is a %s value)", type(e))
			end
		end
		if not has_position(msg) then
			local first
			for level = 2, 200 do
				local info = getinfo(level, "Sl")
				if not info then
					break
				end
				if info.what ~= "C" and info.currentline and info.currentline > 0 then
					local here = frame_file(info) .. ":" .. info.currentline
					first = first or here
					if frame_file(info) == app_path then
						first = here
						break
					end
				end
			end
			if first then
				msg = first .. ": " .. msg
			end
		end
		return { msg = msg, traceback = app_traceback(2, chunk) }
	end
end

--- Load every app: run apps/<name>/consumers.lua with the app set as current in the router.
--- An error raises "app '<name>' failed to load: <file>:<line>: <message>\n<traceback>".
---@param project_dir string
---@param installed_apps string[]|nil
---@return {name:string, path:string}[] the loaded apps
function M.load_all(project_dir, installed_apps)
	if type(project_dir) ~= "string" or project_dir == "" then
		error("load_all: project_dir must be a non-empty string", 2)
	end
	local apps = M.discover(project_dir, installed_apps)
	M.extend_path(project_dir)
	for _, app in ipairs(apps) do
		local chunk, err = loadfile(app.path, "t")
		if not chunk then
			error(format("app '%s' failed to load: %s", app.name, unshorten(tostring(err), app.path)), 0)
		end
		router._set_current_app(app.name)
		local ok, res = xpcall(chunk, error_handler(app.path, chunk), app.name, app.path)
		router._set_current_app(nil)
		if not ok then
			error(format("app '%s' failed to load: %s\n%s", app.name, unshorten(res.msg, app.path),
				res.traceback), 0)
		end
	end
	loaded = apps
	return apps
end

--- The apps loaded by the last successful load_all ({name, path} each; a copy).
---@return {name:string, path:string}[]
function M.loaded()
	local out = {}
	for i, a in ipairs(loaded) do
		out[i] = { name = a.name, path = a.path }
	end
	return out
end

return M
