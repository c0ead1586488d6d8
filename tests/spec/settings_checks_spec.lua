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

	it("host_port takes host:port and [v6]:port, nothing else", function()
		assert.are.equal("127.0.0.1:9464", checks.host_port("127.0.0.1:9464", "METRICS_ADDRESS"))
		assert.are.equal("metrics.internal:1", checks.host_port("metrics.internal:1", "K"))
		assert.are.equal("[::1]:65535", checks.host_port("[::1]:65535", "K"))
		for _, bad in ipairs({ "localhost", ":9464", "h:", "h:0", "h:65536", "h:123456", "a:b:1",
			"::1:80", "h:9x", "[::1]9464", "", 9464 }) do
			local err = failure(checks.host_port, bad, "METRICS_ADDRESS")
			assert.is_table(err, tostring(bad))
			assert.are.equal("METRICS_ADDRESS", err.key)
			assert.matches('expected a "host:port" string', err.msg, 1, true)
		end
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

describe("settings_checks BROKER_TLS", function()
	local settings = require("svccomm.settings")
	local dir = os.tmpname()
	os.remove(dir)
	assert(os.execute("mkdir -p " .. dir))
	local ca, empty = dir .. "/ca.pem", dir .. "/empty.pem"
	local fh = assert(io.open(ca, "w"))
	fh:write("-----BEGIN CERTIFICATE-----\n")
	fh:close()
	assert(io.open(empty, "w")):close()
	teardown(function()
		os.remove(ca)
		os.remove(empty)
		os.remove(dir)
	end)

	it("fills the defaults: verification on, no files", function()
		assert.are.same({ verify_peer = true, verify_hostname = true }, checks.broker_tls({}, "BROKER_TLS"))
		assert.are.same({ ca_file = ca, cert_file = ca, verify_peer = false, verify_hostname = true },
			checks.broker_tls({ ca_file = ca, cert_file = ca, verify_peer = false }, "BROKER_TLS"))
	end)

	it("refuses an unknown field with the nearest known one", function()
		local err = failure(checks.broker_tls, { ca_flie = ca }, "BROKER_TLS")
		assert.are.equal("BROKER_TLS.ca_flie", err.key)
		assert.are.equal("unknown field (did you mean ca_file?)", err.msg)
		err = failure(checks.broker_tls, { password = "x" }, "BROKER_TLS")
		assert.are.equal("unknown field (known: ca_file, cert_file, key_file, verify_peer, verify_hostname)",
			err.msg)
		err = failure(checks.broker_tls, { [1] = ca }, "BROKER_TLS")
		assert.are.equal("BROKER_TLS.1", err.key)
	end)

	it("names the file that cannot be read, and why", function()
		local err = failure(checks.broker_tls, { ca_file = dir .. "/missing.pem" }, "BROKER_TLS")
		assert.are.equal("BROKER_TLS.ca_file", err.key)
		assert.are.equal(string.format('cannot read "%s" (No such file or directory)', dir .. "/missing.pem"), err.msg)
		assert.are.equal(string.format('cannot read "%s" (Is a directory)', dir),
			failure(checks.broker_tls, { cert_file = dir }, "BROKER_TLS").msg)
		assert.are.equal(string.format('cannot read "%s" (the file is empty)', empty),
			failure(checks.broker_tls, { ca_file = empty }, "BROKER_TLS").msg)
		assert.are.equal("expected the path of a readable file, got 5",
			failure(checks.broker_tls, { ca_file = 5 }, "BROKER_TLS").msg)
		assert.are.equal("expected true or false, got \"yes\"",
			failure(checks.broker_tls, { verify_peer = "yes" }, "BROKER_TLS").msg)
		assert.are.equal("BROKER_TLS.key_file",
			failure(checks.broker_tls, { key_file = ca }, "BROKER_TLS").key)
	end)

	it("takes the files from the environment and says so in messages", function()
		local url = "amqps://u:p@h/v"
		local s = settings.validate({ BROKER_CONNECTION_URL = url },
			SPEC.env({ SVCCOMM_BROKER_CA_FILE = ca }))
		assert.are.same({ ca_file = ca, verify_peer = true, verify_hostname = true }, s.BROKER_TLS)
		local tls = { verify_hostname = false }
		s = settings.validate({ BROKER_CONNECTION_URL = url, BROKER_TLS = tls },
			SPEC.env({ SVCCOMM_BROKER_CERT_FILE = ca }))
		assert.are.same({ cert_file = ca, verify_peer = true, verify_hostname = false }, s.BROKER_TLS)
		assert.are.same({ verify_hostname = false }, tls) -- the file's table is left alone
		assert.are.equal(string.format('settings.lua: BROKER_TLS.ca_file (from SVCCOMM_BROKER_CA_FILE): '
			.. 'cannot read "%s" (No such file or directory)', dir .. "/nope"),
			SPEC.error_of(settings.validate, { BROKER_CONNECTION_URL = url },
				SPEC.env({ SVCCOMM_BROKER_CA_FILE = dir .. "/nope" })))
	end)

	it("is refused with an amqp:// URL, from the file or the environment", function()
		local msg = "settings.lua: BROKER_TLS: is set but BROKER_CONNECTION_URL is not an amqps:// URL "
			.. "(use amqps://, or remove BROKER_TLS and SVCCOMM_BROKER_*_FILE)"
		assert.are.equal(msg, SPEC.error_of(settings.validate, { BROKER_TLS = {} }, SPEC.env({})))
		assert.are.equal(msg, SPEC.error_of(settings.validate, {}, SPEC.env({ SVCCOMM_BROKER_CA_FILE = ca })))
		-- not set: the defaults, with either scheme
		assert.are.same({ verify_peer = true, verify_hostname = true },
			settings.validate({}, SPEC.env({})).BROKER_TLS)
	end)

	it("a near miss of BROKER_URL still suggests BROKER_CONNECTION_URL", function()
		assert.are.equal("BROKER_CONNECTION_URL", settings.suggest("BROKER_URL"))
		assert.are.equal("BROKER_TLS", settings.suggest("BROKER_TSL"))
	end)
end)
