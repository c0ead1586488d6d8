local keys = require("svccomm.keys")
local cjson = require("cjson")

describe("keys", function()
	describe("snake_name", function()
		local cases = {
			{ "eventId", "event_id" },
			{ "event_id", "event_id" },
			{ "EventId", "event_id" },
			{ "HTTPServer", "http_server" },
			{ "userID", "user_id" },
			{ "getHTTPResponseCode", "get_http_response_code" },
			{ "utf8Name", "utf8_name" },
			{ "address2", "address2" },
			{ "v2API", "v2_api" },
			{ "already_Snake", "already_snake" },
			{ "ID", "id" },
			{ "a", "a" },
			{ "", "" },
			{ "x-Header", "x-header" },
			{ "aggregateRootID", "aggregate_root_id" },
		}
		for _, c in ipairs(cases) do
			it(c[1] .. " -> " .. c[2], function()
				assert.are.equal(c[2], keys.snake_name(c[1]))
			end)
		end
	end)

	describe("camel_name", function()
		local cases = {
			{ "event_id", "eventId" },
			{ "eventId", "eventId" },
			{ "http_server", "httpServer" },
			{ "event_id_2", "eventId2" },
			{ "_private", "_private" },
			{ "trailing_", "trailing_" },
			{ "a__b", "aB" },
			{ "plain", "plain" },
		}
		for _, c in ipairs(cases) do
			it(c[1] .. " -> " .. c[2], function()
				assert.are.equal(c[2], keys.camel_name(c[1]))
			end)
		end
	end)

	it("converts nested objects and array elements, leaving array indices alone", function()
		local input = {
			eventId = "1",
			payload = { userName = "x", tagList = { { tagName = "a" }, "plain", 3 } },
			[1] = { innerKey = true },
		}
		local out = keys.to_snake(input)
		assert.are.same({
			event_id = "1",
			payload = { user_name = "x", tag_list = { { tag_name = "a" }, "plain", 3 } },
			[1] = { inner_key = true },
		}, out)
		assert.are.same(input, keys.to_camel(out))
	end)

	it("never mutates its input", function()
		local input = { eventId = { innerKey = 1 } }
		local out = keys.to_snake(input)
		assert.are.equal(1, input.eventId.innerKey)
		assert.is_nil(input.event_id)
		assert.are_not.equal(input.eventId, out.event_id)
	end)

	it("keeps cjson.null and scalars, and returns non-tables as they are", function()
		local out = keys.to_snake({ someKey = cjson.null, n = 1.5, b = false })
		assert.are.equal(cjson.null, out.some_key)
		assert.are.equal(1.5, out.n)
		assert.are.equal(false, out.b)
		assert.are.equal("str", keys.to_snake("str"))
		assert.are.equal(cjson.null, keys.to_snake(cjson.null))
		assert.is_nil(keys.to_camel(nil))
	end)

	it("carries metatables over (e.g. an array marker)", function()
		local mt = { __name = "array marker" }
		local arr = setmetatable({ { aB = 1 } }, mt)
		local out = keys.to_snake({ itemList = arr })
		assert.are.equal(mt, getmetatable(out.item_list))
		assert.are.same({ a_b = 1 }, out.item_list[1])
		assert.are_not.equal(arr, out.item_list)
	end)

	it("raises on cycles but accepts shared tables", function()
		local t = { aB = {} }
		t.aB.back = t
		assert.has_error(function() keys.to_snake(t) end, "to_snake: cycle detected (a table contains itself)")
		local shared = { xY = 1 }
		local out = keys.to_snake({ one = shared, two = shared })
		assert.are.same({ x_y = 1 }, out.one)
		assert.are.same({ x_y = 1 }, out.two)
	end)

	it("resolves collisions deterministically: the key already in target form wins", function()
		for _ = 1, 20 do
			local out = keys.to_snake({ eventId = "camel", event_id = "snake" })
			assert.are.equal("snake", out.event_id)
			assert.is_nil(out.eventId)
			local out2 = keys.to_snake({ userID = "a", userId = "b" })
			assert.are.equal("a", out2.user_id) -- "userID" < "userId"
			local out3 = keys.to_camel({ eventId = "camel", event_id = "snake" })
			assert.are.equal("camel", out3.eventId)
		end
	end)
end)
