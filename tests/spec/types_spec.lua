-- The LuaLS definition files in types/ (shipped to share/svccomm/types, where the .luarc.json
-- of `svccomm init` points): they parse, annotate every public function of the svccomm facade
-- and its message_router and db, and the settings class is the one the schema generates.
-- lua-language-server is not packaged for Debian 12, so the README gives the manual check.
local root = SPEC.root

local function read(path)
	local f = assert(io.open(path, "rb"))
	local s = f:read("a")
	f:close()
	return s
end

local TYPE_FILES = { "svccomm.lua", "svccomm.settings.lua", "svccomm.db.lua",
	"svccomm.message_router.lua", "svccomm.log.lua" }

-- the functions types/svccomm.lua annotates: "svccomm.send_call", "DB:query", ...
local function annotated()
	local text, out = read(root .. "/types/svccomm.lua"), {}
	for doc, name in text:gmatch("(%-%-%-[^\n]*)\nfunction ([%w_.:]+)%(") do
		out[name] = doc
	end
	return out
end

describe("types/", function()
	it("every definition file parses and starts with ---@meta", function()
		for _, f in ipairs(TYPE_FILES) do
			local text = read(root .. "/types/" .. f)
			assert(load(text, "@types/" .. f))
			assert.truthy(text:match("^%-%-%-@meta "), f)
		end
	end)

	it("annotates every public function of svccomm, message_router, db and log", function()
		local svccomm = require "svccomm"
		local have = annotated()
		local function check(prefix, t, skip)
			for k, v in pairs(t) do
				if type(v) == "function" and not k:match("^_") and not (skip and skip[k]) then
					assert.truthy(have[prefix .. k], prefix .. k .. " has no annotation in types/svccomm.lua")
				end
			end
		end
		check("svccomm.", svccomm)
		-- internal helpers exported for the host and the specs, not for handlers
		check("message_router.", svccomm.message_router,
			{ split = true, wrapped = true, exchanges = true, format_routes = true })
		check("db.", svccomm.db)
		check("log.", svccomm.log, { enabled = true, level = true })
		for _, m in ipairs { "query", "exec", "transaction", "in_transaction", "close" } do
			assert.truthy(have["DB:" .. m], "DB:" .. m)
		end
		for _, class in ipairs { "svccomm", "svccomm.message_router", "svccomm.db", "svccomm.DB",
			"svccomm.EventMeta", "svccomm.Message", "svccomm.Settings" } do
			local text = read(root .. "/types/svccomm.lua") .. read(root .. "/types/svccomm.settings.lua")
			assert.truthy(text:find("---@class " .. class .. "\n", 1, true), class)
		end
	end)

	it("the settings class is current with settings_schema.lua", function()
		assert.are.equal(require("svccomm.scaffold").settings_types(),
			read(root .. "/types/svccomm.settings.lua"))
	end)
end)

describe("svccomm.scaffold", function()
	it("settings.lua lists every schema key and loads as valid settings", function()
		local scaffold = require "svccomm.scaffold"
		local text = scaffold.settings("svc")
		for _, key in ipairs(require("svccomm.settings_schema").keys()) do
			assert.truthy(text:find("\n\t" .. key .. " = ", 1, true)
				or text:find("\n\t%-%- " .. key .. " = ", 1, false), key)
		end
		local t = assert(load(text))()
		assert.are.equal("svc", t.QUEUE)
		require("svccomm.settings").validate(t, SPEC.env {}, "settings.lua")
	end)
end)
