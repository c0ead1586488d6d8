local router = require("svccomm.message_router")

local THIS = debug.getinfo(1, "S").source:sub(2)

local function here(offset)
	return THIS .. ":" .. (debug.getinfo(2, "l").currentline + (offset or 0))
end

describe("message_router", function()
	before_each(function()
		router.reset()
	end)

	describe("registration styles", function()
		it("decorator style returns the handler so decorators stack", function()
			local function h() end
			local r = router.consumer("ex", "a.b")(router.consumer("ex", "a.c")(h))
			assert.are.equal(h, r)
			assert.are.equal(h, router.match("ex", "a.b").fn)
			assert.are.equal(h, router.match("ex", "a.c").fn)
		end)

		it("direct style registers and returns the handler", function()
			local function h() end
			assert.are.equal(h, router.consumer("ex", "event.create", h))
			local e = router.match("ex", "event.create")
			assert.are.equal(h, e.fn)
			assert.are.equal("exact", e.kind)
			assert.are.equal("event.create", e.pattern)
			assert.are.equal("ex", e.exchange)
		end)

		it("consumer(exchange)(fn) takes every routing key of the exchange", function()
			local function h() end
			router.consumer("ex")(h)
			for _, rk in ipairs({ "", "a", "a.b.c", "#" }) do
				local e = router.match("ex", rk)
				assert.are.equal(h, e.fn)
				assert.are.equal("exchange", e.kind)
				assert.is_nil(e.pattern)
			end
			assert.is_nil(router.match("other", "a"))
		end)

		it("default_consumer takes what no one else takes", function()
			local function d() end
			local function h() end
			assert.are.equal(d, router.default_consumer(d))
			router.consumer("ex", "a", h)
			assert.are.equal(h, router.match("ex", "a").fn)
			assert.are.equal(d, router.match("ex", "b").fn)
			assert.are.equal(d, router.match("nope", "a").fn)
			assert.are.equal("default", router.match("nope", "a").kind)
		end)

		it("returns nil when nothing matches and there is no default", function()
			router.consumer("ex", "a", function() end)
			assert.is_nil(router.match("ex", "b"))
		end)

		it("records where it was registered, where the handler is defined, and the app", function()
			local function h() end
			local def_line = debug.getinfo(h, "S").linedefined
			router._set_current_app("orders")
			router.consumer("ex", "a.*")(h); local where = here()
			router._set_current_app(nil)
			local e = router.match("ex", "a.x")
			assert.are.equal("orders", e.app)
			assert.are.equal(where, e.where)
			assert.are.equal(THIS .. ":" .. def_line, e.defined)
			assert.are.equal("pattern", e.kind)
			assert.are.equal("orders:" .. THIS .. ":" .. def_line, e.handler_id)
		end)

		it("records no app outside app loading", function()
			router.consumer("ex", "a", function() end)
			assert.is_nil(router.match("ex", "a").app)
			assert.matches("^%-:", router.match("ex", "a").handler_id)
		end)

		it("direct style records the caller's line", function()
			router.consumer("ex", "k", function() end); local where = here()
			assert.are.equal(where, router.match("ex", "k").where)
		end)

		it("default consumer records its place", function()
			router.default_consumer(function() end); local where = here()
			assert.are.equal(where, router.match("x", "y").where)
		end)
	end)

	describe("bad arguments", function()
		it("raises at the caller for a missing exchange", function()
			local err = SPEC.error_of(function()
				router.consumer(nil) -- this line
			end)
			assert.matches("message_router_spec.lua:%d+: consumer: exchange must be a non%-empty string, got nil", err)
		end)

		it("rejects an empty exchange, a non-string pattern and non-function handlers", function()
			assert.has_error(function() router.consumer("") end,
				nil)
			assert.matches('got ""', SPEC.error_of(router.consumer, ""))
			assert.matches("routing key pattern must be a string or nil, got number",
				SPEC.error_of(router.consumer, "ex", 5))
			assert.matches("handler must be a function, got string",
				SPEC.error_of(router.consumer, "ex", "a", "nope"))
			assert.matches("handler must be a function, got table",
				SPEC.error_of(router.consumer("ex", "a"), {}))
			assert.matches("default_consumer: handler must be a function, got nil",
				SPEC.error_of(router.default_consumer))
			assert.matches("longer than 255", SPEC.error_of(router.consumer, "ex", string.rep("a", 256)))
		end)

		it("a decorator error points at the line applying it", function()
			local deco = router.consumer("ex", "a")
			local err = SPEC.error_of(function()
				deco(42)
			end)
			assert.matches("^" .. THIS:gsub("%p", "%%%0") .. ":%d+: consumer: handler must be a function", err)
		end)
	end)

	describe("duplicates", function()
		it("names both places for an exact key", function()
			router.consumer("ex", "a.b", function() end); local first = here()
			local err = SPEC.error_of(function()
				router.consumer("ex", "a.b", function() end)
			end); local second = here(-1)
			assert.is_string(err)
			assert.truthy(err:find("exchange 'ex' routing key 'a.b'", 1, true), err)
			assert.truthy(err:find("first at " .. first, 1, true), err)
			assert.truthy(err:find("again at " .. second, 1, true), err)
		end)

		it("names both places and apps for a pattern", function()
			router._set_current_app("one")
			router.consumer("ex", "a.*")(function() end); local first = here()
			router._set_current_app("two")
			local err = SPEC.error_of(function()
				router.consumer("ex", "a.*")(function() end)
			end); local second = here(-1)
			router._set_current_app(nil)
			assert.truthy(err:find("first at " .. first .. " (app 'one')", 1, true), err)
			assert.truthy(err:find("again at " .. second .. " (app 'two')", 1, true), err)
		end)

		it("is an error for two exchange-wide handlers and two default consumers", function()
			router.consumer("ex")(function() end); local first = here()
			local err = SPEC.error_of(router.consumer("ex"), function() end)
			assert.truthy(err:find("every routing key of exchange 'ex'", 1, true), err)
			assert.truthy(err:find("first at " .. first, 1, true), err)

			router.default_consumer(function() end); first = here()
			err = SPEC.error_of(function()
				router.default_consumer(function() end)
			end); local second = here(-1)
			assert.truthy(err:find("default consumer", 1, true), err)
			assert.truthy(err:find("first at " .. first, 1, true), err)
			assert.truthy(err:find("again at " .. second, 1, true), err)
		end)

		it("allows the same pattern on two exchanges and a failed registration leaves no trace", function()
			local function h() end
			router.consumer("a", "x", h)
			router.consumer("b", "x", h)
			pcall(router.consumer, "a", "x", function() end)
			assert.are.equal(h, router.match("a", "x").fn)
			assert.are.equal(2, #router.routes())
		end)
	end)

	describe("topic matching (RabbitMQ semantics)", function()
		local cases = {
			-- pattern, routing key, matches
			{ "a", "a", true },
			{ "a", "b", false },
			{ "a", "a.b", false },
			{ "a.b", "a.b", true },
			{ "*", "a", true },
			{ "*", "", false },
			{ "*", "a.b", false },
			{ "*.*", "a.b", true },
			{ "*.*", "a", false },
			{ "a.*", "a.b", true },
			{ "a.*", "a", false },
			{ "a.*", "a.b.c", false },
			{ "*.b", "a.b", true },
			{ "*.b", "b", false },
			{ "#", "", true },
			{ "#", "a", true },
			{ "#", "a.b.c", true },
			{ "a.#", "a", true },
			{ "a.#", "a.b", true },
			{ "a.#", "a.b.c", true },
			{ "a.#", "b.a", false },
			{ "#.b", "b", true },
			{ "#.b", "a.b", true },
			{ "#.b", "a.b.c", false },
			{ "a.#.b", "a.b", true },
			{ "a.#.b", "a.x.b", true },
			{ "a.#.b", "a.x.y.b", true },
			{ "a.#.b", "a.x.y", false },
			{ "#.#", "", true },
			{ "#.#", "a.b", true },
			{ "#.*", "", false },
			{ "#.*", "a", true },
			{ "#.*", "a.b.c", true },
			{ "*.#", "a", true },
			{ "*.#", "", false },
			{ "*.*.#", "a", false },
			{ "*.*.#", "a.b", true },
			{ "#.a.#", "a", true },
			{ "#.a.#", "x.a.y", true },
			{ "#.a.#", "x.b.y", false },
			{ "#.a.*.#", "x.a", false },
			{ "#.a.*.#", "x.a.b", true },
			{ "a.*.#.b", "a.x.b", true },
			{ "a.*.#.b", "a.b", false },
			{ "", "", true },
			{ "", "a", false },
			{ "a.", "a.", true },
			{ "a.*", "a.", true }, -- "a." is the words {"a", ""}
			{ "a..b", "a..b", true },
			{ "a.*.b", "a..b", true },
			{ "a*", "ab", false }, -- a wildcard only as a whole word
			{ "a*", "a*", true },
			{ "a#", "a", false },
			{ "a.#", "a.#", true },
			{ "event.*", "event.create", true },
			{ "event.*", "event.create.done", false },
			{ "#.#.#.#.#.#.#.#.#.#.#.#.x", string.rep("a.", 40) .. "y", false },
		}
		for _, c in ipairs(cases) do
			it(string.format("%q %s %q", c[1], c[3] and "matches" or "does not match", c[2]), function()
				assert.are.equal(c[3], router.topic_match(c[1], c[2]))
			end)
		end

		it("routes through the same matcher", function()
			for i, c in ipairs(cases) do
				router.reset()
				local function h() end
				router.consumer("ex" .. i, c[1], h)
				local e = router.match("ex" .. i, c[2])
				assert.are.equal(c[3], e ~= nil and e.fn == h, c[1] .. " vs " .. c[2])
			end
		end)

		it("splits keys into words as RabbitMQ does", function()
			assert.are.same({}, router.split(""))
			assert.are.same({ "a" }, router.split("a"))
			assert.are.same({ "a", "" }, router.split("a."))
			assert.are.same({ "", "a" }, router.split(".a"))
			assert.are.same({ "a", "", "b" }, router.split("a..b"))
		end)
	end)

	describe("precedence", function()
		local function named(name)
			return function() return name end
		end

		it("exact, then patterns, then exchange-wide, then default", function()
			router.default_consumer(named("default"))
			router.consumer("ex")(named("wide"))
			router.consumer("ex", "#")(named("hash"))
			router.consumer("ex", "a.*")(named("star"))
			router.consumer("ex", "a.b")(named("exact"))
			assert.are.equal("exact", router.match("ex", "a.b").fn())
			assert.are.equal("star", router.match("ex", "a.c").fn())
			assert.are.equal("hash", router.match("ex", "z").fn())
			assert.are.equal("default", router.match("other", "a.b").fn())
			router.reset()
			router.consumer("ex")(named("wide"))
			router.consumer("ex", "a.*")(named("star"))
			assert.are.equal("wide", router.match("ex", "z").fn())
		end)

		it("fewer # beats fewer *, which beats more literal words, then registration order", function()
			router.consumer("ex", "#.c")(named("hash1"))
			router.consumer("ex", "a.#.c")(named("hash1-lit2"))
			router.consumer("ex", "*.*.*")(named("star3"))
			router.consumer("ex", "a.*.*")(named("star2"))
			router.consumer("ex", "*.b.*")(named("star2-again"))
			-- a.b.c matches all five: no '#' first, then fewest '*', then more literals, then order
			assert.are.equal("star2", router.match("ex", "a.b.c").fn())
			assert.are.equal("star2-again", router.match("ex", "x.b.c").fn())
			assert.are.equal("star3", router.match("ex", "x.y.z").fn())
			assert.are.equal("hash1-lit2", router.match("ex", "a.c").fn())
			assert.are.equal("hash1", router.match("ex", "c").fn())
		end)

		it("the order of registration does not change the winner", function()
			router.consumer("ex", "a.*")(named("star"))
			router.consumer("ex", "a.#")(named("hash"))
			assert.are.equal("star", router.match("ex", "a.b").fn())
			router.reset()
			router.consumer("ex", "a.#")(named("hash"))
			router.consumer("ex", "a.*")(named("star"))
			assert.are.equal("star", router.match("ex", "a.b").fn())
			assert.are.equal("hash", router.match("ex", "a").fn())
		end)

		it("a pattern added after a lookup still takes its place by precedence", function()
			router.consumer("ex", "#")(named("all"))
			router.consumer("ex", "a.#")(named("hash"))
			assert.are.equal("hash", router.match("ex", "a.b").fn())
			router.consumer("ex", "a.*")(named("star"))
			assert.are.equal("star", router.match("ex", "a.b").fn())
			assert.are.equal("hash", router.match("ex", "a").fn())
			assert.are.equal("all", router.match("ex", "b").fn())
			local ok, err = pcall(router.consumer("ex", "a.*"), named("again"))
			assert.is_false(ok)
			assert.matches("routing key 'a%.%*'", err)
		end)

		it("routes() lists exchanges in order, then precedence, default last", function()
			router.default_consumer(named("d"))
			router.consumer("b")(named("b-wide"))
			router.consumer("b", "#")(named("b-hash"))
			router.consumer("a", "z")(named("a-z"))
			router.consumer("a", "*.x")(named("a-star"))
			router.consumer("a", "m")(named("a-m"))
			local got = {}
			for i, e in ipairs(router.routes()) do
				got[i] = e.fn()
			end
			assert.are.same({ "a-m", "a-z", "a-star", "b-hash", "b-wide", "d" }, got)
			assert.are.same({ "a", "b" }, router.exchanges())
			local text = router.format_routes()
			assert.matches("a  m  %-> %-:", text)
			assert.matches("%(default consumer%)", text)
		end)
	end)

	describe("the match cache", function()
		it("is invalidated by a new registration", function()
			local function d() end
			local function h() end
			router.default_consumer(d)
			assert.are.equal(d, router.match("ex", "a.b").fn)
			router.consumer("ex", "a.*", h)
			assert.are.equal(h, router.match("ex", "a.b").fn)
		end)

		it("caches misses and stays bounded and correct past its limit", function()
			router.consumer("ex", "k.*", function() end)
			for i = 1, 10000 do
				local e = router.match("ex", "k." .. i)
				assert(e and e.pattern == "k.*")
				assert(router.match("ex", "z." .. i) == nil)
			end
		end)

		it("matches fast", function()
			for i = 1, 50 do
				router.consumer("ex", "p" .. i .. ".*.#", function() end)
			end
			router.consumer("ex", "hot.key", function() end)
			local t0 = os.clock()
			for _ = 1, 200000 do
				router.match("ex", "p50.x.y")
			end
			local dt = os.clock() - t0
			assert.is_true(dt < 2, "200k cached matches took " .. dt .. " s")
		end)

		it("holds a bounded number of bytes, whatever the keys' length", function()
			router.consumer("ex", "k.#", function() end)
			collectgarbage("collect")
			local before = collectgarbage("count")
			local pad = string.rep("x", 100 * 1024)
			for i = 1, 200 do -- 20 MB of distinct keys
				local e = router.match("ex", "k." .. i .. pad)
				assert(e and e.pattern == "k.#")
			end
			for i = 1, 3000 do -- short keys: the byte cap, not only the entry count
				assert(router.match("ex", "k." .. i .. string.rep("y", 400)))
			end
			pad = nil
			collectgarbage("collect")
			local grown = collectgarbage("count") - before
			assert.is_true(grown < 2048, "the match cache kept " .. grown .. " KiB")
			-- still correct after the resets
			assert.are.equal("k.#", router.match("ex", "k.1" .. string.rep("x", 300)).pattern)
			assert.is_nil(router.match("other", string.rep("z", 1000)))
		end)
	end)
end)
