-- svccomm.log: argument checks and level filter (the line format is tested in test_log.c and
-- tests/integration/test_handler_logging.py, which read stderr).
local log = require "svccomm.log"
local core = require "svccomm.core"

describe("svccomm.log", function()
	it("offers debug, info, warning (and warn) and error", function()
		for _, name in ipairs({ "debug", "info", "warning", "warn", "error" }) do
			assert.is_function(log[name])
		end
		assert.equal(log.warning, log.warn)
		assert.equal(log, require("svccomm").log)
	end)

	it("writes messages with fields of any value type", function()
		assert.has_no.errors(function()
			log.info("spec line from log_spec.lua", { n = 1, f = 19.99, b = true, t = { 1, 2 }, s = "two words" })
			log.warning("spec line without fields")
		end)
	end)

	it("raises, at the caller, for fields that are not a table or not named like identifiers", function()
		local ok, err = pcall(log.info, "x", "not a table")
		assert.is_false(ok)
		assert.truthy(err:find("fields must be a table", 1, true), err)
		ok, err = pcall(log.error, "x", { ["bad key"] = 1 })
		assert.is_false(ok)
		assert.truthy(err:find("field names are identifiers", 1, true), err)
		ok, err = pcall(log.error, "x", { [1] = "positional" })
		assert.is_false(ok)
	end)

	it("filters by level before looking at the fields (default level info)", function()
		assert.is_false(core.log_enabled("debug"))
		assert.is_true(core.log_enabled("info"))
		assert.has_no.errors(function() log.debug("not written", "not even a table") end)
		assert.has_error(function() core.log_enabled("verbose") end)
		assert.has_error(function() core.log("off", "x") end)
	end)
end)
