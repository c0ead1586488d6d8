-- svccomm.host: what the binary asks of the Lua side (load settings, `svccomm check`,
-- `svccomm publish`), without a database.
local host = require("svccomm.host")
local events = require("svccomm.events")
local dispatch = require("svccomm.dispatch")
local settings = require("svccomm.settings")

local FIX = SPEC.fixtures .. "/host"

describe("host", function()
	local saved_events, saved_dispatch, saved_path
	before_each(function()
		saved_events, saved_dispatch, saved_path = events.config(), dispatch.config(), package.path
	end)
	after_each(function()
		events.configure(saved_events)
		dispatch.configure(saved_dispatch)
		package.path = saved_path
		host.settings = nil
	end)

	describe("load_settings", function()
		it("configures the outbox writes with every setting they use, MAX_JSON_DEPTH included", function()
			local s = host.load_settings(FIX .. "/settings.lua")
			assert.are.equal(s, host.settings)
			assert.are.same({ OUTBOX_TABLE = "host_spec_outbox", KEY_STYLE = "snake", APP_ID = "host-spec",
				MAX_JSON_DEPTH = 7, WIRE_FORMAT = "svccomm" }, events.config())
		end)

		it("a payload deeper than MAX_JSON_DEPTH is refused before anything is written", function()
			host.load_settings(FIX .. "/settings.lua")
			local deep = {}
			local cur = deep
			for _ = 1, 8 do
				cur.x = {}
				cur = cur.x
			end
			local err = SPEC.error_of(events.publish_aggregate_event, "user", "deep", deep)
			assert.matches("nested deeper than 7 levels", err)
		end)

		it("configures the dispatcher", function()
			host.load_settings(FIX .. "/settings.lua")
			assert.are.same({ MAX_JSON_DEPTH = 7, KEY_STYLE = "snake", UNROUTED = "dead-letter" }, dispatch.config())
		end)
	end)

	describe("check_report", function()
		it("shows the settings with the broker password masked, topology and routes", function()
			local s = host.load_settings(FIX .. "/settings.lua")
			assert.is_true(host.load_apps())
			local report, warnings = host.check_report()
			assert.are.equal(0, warnings)
			assert.matches("settings: " .. FIX:gsub("%p", "%%%0") .. "/settings.lua\n", report)
			assert.is_truthy(report:find("broker:   " .. settings.mask_url(s.BROKER_CONNECTION_URL) .. "\n", 1, true))
			assert.is_truthy(report:find("queue:    host_spec_queue\n", 1, true))
			assert.is_truthy(report:find("host_spec_queue  <-  user  update.*", 1, true))
			assert.is_truthy(report:find("(none: no app registered a consumer)", 1, true))
			assert.matches("OK: 1 exchange, 1 binding, 0 routes\n$", report)
		end)
	end)

	describe("check_report with several broker nodes", function()
		it("lists every node, masked, and the order they are tried in", function()
			for _, shuffle in ipairs({ false, true }) do
				host.settings = settings.validate({ BROKER_CONNECTION_URL = { "amqp://u:s3cretpw@n1:5680/v",
					"amqp://u:s3cretpw@n2:5681/v" }, BROKER_SHUFFLE = shuffle }, SPEC.env({}), "p/settings.lua")
				local report = host.check_report()
				assert.is_truthy(report:find("broker:   amqp://u:****@n1:5680/v\n          amqp://u:****@n2:5681/v\n"
					.. "          (2 nodes, tried " .. (shuffle and "in an order shuffled per process" or "in this order")
					.. ")\n", 1, true), report)
				assert.is_nil(report:find("s3cretpw", 1, true))
			end
		end)
	end)

	describe("publish", function()
		it("needs DATABASE_URL: a usage error naming the settings file", function()
			host.settings = settings.validate({}, SPEC.env({}), "proj/settings.lua")
			assert.are.same({ nil, "proj/settings.lua: DATABASE_URL: required by publish, not set", "usage" },
				{ host.publish("user", "created", "{}") })
		end)

		it("refuses a payload or tags that are not JSON before connecting", function()
			host.settings = settings.validate({}, SPEC.env({}), "proj/settings.lua")
			local _, err, kind = host.publish("user", "created", "{nope")
			assert.matches("^payload is not valid JSON: ", err)
			assert.are.equal("usage", kind)
			assert.are.same({ nil, "--tags needs --at", "usage" }, { host.publish("user", "created", "{}", nil, "{}") })
			assert.are.same({ nil, "--tags is not a JSON object", "usage" },
				{ host.publish("user", "created", "{}", "2030-01-01T00:00:00Z", "[1") })
		end)
	end)
end)
