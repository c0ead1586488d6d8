-- svccomm.json: the encoder of outbox payloads and SQL parameters, and the decoder of
-- json/jsonb columns (no database needed).
local json = require "svccomm.json"
local cjson = require "cjson"

describe("svccomm.json.encode", function()
	local enc = json.encode

	it("writes integers exactly and floats that read back equal", function()
		assert.equal("9223372036854775807", enc(math.maxinteger))
		assert.equal("-9223372036854775808", enc(math.mininteger))
		assert.equal("9007199254740993", enc(9007199254740993))
		assert.equal("0.1", enc(0.1))
		assert.equal(0.1 + 0.2, tonumber(enc(0.1 + 0.2)))
		assert.equal("3", enc(3.0))
		assert.equal(1e300, tonumber(enc(1e300)))
	end)

	it("writes empty tables as objects unless marked as arrays", function()
		assert.equal("{}", enc({}))
		assert.equal("[]", enc(json.array()))
		assert.equal('{"a":[],"b":{}}', enc({ a = json.array({}), b = {} }))
		assert.equal("[1,2]", enc(json.array({ 1, 2 })))
	end)

	it("sorts object keys, escapes strings and keeps UTF-8 and slashes", function()
		assert.equal('{"a":1,"b":"x/y","c":"\\"\\\\\\n\\u0001","é":"ü€😀"}',
			enc({ c = '"\\\n\1', b = "x/y", a = 1, ["é"] = "ü€😀" }))
		assert.equal("null", enc(json.null))
		assert.equal("[true,false,null]", enc({ true, false, cjson.null }))
	end)

	it("refuses values JSON cannot hold, naming the place", function()
		local t = {}
		t.self = t
		local cases = {
			{ { x = 0 / 0 }, "value%.x: NaN or infinity" },
			{ { 1, math.huge }, "value%[2%]: NaN or infinity" },
			{ { f = print }, "value%.f: a function cannot be encoded" },
			{ { a = { t } }, "cycle" },
			{ { [true] = 1 }, "table key of type boolean" },
			{ { 1, 2, x = 3 }, "mixes string keys and array items" },
			{ { [1] = 1, [3] = 3 }, "sparse array" },
			{ { s = "\255\254" }, "value%.s: string is not valid UTF%-8" },
			{ io.stdout, "userdata cannot be encoded" },
		}
		for _, c in ipairs(cases) do
			local ok, err = pcall(enc, c[1])
			assert.is_false(ok)
			assert.truthy(tostring(err):find(c[2]), tostring(err))
		end
	end)

	it("refuses nesting deeper than the limit", function()
		local deep = {}
		local cur = deep
		for _ = 1, 10 do
			cur.x = {}
			cur = cur.x
		end
		assert.truthy(select(2, pcall(enc, deep, 5)):find("nested deeper than 5"))
		assert.is_string(enc(deep, 20))
	end)

	it("shares a table between two parents without calling it a cycle", function()
		local shared = { 1 }
		assert.equal('{"a":[1],"b":[1]}', enc({ a = shared, b = shared }))
	end)
end)

describe("svccomm.json.decode", function()
	it("decodes null as json.null (cjson.null), arrays and objects as tables", function()
		local v = json.decode('{"a":[1,null,"x"],"b":{"c":true}}')
		assert.same({ 1, json.null, "x" }, v.a)
		assert.is_true(v.b.c)
		assert.equal(json.null, cjson.null)
	end)

	it("raises on invalid text, and on a non-string at the caller", function()
		assert.is_false(pcall(json.decode, "{nope"))
		assert.matches("json_spec.lua:%d+: decode: expected a string, got number",
			SPEC.error_of(function() json.decode(42) end))
		assert.matches("json_spec.lua:%d+: decode: invalid JSON: .*leading zero",
			SPEC.error_of(function() json.decode("[01]") end))
	end)

	it("decodes integers that fit in int64 as integers, exactly; other numbers as floats", function()
		local function int(text, want)
			local v = json.decode(text)
			assert.equal("integer", math.type(v), text)
			assert.equal(want, v, text)
		end
		local function float(text, want)
			local v = json.decode(text)
			assert.equal("float", math.type(v), text)
			assert.equal(want, v, text)
		end
		int("42", 42)
		int("9007199254740993", 9007199254740993) -- 2^53 + 1
		int("9223372036854775807", math.maxinteger)
		int("-9223372036854775808", math.mininteger)
		float("9223372036854775808", 2.0 ^ 63)
		float("42.0", 42.0)
		float("1e2", 100.0)
		float("-0", 0.0)
		assert.equal(-math.huge, 1 / json.decode("-0"))
		local body = json.decode('{"id": 9007199254740993, "n": 42}')
		assert.equal("user:42", "user:" .. body.n)
		assert.equal("9007199254740993", string.format("%d", body.id))
	end)

	it("re-encodes decoded integers exactly", function()
		local text = '{"big":-9223372036854775808,"id":9007199254740993,"x":[1,2.5]}'
		assert.equal(text, json.encode(json.decode(text)))
	end)

	it("refuses what RFC 8259 forbids, with a message (try_decode returns it)", function()
		for _, text in ipairs { "01", "1.", ".5", "+1", "NaN", "Infinity", "-Infinity", "1e999999",
			"[1,]", '{"a":1,}', "'a'", '"\\ud800"', '"\\udc00"', '"\xff"', "\"\255\"", "\"a\tb\"",
			string.rep("9", 400), "1 2", "" } do
			local v, err = json.try_decode(text)
			assert.is_nil(v, text)
			assert.matches("at character %d+$", err)
		end
	end)

	it("reads strings alike whatever the position of a special byte (word-at-a-time scan)", function()
		-- Every length around the scanner's 8-byte words, with one special byte at every
		-- position: a quote (escaped), a backslash escape, UTF-8, invalid UTF-8, a control byte.
		local specials = { '\\"', "\\n", "\195\169", "\226\130\172", "\255", "\1", "\31", "\127" }
		for n = 0, 26 do
			for i = 0, n do
				for _, sp in ipairs(specials) do
					local text = '"' .. string.rep("a", i) .. sp .. string.rep("b", n - i) .. '"'
					local ok_c, want = pcall(cjson.decode, text)
					local got, err = json.try_decode(text)
					if sp == "\255" or sp == "\1" or sp == "\31" then
						ok_c = false -- cjson lets invalid UTF-8 and raw control bytes pass; RFC 8259 does not
					end
					if ok_c then
						assert.equal(want, got, text)
					else
						assert.is_nil(got, text)
						assert.is_string(err)
					end
				end
			end
		end
	end)

	it("counts depth as cjson did: max_depth containers, a number inside the deepest", function()
		assert.equal(7, json.decode("[[[7]]]", 3)[1][1][1])
		local v, err = json.try_decode("[[[[7]]]]", 3)
		assert.is_nil(v)
		assert.matches("too many nested data structures %(4%)", err)
		assert.is_nil((json.try_decode(string.rep("[", 1001) .. string.rep("]", 1001))))
	end)
end)

describe("svccomm.json.array", function()
	it("marks a table (or a new one) and checks its argument at the caller", function()
		local t = {}
		assert.equal(t, json.array(t))
		assert.equal(json.array_mt, getmetatable(t))
		assert.equal(json.array_mt, getmetatable(json.array()))
		assert.matches("json_spec.lua:%d+: array: expected a table, got string",
			SPEC.error_of(function() json.array("x") end))
	end)
end)
