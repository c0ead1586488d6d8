-- svccomm.settings_checks: the checkers of the settings schema, called directly. The messages
-- users see (through settings.validate) are in settings_spec.lua.
local checks = require("svccomm.settings_checks")

-- the settings error {key, msg} raised by fn(...), or nil
local function failure(fn, ...)
	local ok, err = pcall(fn, ...)
	if ok then
		return nil
	end
	assert.is_table(err)
	assert.is_true(err.settings_error)
	return err
end

local IDENT = "a table name ([A-Za-z_][A-Za-z0-9_]*, at most 63 characters, optionally schema.table)"

describe("settings_checks", function()
	it("fail raises a settings error carrying the key", function()
		local err = failure(checks.fail, "QUEUE", "expected x")
		assert.are.equal("QUEUE", err.key)
		assert.are.equal("expected x", err.msg)
	end)

	it("show describes values for messages", function()
		assert.are.equal('"q"', checks.show("q"))
		assert.are.equal('"' .. string.rep("a", 57) .. '..."', checks.show(string.rep("a", 100)))
		assert.are.equal("2.0", checks.show(2.0))
		assert.are.equal("1.5", checks.show(1.5))
		assert.are.equal("3", checks.show(3))
		assert.are.equal("nil", checks.show(nil))
		assert.are.equal("a table", checks.show({}))
	end)

	it("checkers return the normalized value", function()
		assert.are.equal(3, checks.integer(1, 5)(3.0, "K"))
		assert.are.equal("integer", math.type(checks.integer(1, 5)(3.0, "K")))
		assert.are.equal("info", checks.enum({ "info" }, true)("INFO", "K"))
		assert.are.same({ { name = "e", type = "topic" } }, checks.exchanges({ "e" }, "K"))
		assert.are.same({ { exchange = "e", routing_key = "#" } }, checks.binds({ "e" }, "K"))
		assert.is_true(checks.boolean(true, "K"))
		assert.are.equal('expected true or false, got "x"', failure(checks.boolean, "x", "K").msg)
	end)

	describe("identifier (svccomm.core.quote_ident)", function()
		it("accepts name and schema.name of at most 63 characters each", function()
			for _, good in ipairs({ "svccomm_outbox", "_x1", "Out", "events.outbox", string.rep("a", 63),
				string.rep("s", 63) .. "." .. string.rep("t", 63) }) do
				assert.are.equal(good, checks.identifier(good, "OUTBOX_TABLE"))
			end
		end)

		it("refuses anything else with the same message", function()
			for _, bad in ipairs({ "bad-name", "1abc", "a.b.c", "x; drop table y", ".x", "", "a.", "public.1t",
				string.rep("a", 64), "a." .. string.rep("b", 64), "svccomm\0outbox", "é", 5, true }) do
				local err = failure(checks.identifier, bad, "INBOX_TABLE")
				assert.is_table(err, tostring(bad))
				assert.are.equal("INBOX_TABLE", err.key)
				assert.are.equal("expected " .. IDENT .. ", got " .. checks.show(bad), err.msg)
			end
		end)

		it("checks only the type without svccomm.core", function()
			local saved_loaded, saved_preload = package.loaded["svccomm.core"], package.preload["svccomm.core"]
			package.loaded["svccomm.core"] = nil
			package.preload["svccomm.core"] = function() error("not built") end
			local ok, v = pcall(checks.identifier, "bad-name", "OUTBOX_TABLE")
			local err = failure(checks.identifier, 5, "OUTBOX_TABLE")
			package.loaded["svccomm.core"], package.preload["svccomm.core"] = saved_loaded, saved_preload
			assert.is_true(ok)
			assert.are.equal("bad-name", v)
			assert.are.equal("OUTBOX_TABLE", err.key)
		end)
	end)

	describe("URLs", function()
		it("a broker URL that does not parse: masked, and the parser's message scrubbed", function()
			local err = failure(checks.amqp_url, "amqp://u:s3cretpw@h:notaport/", "BROKER_CONNECTION_URL")
			assert.matches('^expected an amqp:// or amqps:// URL, got "amqp://u:%*%*%*%*@h:notaport/" %(', err.msg)
			assert.is_nil(err.msg:find("s3cretpw", 1, true), err.msg)
		end)

		it("a database URL with an unencoded '@' in its password never shows any of it", function()
			local err = failure(checks.database_url, "postgresql://u:p@ssw0rd@host/db?nonsense=1", "DATABASE_URL")
			assert.are.equal('expected a PostgreSQL connection string, got "postgresql://u:****@host/db?nonsense=1" '
				.. '(invalid URI query parameter: "nonsense")', err.msg)
			assert.is_nil(err.msg:find("ssw0rd", 1, true), err.msg)
		end)
	end)

	describe("QUEUE", function()
		local function queue_check()
			for _, e in ipairs(require("svccomm.settings_schema").rows) do
				if e.key == "QUEUE" then
					return e.check
				end
			end
		end

		it("leaves room for <QUEUE>.retry.<ms> and <QUEUE>.dlq, and is UTF-8 without a zero byte", function()
			local check = assert(queue_check(), "no QUEUE entry in the schema")
			assert.are.equal("orders", check("orders", "QUEUE"))
			local longest = string.rep("q", 238)
			assert.are.equal(longest, check(longest, "QUEUE"))
			assert.is_true(#(longest .. ".retry.2147483647") <= 255)
			for _, bad in ipairs({ string.rep("q", 239), string.rep("q", 250), "caf\xe9", "\xff\xfe",
					"a\0evil", "amq.mine" }) do
				local err = failure(check, bad, "QUEUE")
				assert(err, "accepted " .. checks.show(bad))
				assert.are.equal("QUEUE", err.key)
				assert.truthy(err.msg:find("a queue name (1 to 238 bytes of UTF-8", 1, true), err.msg)
			end
			assert.truthy(failure(check, string.rep("q", 250), "QUEUE").msg:find("got 250 bytes", 1, true))
		end)
	end)
end)
