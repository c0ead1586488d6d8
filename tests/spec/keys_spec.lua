local keys = require("svccomm.keys")
local cjson = require("cjson")

describe("keys", function()
	-- Reading (wire -> handler) and writing (handler -> wire) exactly as the Python library
	-- 2.6 (djangorestframework-camel-case, default options): the first rows of each table are
	-- the examples of wire-python-2.6.md, the rest edge cases checked against its regular
	-- expressions (digits, acronyms, leading and double underscores, non-ASCII).
	describe("snake_name", function()
		local cases = {
			{ "userId", "user_id" },
			{ "firstName", "first_name" },
			{ "address1", "address_1" },
			{ "utf8Name", "utf_8_name" },
			{ "v2Api", "v_2_api" },
			{ "x1Y", "x_1y" },
			{ "a1b2", "a1b_2" },
			{ "Private", "_private" },
			{ "HTTPResponse", "http_response" },
			{ "getHTTPResponseCode", "get_http_response_code" },
			{ "userID", "user_id" },
			{ "iOSVersion", "i_os_version" },
			{ "ABC", "abc" },
			{ "already_snake", "already_snake" },
			-- edge cases
			{ "eventId", "event_id" },
			{ "EventId", "_event_id" },
			{ "HTTPServer", "http_server" },
			{ "address2", "address_2" },
			{ "v2API", "v_2api" },
			{ "already_Snake", "already__snake" },
			{ "ID", "id" },
			{ "a", "a" },
			{ "", "" },
			{ "x-Header", "x-_header" },
			{ "aggregateRootID", "aggregate_root_id" },
			{ "A1", "a_1" },
			{ "AB1", "a_b_1" },
			{ "ab12cd", "ab_12cd" },
			{ "item2Count", "item_2_count" },
			{ "x1", "x_1" },
			{ "X1Y2", "_x1_y_2" },
			{ "__typeName", "__type_name" },
			{ "_privateKey", "_private_key" },
			{ "a__b", "a__b" },
			{ "camelCase_mixed", "camel_case_mixed" },
			{ "\u{C4}pfelId", "\u{E4}pfel_id" },
			{ "\u{3A9}mega\u{394}elta", "\u{3C9}mega\u{3B4}elta" },
			{ "\u{41F}\u{440}\u{438}\u{432}\u{435}\u{442}\u{41C}\u{438}\u{440}", "\u{43F}\u{440}\u{438}\u{432}\u{435}\u{442}\u{43C}\u{438}\u{440}" },
		}
		for _, c in ipairs(cases) do
			it(c[1] .. " -> " .. c[2], function()
				assert.are.equal(c[2], keys.snake_name(c[1]))
			end)
		end
	end)

	describe("camel_name", function()
		local cases = {
			{ "user_id", "userId" },
			{ "_private", "Private" },
			{ "a__b", "a_B" },
			{ "address_1", "address1" },
			{ "utf_8_name", "utf8Name" },
			{ "a_1_b", "a1B" },
			{ "x_1y", "x1y" },
			{ "trailing_", "trailing_" },
			{ "__dunder__", "_Dunder__" },
			{ "http_response", "httpResponse" },
			-- edge cases
			{ "event_id", "eventId" },
			{ "eventId", "eventId" },
			{ "event_id_2", "eventId2" },
			{ "plain", "plain" },
			{ "__", "__" },
			{ "_", "_" },
			{ "_1", "1" },
			{ "a_b_c", "aBC" },
			{ "user_ID", "user_ID" },
			{ "x__1", "x_1" },
			{ "v_2_api", "v2Api" },
			{ "\u{FC}ber_name", "\u{FC}berName" },
		}
		for _, c in ipairs(cases) do
			it(c[1] .. " -> " .. c[2], function()
				assert.are.equal(c[2], keys.camel_name(c[1]))
			end)
		end
	end)

	it("converts keys of objects inside nested arrays, and leaves keys that are not strings", function()
		local input = { orderLines = { { itemId = 1, subItems = { { skuCode = "a" } } }, { itemId = 2 } },
			[1] = { innerKey = true }, [2.5] = { keyA = 1 } }
		local out = keys.to_snake(input)
		assert.are.same({ order_lines = { { item_id = 1, sub_items = { { sku_code = "a" } } }, { item_id = 2 } },
			[1] = { inner_key = true }, [2.5] = { key_a = 1 } }, out)
		assert.are.same(input, keys.to_camel(out))
		-- values are never changed, only keys
		assert.are.same({ aB = "user_id", list = { "firstName" } },
			keys.to_camel { a_b = "user_id", list = { "firstName" } })
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
