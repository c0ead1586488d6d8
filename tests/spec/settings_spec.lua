local settings = require("svccomm.settings")

local FIX = SPEC.fixtures .. "/settings"
local no_env = SPEC.env({})

-- the error message of validate(tbl) (path "settings.lua", empty environment)
local function err_of(tbl, env)
	local ok, err = pcall(settings.validate, tbl, env or no_env, "settings.lua")
	assert.is_false(ok, "expected a settings error")
	assert.is_string(err)
	return err
end

describe("settings", function()
	describe("defaults", function()
		it("fills every key of the schema", function()
			local s = settings.validate({}, no_env, "settings.lua")
			assert.are.equal("svccomm", s.APP_ID)
			assert.are.equal("amqp://guest:guest@localhost:5672/%2f", s.BROKER_CONNECTION_URL)
			assert.is_nil(s.DATABASE_URL)
			assert.is_nil(s.QUEUE)
			assert.are.same({}, s.QUEUE_ARGUMENTS)
			assert.are.same({}, s.EXCHANGES)
			assert.are.same({}, s.BINDS)
			assert.is_false(s.DO_NOT_DECLARE)
			assert.is_nil(s.INSTALLED_APPS)
			assert.are.equal(1000, s.PREFETCH_COUNT)
			assert.are.equal(4, s.MAX_ATTEMPTS)
			assert.are.same({ 1, 10, 60 }, s.RETRY_DELAYS)
			assert.are.equal(30, s.HANDLER_TIMEOUT)
			assert.are.equal(64, s.LUA_MEMORY_LIMIT_MB)
			assert.are.equal("ack", s.UNROUTED)
			assert.are.equal("preserve", s.KEY_STYLE)
			assert.are.equal(128, s.MAX_JSON_DEPTH)
			assert.are.equal(8388608, s.MAX_MESSAGE_BYTES)
			assert.is_false(s.INBOX)
			assert.are.equal("svccomm_inbox", s.INBOX_TABLE)
			assert.are.equal(604800, s.INBOX_RETENTION)
			assert.are.equal(30, s.HEARTBEAT)
			assert.are.equal(30, s.SHUTDOWN_TIMEOUT)
			assert.are.equal(0.02, s.CONSUMER_COMMIT_INTERVAL)
			assert.are.equal(30, s.RECONNECT_MAX_DELAY)
			assert.are.equal("svccomm_outbox", s.OUTBOX_TABLE)
			assert.are.equal("listen", s.PUBLISHER_MODE)
			assert.are.equal(1, s.PUBLISHER_POLL_INTERVAL)
			assert.are.equal(500, s.PUBLISHER_BATCH_SIZE)
			assert.are.equal(2000, s.PUBLISHER_WINDOW)
			assert.are.equal("keep", s.PUBLISHER_UNROUTABLE)
			assert.are.equal(60, s.STATS_INTERVAL)
			assert.are.equal("info", s.LOG_LEVEL)
			assert.are.equal("settings.lua", s._PATH)
			assert.are.equal(".", s._DIR)
		end)

		it("gives every load its own copy of table defaults", function()
			local a = settings.validate({}, no_env)
			a.RETRY_DELAYS[1] = 99
			local b = settings.validate({}, no_env)
			assert.are.equal(1, b.RETRY_DELAYS[1])
		end)

		it("integer settings come out as Lua integers", function()
			local s = settings.validate({ PREFETCH_COUNT = 10.0 }, no_env)
			assert.are.equal("integer", math.type(s.PREFETCH_COUNT))
		end)
	end)

	describe("load", function()
		it("loads and normalizes a settings file", function()
			local path = FIX .. "/valid.lua"
			local s = settings.load(path, no_env)
			assert.are.equal("MY-service", s.APP_ID)
			assert.are.equal("my_queue", s.QUEUE)
			assert.are.same({ ["x-queue-type"] = "quorum" }, s.QUEUE_ARGUMENTS)
			assert.are.same({ { name = "my_exchange1", type = "topic" },
				{ name = "my_other_exchange", type = "fanout" } }, s.EXCHANGES)
			assert.are.same({ { exchange = "my_exchange1", routing_key = "event.*" },
				{ exchange = "my_other_exchange", routing_key = "#" } }, s.BINDS)
			assert.are.same({ "some_app", "some_other_app" }, s.INSTALLED_APPS)
			assert.are.same({ 0.5, 5 }, s.RETRY_DELAYS)
			assert.are.equal("debug", s.LOG_LEVEL)
			assert.are.equal(path, s._PATH)
			assert.are.equal(FIX, s._DIR)
		end)

		it("_DIR is '.' for a bare file name and '/' for a file at the root", function()
			assert.are.equal(".", settings.validate({}, no_env, "settings.lua")._DIR)
			assert.are.equal("/", settings.validate({}, no_env, "/settings.lua")._DIR)
			assert.are.equal("a/b", settings.validate({}, no_env, "a/b/s.lua")._DIR)
		end)

		it("reports a syntax error with file:line", function()
			local path = FIX .. "/syntax_error.lua"
			local err = SPEC.error_of(settings.load, path, no_env)
			assert.are.equal(path .. ":3: unexpected symbol near '='", err)
		end)

		it("reports a runtime error with file:line", function()
			local path = FIX .. "/runtime_error.lua"
			local err = SPEC.error_of(settings.load, path, no_env)
			assert.are.equal(path .. ":3: attempt to index a nil value (global 'undefined_global')", err)
		end)

		it("requires the file to return a table", function()
			local path = FIX .. "/not_a_table.lua"
			assert.are.equal(path .. ': expected the file to return a table, got "QUEUE = q"',
				SPEC.error_of(settings.load, path, no_env))
		end)

		it("reports a missing file", function()
			local path = FIX .. "/does_not_exist.lua"
			assert.are.equal(path .. ": cannot read the settings file (No such file or directory)",
				SPEC.error_of(settings.load, path, no_env))
		end)

		it("checks its arguments at the caller", function()
			assert.matches("settings_spec.lua:%d+: load: path must be a non%-empty string",
				SPEC.error_of(function() settings.load(nil) end))
			assert.matches("load: env must be a function",
				SPEC.error_of(settings.load, FIX .. "/minimal.lua", "nope"))
		end)

		it("uses os.getenv by default", function()
			local s = settings.load(FIX .. "/minimal.lua")
			local want = os.getenv("SVCCOMM_LOG_LEVEL")
			if want == nil or want == "" then
				assert.are.equal("info", s.LOG_LEVEL)
			else
				assert.are.equal(want:lower(), s.LOG_LEVEL)
			end
		end)
	end)

	describe("environment overrides", function()
		it("SVCCOMM_BROKER_URL, SVCCOMM_DATABASE_URL and SVCCOMM_LOG_LEVEL win over the file", function()
			local env = SPEC.env({
				SVCCOMM_BROKER_URL = "amqp://a:b@rabbit:5673/svccomm",
				SVCCOMM_DATABASE_URL = "postgresql://svccomm@db:5433/svccomm",
				SVCCOMM_LOG_LEVEL = "WARNING",
			})
			local s = settings.load(FIX .. "/valid.lua", env)
			assert.are.equal("amqp://a:b@rabbit:5673/svccomm", s.BROKER_CONNECTION_URL)
			assert.are.equal("postgresql://svccomm@db:5433/svccomm", s.DATABASE_URL)
			assert.are.equal("warning", s.LOG_LEVEL)
		end)

		it("an empty variable counts as unset", function()
			local s = settings.validate({ LOG_LEVEL = "error" }, SPEC.env({ SVCCOMM_LOG_LEVEL = "" }))
			assert.are.equal("error", s.LOG_LEVEL)
		end)

		it("an override is validated and named in the error", function()
			assert.are.equal('settings.lua: LOG_LEVEL (from SVCCOMM_LOG_LEVEL): expected one of '
				.. '"debug", "info", "warning", "error", got "loud"',
				err_of({}, SPEC.env({ SVCCOMM_LOG_LEVEL = "loud" })))
		end)
	end)

	describe("mistakes", function()
		it("unknown key with a suggestion", function()
			assert.are.equal("settings.lua: PREFECH_COUNT: unknown key (did you mean PREFETCH_COUNT?)",
				err_of({ PREFECH_COUNT = 5 }))
			assert.are.equal("settings.lua: queue: unknown key (did you mean QUEUE?)", err_of({ queue = "q" }))
			assert.are.equal("settings.lua: BROKER_URL: unknown key (did you mean BROKER_CONNECTION_URL?)",
				err_of({ BROKER_URL = "amqp://" }))
			assert.are.equal("settings.lua: RETRY_DELAY: unknown key (did you mean RETRY_DELAYS?)",
				err_of({ RETRY_DELAY = { 1 } }))
		end)

		it("unknown key without a close match", function()
			assert.are.equal("settings.lua: TOTALLY_DIFFERENT_THING: unknown key",
				err_of({ TOTALLY_DIFFERENT_THING = 1 }))
		end)

		it("a non-string key", function()
			assert.are.equal("settings.lua: [1]: unexpected entry (settings keys are names like QUEUE)",
				err_of({ "QUEUE" }))
		end)

		it("wrong types", function()
			assert.are.equal('settings.lua: PREFETCH_COUNT: expected an integer from 1 to 65535, got "10"',
				err_of({ PREFETCH_COUNT = "10" }))
			assert.are.equal("settings.lua: PREFETCH_COUNT: expected an integer from 1 to 65535, got 1.5",
				err_of({ PREFETCH_COUNT = 1.5 }))
			assert.are.equal('settings.lua: DO_NOT_DECLARE: expected true or false, got "yes"',
				err_of({ DO_NOT_DECLARE = "yes" }))
			assert.are.equal("settings.lua: QUEUE: expected a non-empty string, got 5",
				err_of({ QUEUE = 5 }))
			assert.are.equal('settings.lua: QUEUE: expected a non-empty string, got ""',
				err_of({ QUEUE = "" }))
			assert.are.equal("settings.lua: EXCHANGES: expected a list of exchanges, got \"ex\"",
				err_of({ EXCHANGES = "ex" }))
			assert.are.equal("settings.lua: HANDLER_TIMEOUT: expected a number > 0 (seconds), got a table",
				err_of({ HANDLER_TIMEOUT = {} }))
		end)

		it("out of range", function()
			assert.are.equal("settings.lua: PREFETCH_COUNT: expected an integer from 1 to 65535, got 0",
				err_of({ PREFETCH_COUNT = 0 }))
			assert.are.equal("settings.lua: MAX_ATTEMPTS: expected an integer from 1 to 1000, got -1",
				err_of({ MAX_ATTEMPTS = -1 }))
			assert.are.equal("settings.lua: HANDLER_TIMEOUT: expected a number > 0 (seconds), got 0",
				err_of({ HANDLER_TIMEOUT = 0 }))
			assert.are.equal("settings.lua: CONSUMER_COMMIT_INTERVAL: expected a number >= 0 and <= 10 "
				.. "(seconds), got 11", err_of({ CONSUMER_COMMIT_INTERVAL = 11 }))
			assert.are.equal("settings.lua: SHUTDOWN_TIMEOUT: expected a number >= 0 (seconds), got inf",
				err_of({ SHUTDOWN_TIMEOUT = math.huge }))
			assert.are.equal("settings.lua: RETRY_DELAYS[2]: expected a number of seconds > 0 and "
				.. "<= 4294967, got 0", err_of({ RETRY_DELAYS = { 1, 0 } }))
			assert.are.equal("settings.lua: RETRY_DELAYS: expected a non-empty list of delays in seconds, "
				.. "got a table", err_of({ RETRY_DELAYS = {} }))
		end)

		it("not one of the allowed values", function()
			assert.are.equal('settings.lua: UNROUTED: expected one of "ack", "dead-letter", got "drop"',
				err_of({ UNROUTED = "drop" }))
			assert.are.equal('settings.lua: KEY_STYLE: expected one of "preserve", "snake", got "camel"',
				err_of({ KEY_STYLE = "camel" }))
			assert.are.equal('settings.lua: PUBLISHER_MODE: expected one of "listen", "poll", got 1',
				err_of({ PUBLISHER_MODE = 1 }))
		end)

		it("malformed EXCHANGES entries", function()
			assert.are.equal('settings.lua: EXCHANGES[2]: expected an exchange type "direct", "fanout", '
				.. '"topic" or "headers", got "fan"', err_of({ EXCHANGES = { "a", { "b", "fan" } } }))
			assert.are.equal('settings.lua: EXCHANGES[1]: expected "name" or {"name", "type"}, got 42',
				err_of({ EXCHANGES = { 42 } }))
			assert.are.equal('settings.lua: EXCHANGES[1]: expected "name" or {"name", "type"}, got a table',
				err_of({ EXCHANGES = { {} } }))
			assert.are.equal('settings.lua: EXCHANGES[1]: expected an exchange name (1 to 255 bytes, '
				.. 'not starting with "amq."), got "amq.topic"', err_of({ EXCHANGES = { "amq.topic" } }))
			assert.are.equal('settings.lua: EXCHANGES[2]: exchange "a" is listed twice (also EXCHANGES[1])',
				err_of({ EXCHANGES = { "a", { "a", "direct" } } }))
		end)

		it("malformed BINDS entries", function()
			assert.are.equal('settings.lua: BINDS[2]: expected "exchange" or {"exchange", "routing_key"}, got true',
				err_of({ EXCHANGES = { "a" }, BINDS = { "a", true } }))
			assert.are.equal('settings.lua: BINDS[1]: expected a routing key (a string of at most 255 bytes), '
				.. 'got 5', err_of({ EXCHANGES = { "a" }, BINDS = { { "a", 5 } } }))
			assert.are.equal("settings.lua: BINDS: expected a list of binds, got a table",
				err_of({ BINDS = { x = "a" } }))
		end)

		it("APP_ID leaves room for the relay's message ids (<APP_ID>:<row id>, 255 bytes)", function()
			assert.are.equal(string.rep("a", 235), settings.validate({ APP_ID = string.rep("a", 235) }, no_env).APP_ID)
			assert.is_truthy(err_of({ APP_ID = string.rep("a", 236) }):find("APP_ID", 1, true))
		end)

		it("a bind to an exchange not in EXCHANGES, unless DO_NOT_DECLARE", function()
			assert.are.equal('settings.lua: BINDS[2]: expected an exchange listed in EXCHANGES '
				.. '(or DO_NOT_DECLARE = true), got "nope"', err_of({ EXCHANGES = { "a" }, BINDS = { "a", "nope" } }))
			local s = settings.validate({ DO_NOT_DECLARE = true, BINDS = { { "nope", "k" } } }, no_env)
			assert.are.same({ { exchange = "nope", routing_key = "k" } }, s.BINDS)
			s = settings.validate({ BINDS = { { "amq.topic", "k" } } }, no_env)
			assert.are.equal("amq.topic", s.BINDS[1].exchange)
		end)

		it("QUEUE_ARGUMENTS values", function()
			assert.are.equal('settings.lua: QUEUE_ARGUMENTS["x-max-length"]: expected a string, an integer '
				.. "or a boolean, got 1.5", err_of({ QUEUE_ARGUMENTS = { ["x-max-length"] = 1.5 } }))
			local s = settings.validate({ QUEUE_ARGUMENTS = { ["x-queue-version"] = 2.0, ["x-q"] = true } }, no_env)
			assert.are.equal("integer", math.type(s.QUEUE_ARGUMENTS["x-queue-version"]))
		end)

		it("retry queues and the DLQ follow a quorum QUEUE unless told otherwise", function()
			local s = settings.validate({}, no_env)
			assert.are.same({}, s.RETRY_QUEUE_ARGUMENTS)
			assert.are.same({}, s.DEAD_LETTER_QUEUE_ARGUMENTS)
			s = settings.validate({ QUEUE_ARGUMENTS = { ["x-queue-type"] = "quorum",
				["x-quorum-initial-group-size"] = 3, ["x-max-length"] = 10 } }, no_env)
			assert.are.same({ ["x-queue-type"] = "quorum", ["x-quorum-initial-group-size"] = 3,
				["x-dead-letter-strategy"] = "at-least-once", ["x-overflow"] = "reject-publish" },
				s.RETRY_QUEUE_ARGUMENTS)
			assert.are.same({ ["x-queue-type"] = "quorum", ["x-quorum-initial-group-size"] = 3 },
				s.DEAD_LETTER_QUEUE_ARGUMENTS)
			-- streams are not followed: a stream cannot delay nor dead-letter a message
			s = settings.validate({ QUEUE_ARGUMENTS = { ["x-queue-type"] = "stream" } }, no_env)
			assert.are.same({}, s.RETRY_QUEUE_ARGUMENTS)
			assert.are.same({}, s.DEAD_LETTER_QUEUE_ARGUMENTS)
			-- set explicitly: as given (a quorum retry queue still dead-letters at least once)
			s = settings.validate({ QUEUE_ARGUMENTS = { ["x-queue-type"] = "quorum" },
				RETRY_QUEUE_ARGUMENTS = { ["x-queue-type"] = "classic" },
				DEAD_LETTER_QUEUE_ARGUMENTS = { ["x-queue-type"] = "quorum", ["x-max-length"] = 5 } }, no_env)
			assert.are.same({ ["x-queue-type"] = "classic" }, s.RETRY_QUEUE_ARGUMENTS)
			assert.are.same({ ["x-queue-type"] = "quorum", ["x-max-length"] = 5 }, s.DEAD_LETTER_QUEUE_ARGUMENTS)
			s = settings.validate({ RETRY_QUEUE_ARGUMENTS = { ["x-queue-type"] = "quorum" } }, no_env)
			assert.are.equal("at-least-once", s.RETRY_QUEUE_ARGUMENTS["x-dead-letter-strategy"])
			assert.are.same({}, s.DEAD_LETTER_QUEUE_ARGUMENTS)
		end)

		it("RETRY_QUEUE_ARGUMENTS refuses what svccomm sets and what cannot dead-letter back", function()
			assert.are.equal('settings.lua: RETRY_QUEUE_ARGUMENTS["x-message-ttl"]: is set by svccomm '
				.. "on retry queues (remove it)", err_of({ RETRY_QUEUE_ARGUMENTS = { ["x-message-ttl"] = 5 } }))
			assert.are.equal('settings.lua: RETRY_QUEUE_ARGUMENTS["x-queue-type"]: expected "classic" or '
				.. '"quorum" (a retry queue dead-letters back to QUEUE), got "stream"',
				err_of({ RETRY_QUEUE_ARGUMENTS = { ["x-queue-type"] = "stream" } }))
			assert.are.equal('settings.lua: RETRY_QUEUE_ARGUMENTS: expected x-overflow "reject-publish" '
				.. 'with x-dead-letter-strategy "at-least-once" (RabbitMQ would dead-letter at most '
				.. 'once), got "drop-head"', err_of({ RETRY_QUEUE_ARGUMENTS = { ["x-queue-type"] = "quorum",
					["x-overflow"] = "drop-head" } }))
		end)

		it("identifier keys", function()
			for _, good in ipairs({ "svccomm_outbox", "_x1", "events.outbox", string.rep("a", 63) }) do
				assert.are.equal(good, settings.validate({ OUTBOX_TABLE = good }, no_env).OUTBOX_TABLE)
			end
			local expected = "a table name ([A-Za-z_][A-Za-z0-9_]*, at most 63 characters, optionally schema.table)"
			for _, bad in ipairs({ "bad-name", "1abc", "a.b.c", "x; drop table y", ".x", "", "a.", "public.1t" }) do
				assert.are.equal(string.format("settings.lua: INBOX_TABLE: expected %s, got %q", expected, bad),
					err_of({ INBOX_TABLE = bad }))
			end
			-- long values are cut in the message
			assert.are.equal(string.format("settings.lua: OUTBOX_TABLE: expected %s, got %q", expected,
				string.rep("a", 57) .. "..."), err_of({ OUTBOX_TABLE = string.rep("a", 64) }))
		end)

		it("INSTALLED_APPS entries", function()
			assert.are.equal('settings.lua: INSTALLED_APPS[2]: expected an app name (a directory under apps/: '
				.. 'letters, digits, _ and -), got "../etc"', err_of({ INSTALLED_APPS = { "a", "../etc" } }))
			assert.are.equal('settings.lua: INSTALLED_APPS[2]: app "a" is listed twice (also INSTALLED_APPS[1])',
				err_of({ INSTALLED_APPS = { "a", "a" } }))
		end)

		it("INBOX needs DATABASE_URL", function()
			assert.are.equal("settings.lua: INBOX: expected DATABASE_URL to be set when INBOX = true, "
				.. "got DATABASE_URL nil", err_of({ INBOX = true }))
		end)

		it("uses the given path in messages", function()
			local ok, err = pcall(settings.validate, { QUEUE = 1 }, no_env, "/srv/app/settings.lua")
			assert.is_false(ok)
			assert.are.equal("/srv/app/settings.lua: QUEUE: expected a non-empty string, got 1", err)
		end)
	end)

	describe("URLs (needs svccomm.core)", function()
		local core
		before_each(function()
			core = require("svccomm.core")
		end)

		it("accepts valid URLs", function()
			assert.is_table(core.parse_amqp_url("amqps://u:p@h:5671/v"))
			local s = settings.validate({ BROKER_CONNECTION_URL = "amqps://u:p@h:5671/v",
				DATABASE_URL = "host=/tmp port=5433 dbname=svccomm" }, no_env)
			assert.are.equal("amqps://u:p@h:5671/v", s.BROKER_CONNECTION_URL)
		end)

		it("an unparsable broker URL never shows the password", function()
			local err = err_of({ BROKER_CONNECTION_URL = "http://user:s3cretpw@host/" })
			assert.are.equal('settings.lua: BROKER_CONNECTION_URL: expected an amqp:// or amqps:// URL, '
				.. 'got "http://user:****@host/" (not a valid amqp:// or amqps:// URL)', err)
			assert.is_nil(err:find("s3cretpw", 1, true))
		end)

		it("an unparsable database URL never shows the password", function()
			local err = err_of({ DATABASE_URL = "postgresql://u:s3cretpw@[::1/db" })
			assert.matches('^settings.lua: DATABASE_URL: expected a PostgreSQL connection string, got '
				.. '"postgresql://u:%*%*%*%*@%[::1/db" %(', err)
			assert.is_nil(err:find("s3cretpw", 1, true), err)
			err = err_of({ DATABASE_URL = "password=s3cretpw nonsense=1" })
			assert.is_nil(err:find("s3cretpw", 1, true), err)
			assert.matches('invalid connection option "nonsense"', err)
			err = err_of({ DATABASE_URL = "postgresql://u:pw@[::1/db" })
			assert.is_nil(err:find("pw@", 1, true), err)
		end)

		it("accepts a list of nodes, and a comma-separated string such as the variable's", function()
			local list = { "amqp://u:p@n1:5680/v", "amqp://u:p@n2:5681/v" }
			local s = settings.validate({ BROKER_CONNECTION_URL = list }, no_env)
			assert.are.same(list, s.BROKER_CONNECTION_URL)
			assert.are.same(list, settings.broker_urls(s))
			s = settings.validate({}, SPEC.env({ SVCCOMM_BROKER_URL = "amqp://u:p@n1:5680/v , amqp://u:p@n2:5681/v" }))
			assert.are.same(list, s.BROKER_CONNECTION_URL)
			-- a comma not followed by a URL is part of it (an unencoded one in a password)
			s = settings.validate({ BROKER_CONNECTION_URL = "amqp://u:a,b@n1/v" }, no_env)
			assert.are.equal("amqp://u:a,b@n1/v", s.BROKER_CONNECTION_URL)
			assert.are.same({ "amqp://u:a,b@n1/v" }, settings.broker_urls(s))
			-- a list of one is one URL
			s = settings.validate({ BROKER_CONNECTION_URL = { "amqp://n1/" } }, no_env)
			assert.are.equal("amqp://n1/", s.BROKER_CONNECTION_URL)
			assert.is_false(s.BROKER_SHUFFLE)
		end)

		it("refuses an empty list, a malformed entry and mixed schemes, naming the entry", function()
			assert.are.equal("settings.lua: BROKER_CONNECTION_URL: expected at least one amqp:// or "
				.. "amqps:// URL, got an empty list", err_of({ BROKER_CONNECTION_URL = {} }))
			local err = err_of({ BROKER_CONNECTION_URL = { "amqp://u:s3cretpw@n1/", "amqp://u:s3cretpw@n2:x/" } })
			assert.are.equal('settings.lua: BROKER_CONNECTION_URL[2]: expected an amqp:// or amqps:// URL, '
				.. 'got "amqp://u:****@n2:x/" (not a valid amqp:// or amqps:// URL)', err)
			err = err_of({ BROKER_CONNECTION_URL = { "amqps://u:s3cretpw@n1/", "amqp://u:s3cretpw@n2/" } })
			assert.are.equal('settings.lua: BROKER_CONNECTION_URL[2]: expected an amqps:// URL like the '
				.. 'first entry (amqp:// and amqps:// do not mix), got "amqp://u:****@n2/"', err)
			err = err_of({}, SPEC.env({ SVCCOMM_BROKER_URL = "amqp://u:s3cretpw@n1/,amqps://u:s3cretpw@n2/" }))
			assert.matches("^settings.lua: BROKER_CONNECTION_URL %(from SVCCOMM_BROKER_URL%)%[2%]: expected an amqp:// URL", err)
			assert.is_nil(err:find("s3cretpw", 1, true))
			err = err_of({ BROKER_CONNECTION_URL = { "amqp://n1/", 5 } })
			assert.are.equal("settings.lua: BROKER_CONNECTION_URL[2]: expected an amqp:// or amqps:// URL, got 5", err)
			err = err_of({ BROKER_CONNECTION_URL = { x = "amqp://n1/" } })
			assert.matches("expected an amqp:// or amqps:// URL, or a list of them", err)
		end)

		it("an unparsable override names the variable", function()
			local err = err_of({}, SPEC.env({ SVCCOMM_BROKER_URL = "nope" }))
			assert.matches("^settings.lua: BROKER_CONNECTION_URL %(from SVCCOMM_BROKER_URL%): expected", err)
		end)
	end)

	describe("without svccomm.core", function()
		it("skips the URL parsing but still checks the type", function()
			local saved_loaded, saved_preload = package.loaded["svccomm.core"], package.preload["svccomm.core"]
			package.loaded["svccomm.core"] = nil
			package.preload["svccomm.core"] = function() error("not built") end
			local ok, s = pcall(settings.validate, { BROKER_CONNECTION_URL = "http://x" }, no_env)
			local ok2, err = pcall(settings.validate, { BROKER_CONNECTION_URL = 5 }, no_env)
			package.loaded["svccomm.core"], package.preload["svccomm.core"] = saved_loaded, saved_preload
			assert.is_true(ok, s)
			assert.are.equal("http://x", s.BROKER_CONNECTION_URL)
			assert.is_false(ok2)
			assert.are.equal("settings.lua: BROKER_CONNECTION_URL: expected an amqp:// or amqps:// URL, "
				.. "or a list of them, got 5", err)
		end)
	end)

	describe("require_keys", function()
		it("names the key and the command", function()
			local s = settings.validate({}, no_env, "proj/settings.lua")
			assert.are.equal("proj/settings.lua: QUEUE: required by runconsumer, not set",
				SPEC.error_of(settings.require_keys, s, { "QUEUE" }, "runconsumer"))
			s = settings.validate({ QUEUE = "q" }, no_env)
			assert.is_nil(SPEC.error_of(settings.require_keys, s, { "QUEUE" }, "runconsumer"))
		end)
	end)

	describe("reference", function()
		it("lists every key in schema order with type, default and doc", function()
			local rows = settings.reference()
			local keys = {}
			for i, r in ipairs(rows) do
				keys[i] = r.key
				assert.is_string(r.type)
				assert.is_string(r.default)
				assert.is_string(r.doc)
				assert.is_true(#r.doc > 10)
			end
			assert.are.same(settings.keys(), keys)
			assert.are.equal("APP_ID", rows[1].key)
			assert.are.equal('"svccomm"', rows[1].default)
			local by = {}
			for _, r in ipairs(rows) do by[r.key] = r end
			assert.are.equal("{1, 10, 60}", by.RETRY_DELAYS.default)
			assert.are.equal("nil", by.QUEUE.default)
			assert.are.equal("SVCCOMM_BROKER_URL", by.BROKER_CONNECTION_URL.env)
			-- every key validate() fills is documented, and nothing else
			local s = settings.validate({}, no_env)
			local n = 0
			for k in pairs(s) do
				if k:sub(1, 1) ~= "_" then
					n = n + 1
				end
			end
			local nil_defaults = 0
			for _, r in ipairs(rows) do
				-- (RETRY_QUEUE_ARGUMENTS and DEAD_LETTER_QUEUE_ARGUMENTS: unset = derived)
				if r.default == "nil" and s[r.key] == nil then nil_defaults = nil_defaults + 1 end
			end
			assert.are.equal(#rows, n + nil_defaults)
		end)
	end)
end)
