local apps = require("svccomm.apps")
local router = require("svccomm.message_router")

local FIX = SPEC.fixtures

local function names(list)
	local out = {}
	for i, a in ipairs(list) do
		out[i] = a.name
	end
	return out
end

describe("apps", function()
	local saved_path
	before_each(function()
		router.reset()
		saved_path = package.path
	end)
	after_each(function()
		package.path = saved_path
		package.loaded["beta.helpers"] = nil
		router.reset()
	end)

	describe("discover", function()
		it("finds every apps/*/consumers.lua sorted by name (needs svccomm.core.listdir)", function()
			require("svccomm.core")
			local dir = FIX .. "/project_ok"
			local found = apps.discover(dir, nil)
			assert.are.same({ "alpha", "beta" }, names(found))
			assert.are.equal(dir .. "/apps/alpha/consumers.lua", found[1].path)
		end)

		it("returns no apps when there is no apps/ directory", function()
			assert.are.same({}, apps.discover(FIX .. "/project_noapps", nil))
		end)

		it("follows INSTALLED_APPS order", function()
			local found = apps.discover(FIX .. "/project_ok", { "beta", "alpha" })
			assert.are.same({ "beta", "alpha" }, names(found))
		end)

		it("an INSTALLED_APPS entry without consumers.lua is an error naming it", function()
			local dir = FIX .. "/project_ok"
			assert.are.equal("INSTALLED_APPS: app 'gamma' not found: " .. dir
				.. "/apps/gamma/consumers.lua does not exist",
				SPEC.error_of(apps.discover, dir, { "alpha", "gamma" }))
			assert.are.equal("INSTALLED_APPS: app 'nope' not found: " .. dir
				.. "/apps/nope/consumers.lua does not exist",
				SPEC.error_of(apps.discover, dir, { "nope" }))
		end)

		it("gives paths relative to '.' without a ./ prefix", function()
			local found = apps.discover(".", {})
			assert.are.same({}, found)
			local err = SPEC.error_of(apps.discover, ".", { "zz_missing" })
			assert.are.equal("INSTALLED_APPS: app 'zz_missing' not found: apps/zz_missing/consumers.lua does not exist", err)
		end)

		it("closes every file it opens, the probe of apps/ included", function()
			local opened = {}
			local open = io.open
			io.open = function(...)
				local fh, err, code = open(...)
				if fh then
					opened[#opened + 1] = fh
				end
				return fh, err, code
			end
			local ok, err = pcall(function()
				apps.discover(FIX .. "/project_ok", nil)
				apps.discover(FIX .. "/project_ok", { "beta", "alpha" })
				apps.discover(FIX .. "/project_noapps", nil)
				pcall(apps.discover, FIX .. "/project_ok", { "gamma" })
			end)
			io.open = open
			assert.is_true(ok, err)
			assert.is_true(#opened >= 5)
			for i, fh in ipairs(opened) do
				assert.are.equal("closed file", io.type(fh), "handle " .. i .. " left open")
			end
		end)

		it("checks its arguments at the caller", function()
			assert.matches("apps_spec.lua:%d+: discover: project_dir must be a non%-empty string",
				SPEC.error_of(function() apps.discover(nil) end))
			assert.matches("discover: installed_apps must be a list",
				SPEC.error_of(apps.discover, ".", "alpha"))
		end)
	end)

	describe("load_all", function()
		it("loads apps, attributes routes to them and lets apps require their modules", function()
			local dir = FIX .. "/project_ok"
			local loaded = apps.load_all(dir, { "alpha", "beta" })
			assert.are.same({ "alpha", "beta" }, names(loaded))
			assert.are.same(loaded, apps.loaded())
			local a = router.match("orders", "order.created")
			assert.are.equal("alpha", a.app)
			assert.are.equal("alpha", a.fn())
			assert.are.equal(dir .. "/apps/alpha/consumers.lua:4", a.where)
			local b = router.match("orders", "order.paid")
			assert.are.equal("beta", b.app)
			assert.are.equal("beta", b.fn())
			assert.are.equal(dir .. "/apps/beta/helpers.lua:2", b.defined)
			assert.are.equal(b.defined, b.defined_at)
			assert.are.equal("beta:" .. dir .. "/apps/beta/helpers.lua:2", b.handler_id)
			assert.are.same({ "alpha", dir .. "/apps/alpha/consumers.lua" }, ALPHA_LOADED_AS)
			-- the current app is cleared afterwards
			router.consumer("x", "y", function() end)
			assert.is_nil(router.match("x", "y").app)
		end)

		it("prepends the app paths to package.path once", function()
			local dir = FIX .. "/project_ok"
			apps.load_all(dir, { "alpha" })
			router.reset()
			apps.load_all(dir, { "alpha" })
			local prefix = dir .. "/apps/?.lua;" .. dir .. "/apps/?/init.lua;" .. dir .. "/?.lua;"
			assert.are.equal(1, select(2, package.path:gsub(prefix:gsub("%p", "%%%0"), "")))
		end)

		it("names the app and file:line of a syntax error", function()
			local dir = FIX .. "/project_syntax"
			local err = SPEC.error_of(apps.load_all, dir, { "good", "broken" })
			assert.are.equal("app 'broken' failed to load: " .. dir
				.. "/apps/broken/consumers.lua:3: ')' expected near 'function'", err)
		end)

		it("names the app and file:line of a runtime error, with a traceback", function()
			local dir = FIX .. "/project_runtime"
			local file = dir .. "/apps/bad/consumers.lua"
			local err = SPEC.error_of(apps.load_all, dir, { "bad" })
			local first, rest = err:match("^([^\n]*)\n(.*)$")
			assert.are.equal("app 'bad' failed to load: " .. file
				.. ":4: attempt to index a nil value (local 'config')", first)
			assert.matches("stack traceback:", rest)
			assert.truthy(rest:find(file .. ":4: in", 1, true), rest)
			assert.truthy(rest:find(file .. ":7: in", 1, true), rest)
			assert.is_nil(router.match("x", "k"))
		end)

		it("a duplicate registration across apps names both places and the failing app", function()
			local dir = FIX .. "/project_dup"
			local err = SPEC.error_of(apps.load_all, dir, { "one", "two" })
			local first = err:match("^[^\n]*")
			assert.are.equal("app 'two' failed to load: " .. dir .. "/apps/two/consumers.lua:3: "
				.. "message_router: the consumer for exchange 'ex' routing key 'dup.*' is registered twice: "
				.. "first at " .. dir .. "/apps/one/consumers.lua:2 (app 'one'), again at "
				.. dir .. "/apps/two/consumers.lua:3 (app 'two')", first)
		end)

		it("describes a non-string error value", function()
			local dir = FIX .. "/project_errobj"
			local err = SPEC.error_of(apps.load_all, dir, { "obj" })
			assert.matches("^app 'obj' failed to load: " .. (dir .. "/apps/obj/consumers.lua"):gsub("%p", "%%%0")
				.. ":1: %(error object is a table value%)", err)
		end)
	end)
end)
