-- svccomm.secrets: the Lua face of the C masker of svccomm.core (src/util/secret.c).
local secrets = require("svccomm.secrets")
local settings = require("svccomm.settings")

local HIDDEN = "(details hidden because they contain the password)"

describe("secrets", function()
	describe("mask_url", function()
		local cases = {
			{ "amqp://guest:guest@localhost:5672/%2f", "amqp://guest:****@localhost:5672/%2f" },
			{ "amqps://u:p%40ss@h/v", "amqps://u:****@h/v" },
			{ "amqp://u:p@ss@h/v", "amqp://u:****@h/v" },
			{ "amqp://localhost", "amqp://localhost" },
			{ "amqp://user@localhost", "amqp://user@localhost" },
			{ "postgresql://svccomm:pw@db:5433/x?sslmode=require", "postgresql://svccomm:****@db:5433/x?sslmode=require" },
			{ "postgresql://db/x?user=a&password=secret&x=1", "postgresql://db/x?user=a&password=****&x=1" },
			{ "host=db password=secret dbname=x", "host=db password=**** dbname=x" },
			{ "host=db password = 'se cret' dbname=x", "host=db password = **** dbname=x" },
			-- the password as a query parameter of a URL without userinfo password
			{ "postgresql://svc@db/app?password=s3cret", "postgresql://svc@db/app?password=****" },
			-- an unencoded '@' in the password: masked up to the last '@'
			{ "postgresql://u:p@ssw0rd@host/db", "postgresql://u:****@host/db" },
			-- percent-encoded passwords
			{ "postgresql://u:p%C3%A4ss%20w%40rd@host/db", "postgresql://u:****@host/db" },
			{ "postgresql://db/x?password=s%26cret&user=a", "postgresql://db/x?password=****&user=a" },
			{ "amqps://u:%F0%9F%94%91key@h/v", "amqps://u:****@h/v" },
			-- unicode passwords
			{ "postgresql://u:pässwört€@host/db", "postgresql://u:****@host/db" },
			{ "amqp://u:пароль@host/v", "amqp://u:****@host/v" },
			{ "host=db password=pässwört dbname=x", "host=db password=**** dbname=x" },
		}
		for _, c in ipairs(cases) do
			it(c[1], function()
				assert.are.equal(c[2], settings.mask_url(c[1]))
				assert.are.equal(c[2], secrets.mask(c[1]))
			end)
		end

		it("is settings.mask_url, and returns a value that is not a string as it is", function()
			assert.are.equal(secrets.mask, settings.mask_url)
			assert.is_nil(secrets.mask(nil))
			assert.are.equal(5, secrets.mask(5))
		end)
	end)

	describe("scrub", function()
		it("masks the URL and every form of its password in a text", function()
			assert.are.equal("cannot connect to postgresql://u:****@h/db: timeout",
				secrets.scrub("cannot connect to postgresql://u:s3cretpw@h/db: timeout", "postgresql://u:s3cretpw@h/db"))
			-- libpq read "p" as the password and "ssw0rd@127.0.0.1" as the host
			local out = secrets.scrub('could not translate host name "ssw0rd@127.0.0.1"',
				"postgresql://u:p@ssw0rd@127.0.0.1/db")
			assert.is_nil(out:find("ssw0rd", 1, true), out)
			-- percent-decoded and unicode
			assert.are.equal("password authentication failed: ****",
				secrets.scrub("password authentication failed: päss word", "postgresql://u:p%C3%A4ss%20word@h/db"))
			assert.are.equal("bad: ****", secrets.scrub("bad: пароль", "amqp://u:пароль@host/v"))
			assert.are.equal("nothing here", secrets.scrub("nothing here", "amqps://u:pw@h/v"))
		end)

		it("hides the whole text when it holds a password shorter than 4 bytes", function()
			assert.are.equal(HIDDEN, secrets.scrub("x pw", "amqps://u:pw@h/v"))
		end)

		it("takes any text and checks the url at the caller", function()
			assert.are.equal("42", secrets.scrub(42, "amqp://h/"))
			assert.matches("secrets_spec.lua:%d+: scrub: url must be a string, got nil",
				SPEC.error_of(function() secrets.scrub("text", nil) end))
		end)
	end)

	describe("without svccomm.core", function()
		it("raises at the caller instead of showing the password", function()
			local saved_loaded, saved_preload = package.loaded["svccomm.core"], package.preload["svccomm.core"]
			package.loaded["svccomm.core"] = nil
			package.preload["svccomm.core"] = function() error("not built") end
			local err = SPEC.error_of(function() local _ = secrets.mask("amqp://u:s3cretpw@h/") end)
			local err2 = SPEC.error_of(function() local _ = secrets.scrub("s3cretpw", "amqp://u:s3cretpw@h/") end)
			package.loaded["svccomm.core"], package.preload["svccomm.core"] = saved_loaded, saved_preload
			assert.matches("secrets_spec.lua:%d+: svccomm.secrets: the native module svccomm.core is not available", err)
			assert.matches("not available", err2)
		end)
	end)
end)
