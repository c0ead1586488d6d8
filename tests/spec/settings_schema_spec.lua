-- svccomm.settings_schema: the one schema of the settings keys.
local schema = require("svccomm.settings_schema")
local settings = require("svccomm.settings")

describe("settings_schema", function()
	it("has one row per key, each with a type, a checker and a doc", function()
		local seen = {}
		for _, row in ipairs(schema.rows) do
			assert.is_nil(seen[row.key], row.key)
			seen[row.key] = true
			assert.matches("^[A-Z][A-Z0-9_]*$", row.key)
			assert.is_string(row.type)
			assert.is_function(row.check)
			assert.is_string(row.doc)
			assert.are.equal(row, schema.by_key[row.key])
			-- a key without a default is nullable, and only then
			assert.are.equal(row.default == nil, row.nullable == true, row.key)
		end
		assert.are.same(schema.keys(), settings.keys())
	end)

	it("every default passes its own checker", function()
		for _, row in ipairs(schema.rows) do
			if row.default ~= nil then
				assert.are.same(row.default, row.check(schema.default(row), row.key))
			end
		end
	end)

	it("default gives a fresh copy of table defaults", function()
		local row = schema.by_key.RETRY_DELAYS
		local a = schema.default(row)
		a[1] = 99
		assert.are.same({ 1, 10, 60 }, schema.default(row))
		assert.are_not.equal(schema.default(row), schema.default(row))
	end)

	it("is what settings.reference() and settings.keys() show", function()
		assert.are.equal(schema.reference, settings.reference)
		assert.are.equal(schema.keys, settings.keys)
		local by = {}
		for _, r in ipairs(schema.reference()) do
			by[r.key] = r
		end
		assert.are.equal('"amqp://guest:guest@localhost:5672/%2f"', by.BROKER_CONNECTION_URL.default)
		assert.are.equal("amqp://guest:guest@localhost:5672/%2f", by.BROKER_CONNECTION_URL.value)
		assert.are.equal("{}", by.EXCHANGES.default)
		assert.are.equal("0.02", by.CONSUMER_COMMIT_INTERVAL.default)
		assert.are.equal("false", by.INBOX.default)
		assert.are.equal("SVCCOMM_LOG_LEVEL", by.LOG_LEVEL.env)
		assert.is_nil(by.QUEUE.env)
	end)

	it("scripts/settings-reference.lua prints the table the README shows", function()
		local chunk = assert(loadfile(SPEC.root .. "/scripts/settings-reference.lua"))
		local out = {}
		local write = io.write
		io.write = function(...)
			for _, s in ipairs({ ... }) do
				out[#out + 1] = s
			end
		end
		local ok, err = pcall(chunk)
		io.write = write
		assert.is_true(ok, err)
		local text = table.concat(out)
		assert.matches("^| Key | Type | Default | Env override | Description |\n", text)
		local lines = select(2, text:gsub("\n", ""))
		assert.are.equal(#schema.rows + 2, lines)
		local fh = assert(io.open(SPEC.root .. "/README.md"))
		local readme = fh:read("a")
		fh:close()
		assert.is_truthy(readme:find(text, 1, true), "the README's settings table differs from scripts/settings-reference.lua")
	end)
end)
