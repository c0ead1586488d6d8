-- busted helper: make lua/ and build/lua/ reachable whatever the working directory, and give
-- specs the fixture directory. Loaded once, before the spec files (insulation keeps globals
-- and package.loaded entries set here).
local src = debug.getinfo(1, "S").source:sub(2)
local spec_dir = src:match("^(.*)/[^/]*$") or "."
local root = spec_dir .. "/../.."

package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = package.cpath .. ";" .. root .. "/build/lua/?.so"

SPEC = {
	root = root,
	fixtures = spec_dir .. "/fixtures",
}

-- an env function (like os.getenv) over a plain table
function SPEC.env(vars)
	vars = vars or {}
	return function(name)
		return vars[name]
	end
end

-- the error value raised by fn(...), or nil when it did not raise
function SPEC.error_of(fn, ...)
	local ok, err = pcall(fn, ...)
	if ok then
		return nil
	end
	return err
end

-- (re)creates outbox table name on svccomm.db connection d from sql/001_outbox.sql
function SPEC.create_outbox(d, name)
	local f = assert(io.open(root .. "/sql/001_outbox.sql"))
	local sql = f:read("a")
	f:close()
	sql = sql:gsub("{{outbox}}", '"' .. name .. '"'):gsub("{{outbox_name}}", name):gsub("{{outbox_prefix}}", "")
	d:exec('DROP TABLE IF EXISTS "' .. name .. '"')
	d:exec(sql)
end
