-- svccomm.events (the outbox write side) against the real PostgreSQL of SVCCOMM_DATABASE_URL
-- (eval "$(scripts/servers.sh env)"). Each run creates its own outbox table from
-- sql/001_outbox.sql and drops it at the end.
local db = require "svccomm.db"
local events = require "svccomm.events"
local handlers = require "svccomm.handlers"
local core = require "svccomm.core"
local cjson = require "cjson"

local URL = os.getenv("SVCCOMM_DATABASE_URL")
local ROOT = SPEC and SPEC.root or "."

local function connect()
	assert(URL, "SVCCOMM_DATABASE_URL is not set: run eval \"$(scripts/servers.sh env)\" first")
	return assert(db.connect(URL))
end

local create_outbox = SPEC.create_outbox

local ISO = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%dZ$"

describe("svccomm.events", function()
	local d, T
	local name = string.format("w4spec_outbox_%d_%d", os.time(), math.random(1e6))

	setup(function()
		d = connect()
		create_outbox(d, name)
		T = '"' .. name .. '"'
	end)
	teardown(function()
		d:exec("DROP TABLE IF EXISTS " .. T)
		d:exec('DROP FUNCTION IF EXISTS "' .. name .. '_notify"()')
		d:close()
	end)
	before_each(function()
		d:exec("DELETE FROM " .. T)
		events.configure { OUTBOX_TABLE = name, KEY_STYLE = "preserve", APP_ID = "w4spec", MAX_JSON_DEPTH = 128 }
	end)

	local function rows()
		return d:query("SELECT * FROM " .. T .. " ORDER BY id")
	end

	it("ROLLBACK leaves no row; COMMIT leaves exactly one with the exact envelope", function()
		assert.is_false(pcall(d.transaction, d, function()
			events.publish_aggregate_event("user", "update.base", { id = 1 })
			error("rollback")
		end))
		assert.equal(0, #rows())

		local before = core.time()
		local id = d:transaction(function()
			return events.publish_aggregate_event { aggregate = "user", event_type = "update.base", payload = { id = 1, name = "Ann" } }
		end)
		local after = core.time()
		local rs = rows()
		assert.equal(1, #rs)
		local r = rs[1]
		assert.is_string(id)
		assert.equal(tostring(r.id), id)
		assert.equal("user", r.exchange)
		assert.equal("update.base", r.routing_key)
		assert.is_nil(r.message_id)
		assert.is_nil(r.tags)
		local env = cjson.decode(r.body)
		assert.equal(id, env.eventId)
		assert.equal("string", type(env.eventId))
		assert.equal("update.base", env.eventType)
		assert.equal("user", env.aggregate)
		assert.same({ id = 1, name = "Ann" }, env.payload)
		assert.truthy(env.eventTime:match(ISO), env.eventTime)
		local t = handlers.parse_time(env.eventTime)
		assert.is_true(t >= before - 1 and t <= after + 1)
		-- field order of the envelope is fixed
		assert.truthy(r.body:match('^{"eventId":"%d+","eventTime":"[^"]+","eventType":"update.base","aggregate":"user","payload":{'))
	end)

	it("round-trips unicode, nesting, arrays, empty tables and a 1 MB payload", function()
		local big = string.rep("äbc😀", 1024 * 1024 // 8 + 1) -- 8 bytes each
		local payload = {
			s = "Grüße, 世界 \"quoted\" \\ / \n\t",
			nested = { a = { b = { c = { 1, 2.5, true, cjson.null } } } },
			arr = { "x", "y" },
			empty_obj = {},
			empty_arr = events.array(),
			big = big,
			int = 9007199254740993,
		}
		local id = d:transaction(function()
			return events.publish_aggregate_event("agg", "t", payload)
		end)
		local r = rows()[1]
		assert.equal(id, tostring(r.id))
		assert.is_true(#r.body > 1024 * 1024)
		local env = cjson.decode(r.body)
		assert.equal(payload.s, env.payload.s)
		assert.equal(big, env.payload.big)
		assert.same({ 1, 2.5, true, cjson.null }, env.payload.nested.a.b.c)
		assert.same({ "x", "y" }, env.payload.arr)
		assert.truthy(r.body:find('"empty_obj":{}', 1, true))
		assert.truthy(r.body:find('"empty_arr":[]', 1, true))
		assert.truthy(r.body:find('"int":9007199254740993', 1, true))
	end)

	it("outside a transaction fails clearly and writes nothing", function()
		local ok, err = pcall(events.publish_aggregate_event, "user", "x", {})
		assert.is_false(ok)
		assert.truthy(err:find("publish_aggregate_event: no transaction", 1, true))
		assert.truthy(err:find("db:transaction", 1, true))
		assert.is_false(pcall(events.send_command, "svc", {}, { command_name = "c" }))
		assert.is_false(pcall(events.cancel_future_aggregate_event, "user", "x", { a = "1" }))
		assert.equal(0, #rows())
	end)

	it("bad payloads raise before anything is written", function()
		local cyc = {}
		cyc.me = cyc
		local deep = {}
		local cur = deep
		for _ = 1, 200 do
			cur.x = {}
			cur = cur.x
		end
		d:transaction(function()
			for _, p in ipairs({ { n = 0 / 0 }, { f = print }, cyc, deep, { inf = -math.huge } }) do
				local ok, err = pcall(events.publish_aggregate_event, "user", "x", p)
				assert.is_false(ok)
				assert.truthy(err:find("^.-publish_aggregate_event: payload"), err)
			end
			assert.equal("intrans", d.conn:transaction_status())
		end)
		assert.equal(0, #rows())
	end)

	it("inside a handler joins its transaction; a nested failure rolls back only the inner part", function()
		d:exec("BEGIN")
		db._enter_host(d.conn)
		events._set_context { correlation_id = "corr-in", traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" }
		local id1 = events.publish_aggregate_event("user", "outer", { n = 1 })
		assert.is_false(pcall(db.transaction, function()
			events.publish_aggregate_event("user", "inner", { n = 2 })
			error("inner fails")
		end))
		db.transaction(function()
			events.publish_aggregate_event("user", "inner_ok", { n = 3 })
		end)
		events._clear_context()
		db._leave_host()
		d:exec("COMMIT")
		local rs = rows()
		assert.equal(2, #rs)
		assert.equal(id1, tostring(rs[1].id))
		assert.equal("outer", rs[1].routing_key)
		assert.equal("inner_ok", rs[2].routing_key)
		assert.equal("corr-in", rs[1].correlation_id)
		assert.equal("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", rs[1].headers.traceparent)
	end)

	it("set_correlation_id and set_traceparent apply to the current transaction only", function()
		d:transaction(function()
			events.set_correlation_id("c-1")
			events.set_traceparent("00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-00")
			events.publish_aggregate_event("a", "b", {})
		end)
		d:transaction(function()
			events.publish_aggregate_event("a", "b", {})
		end)
		local rs = rows()
		assert.equal("c-1", rs[1].correlation_id)
		assert.equal("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", rs[1].headers.traceparent)
		assert.is_nil(rs[2].correlation_id)
		assert.is_nil(rs[2].headers)
		assert.is_false(pcall(events.set_correlation_id, "x"))
		d:transaction(function()
			assert.is_false(pcall(events.set_traceparent, "not-a-traceparent"))
		end)
	end)

	it("schedules events with their due time; cancel by a tag subset removes exactly the matching rows", function()
		local due = core.time() + 3600
		d:transaction(function()
			events.publish_future_aggregate_event { aggregate = "order", event_type = "remind", event_time = due,
				payload = { o = 1 }, tags = { order = 1, kind = "email" } }
			events.publish_future_aggregate_event("order", "remind", "2030-01-02T03:04:05.5+01:00", { o = 2 },
				{ order = "2", kind = "email" })
			events.publish_future_aggregate_event("order", "remind", due, { o = 3 }, { order = "1", kind = "sms" })
			events.publish_future_aggregate_event("order", "other", due, { o = 4 }, { order = "1", kind = "email" })
		end)
		local rs = d:query("SELECT id, send_after, tags, body, extract(epoch FROM send_after)::float8 AS due FROM " .. T .. " ORDER BY id")
		assert.equal(4, #rs)
		assert.is_true(math.abs(rs[1].due - due) < 1e-5)
		assert.same({ order = "1", kind = "email" }, rs[1].tags)
		assert.equal("2030-01-02 02:04:05.5+00", rs[2].send_after)
		assert.equal("2030-01-02T02:04:05.500000Z", cjson.decode(rs[2].body).eventTime)

		local n = d:transaction(function()
			return events.cancel_future_aggregate_event { aggregate = "order", event_type = "remind", tags = { order = 1 } }
		end)
		assert.equal(2, n)
		local left = {}
		for _, r in ipairs(rows()) do
			left[#left + 1] = cjson.decode(r.body).payload.o
		end
		assert.same({ 2, 4 }, left)

		d:transaction(function()
			local ok, err = pcall(events.cancel_future_aggregate_event, "order", "remind", {})
			assert.is_false(ok)
			assert.truthy(err:find("tags must not be empty"))
			assert.is_false(pcall(events.publish_future_aggregate_event, "order", "remind", "not a time", {}))
		end)
	end)

	it("publish_aggregate_event{delay = s} schedules the event s seconds from now", function()
		local before = core.time()
		d:transaction(function()
			events.publish_aggregate_event { aggregate = "order", event_type = "remind", payload = { o = 1 }, delay = 90 }
			events.publish_aggregate_event { aggregate = "order", event_type = "now", payload = { o = 2 } }
		end)
		local after = core.time()
		local rs = d:query("SELECT body, extract(epoch FROM send_after)::float8 AS due FROM " .. T .. " ORDER BY id")
		assert.is_true(rs[1].due >= before + 90 - 1e-5 and rs[1].due <= after + 90 + 1e-5)
		assert.is_true(rs[2].due <= after + 1e-5)
		local et = cjson.decode(rs[1].body).eventTime
		assert.equal(core.utc_iso(rs[1].due), et)
		d:transaction(function()
			for _, bad in ipairs({ -1, "10", 0 / 0, math.huge }) do
				local ok, err = pcall(events.publish_aggregate_event,
					{ aggregate = "order", event_type = "x", payload = {}, delay = bad })
				assert.is_false(ok)
				assert.truthy(tostring(err):find("delay must be a number of seconds"), tostring(err))
			end
		end)
	end)

	it("send_command validates the expiry and writes the documented body", function()
		d:transaction(function()
			local ok, err = pcall(events.send_command, "billing", { a = 1 }, { command_name = "charge", timeout = 5, expired_time = core.time() + 10 })
			assert.is_false(ok)
			assert.truthy(err:find("not both"))
			ok, err = pcall(events.send_command, "billing", { a = 1 }, { command_name = "charge", expired_time = core.time() - 1 })
			assert.is_false(ok)
			assert.truthy(err:find("in the past"))
			ok, err = pcall(events.send_command, "billing", { a = 1 }, { command_name = "charge", expired_time = "2001-01-01T00:00:00Z" })
			assert.is_false(ok)
			assert.is_false(pcall(events.send_command, "billing", { a = 1 }, { timeout = 5 }))
		end)
		assert.equal(0, #rows())
		local t0 = core.time()
		local id = d:transaction(function()
			events.send_command("billing", { amount = 10, meta = { source = "x" } }, { command_name = "charge", timeout = 60 })
			return events.send_command("billing", { amount = 11 }, { command_name = "refund" })
		end)
		local rs = rows()
		assert.equal(2, #rs)
		assert.equal(id, tostring(rs[2].id))
		assert.equal("billing", rs[1].exchange)
		assert.equal("charge", rs[1].routing_key)
		local b = cjson.decode(rs[1].body)
		assert.equal(10, b.amount)
		assert.equal("x", b.meta.source)
		local exp = handlers.parse_time(b.meta.expired_time)
		assert.truthy(b.meta.expired_time:match(ISO))
		assert.is_true(math.abs(exp - (t0 + 60)) < 2)
		local b2 = cjson.decode(rs[2].body)
		assert.equal(cjson.null, b2.meta.expired_time)
		assert.is_nil(b2.eventId)
	end)

	it("send_call writes the call; call_consumer answers in the handler's transaction", function()
		local call_id = d:transaction(function()
			return events.send_call("calc", "add", { a = 1, b = 2 }, { reply_to = "me", timeout = 30 })
		end)
		local r = rows()[1]
		assert.equal("calc", r.exchange)
		-- the Python library's routing key: the method name
		assert.equal("add", r.routing_key)
		assert.equal(call_id, r.message_id)
		local call = cjson.decode(r.body)
		assert.equal(call_id, call.call_id)
		assert.equal(call_id, call.id)
		assert.equal("me", call.reply_to)
		assert.equal("me", call.meta.replyTo)
		d:exec("DELETE FROM " .. T)

		local handler = handlers.call_consumer(function(data, meta)
			assert.equal("add", meta.method_name)
			assert.equal(call_id, meta.call_id)
			if data.fail then
				error("handler failed")
			end
			return { sum = data.a + data.b }
		end)
		local message = { exchange = "calc" }
		-- success: response written in the handler's transaction
		d:exec("BEGIN")
		db._enter_host(d.conn)
		handler("call.add", call, message)
		db._leave_host()
		d:exec("COMMIT")
		local rs = rows()
		assert.equal(1, #rs)
		assert.equal("me", rs[1].exchange)
		assert.equal("call-response.calc.add", rs[1].routing_key)
		assert.equal(call_id, rs[1].correlation_id)
		local resp = cjson.decode(rs[1].body)
		assert.same({ sum = 3 }, resp.data)
		assert.equal(call_id, resp.call_id)
		d:exec("DELETE FROM " .. T)

		-- handler error: the consumer rolls back, no response
		call.data.fail = true
		d:exec("BEGIN")
		db._enter_host(d.conn)
		assert.is_false(pcall(handler, "call.add", call, message))
		db._leave_host()
		d:exec("ROLLBACK")
		assert.equal(0, #rows())

		-- expired call: not executed
		call.data.fail = nil
		call.meta.expired_time = "2001-01-01T00:00:00.000000Z"
		d:exec("BEGIN")
		db._enter_host(d.conn)
		local status = handler("call.add", call, message)
		db._leave_host()
		d:exec("COMMIT")
		assert.equal("skipped", status)
		assert.equal(0, #rows())

		-- the response consumer hands data and the call's identity
		local got
		local rh = handlers.call_response_consumer(function(data, info)
			got = { data = data, info = info }
		end)
		rh("call-response.calc.add", resp, { exchange = "me" })
		assert.same({ sum = 3 }, got.data)
		assert.equal("calc", got.info.service_name)
		assert.equal("add", got.info.method_name)
		assert.equal(call_id, got.info.call_id)
	end)

	it("call_consumer: a result JSON cannot hold fails the handler and writes no response", function()
		local handler = handlers.call_consumer(function()
			return { x = 0 / 0 }
		end)
		local call = { call_id = "c1", method_name = "add", service_name = "calc", reply_to = "me", data = {} }
		d:exec("BEGIN")
		db._enter_host(d.conn)
		local ok, err = pcall(handler, "call.add", call, {})
		db._leave_host()
		d:exec("ROLLBACK")
		assert.is_false(ok)
		assert.matches("call_consumer: result%.x: NaN or infinity", err)
		assert.equal(0, #rows())
		-- outside a transaction the response cannot be written
		assert.matches("call_consumer: no transaction", select(2, pcall(handlers.call_consumer(function() return 1 end),
			"call.add", call, {})))
	end)

	it("KEY_STYLE snake camelCases outgoing payload keys", function()
		events.configure { KEY_STYLE = "snake" }
		d:transaction(function()
			events.publish_aggregate_event("user", "x", { user_id = 1, first_name = "A", nested_list = { { created_at = 1 } } })
		end)
		local env = cjson.decode(rows()[1].body)
		assert.same({ userId = 1, firstName = "A", nestedList = { { createdAt = 1 } } }, env.payload)
	end)

	it("refuses a dangerous OUTBOX_TABLE before any SQL runs", function()
		local ok, err = pcall(events.configure, { OUTBOX_TABLE = 'outbox"; DROP TABLE x; --' })
		assert.is_false(ok)
		assert.truthy(err:find("OUTBOX_TABLE"))
		assert.equal(name, events.config().OUTBOX_TABLE)
		-- the C layer refuses it too, even when called directly
		d:transaction(function(tx)
			local ok2, err2 = pcall(core.outbox_insert, tx.conn, 'outbox"; DROP TABLE x; --',
				{ exchange = "e", routing_key = "k", body = "{}" })
			assert.is_false(ok2)
			assert.truthy(tostring(err2):find("invalid table name"))
			assert.equal("intrans", tx.conn:transaction_status()) -- nothing was sent
		end)
	end)

	it("uses a schema-qualified outbox table", function()
		d:exec("CREATE SCHEMA IF NOT EXISTS w4spec_schema")
		local f = assert(io.open(ROOT .. "/sql/001_outbox.sql")):read("a")
		local sql = f:gsub("{{outbox}}", '"w4spec_schema"."Out"'):gsub("{{outbox_name}}", "Out"):gsub("{{outbox_prefix}}", '"w4spec_schema".')
		d:exec('DROP TABLE IF EXISTS "w4spec_schema"."Out"')
		d:exec(sql)
		events.configure { OUTBOX_TABLE = "w4spec_schema.Out" }
		local id = d:transaction(function()
			return events.publish_aggregate_event("a", "b", { x = 1 })
		end)
		local r = d:query('SELECT id, body FROM "w4spec_schema"."Out"')[1]
		assert.equal(id, tostring(r.id))
		assert.equal(id, cjson.decode(r.body).eventId)
		d:exec("DROP SCHEMA w4spec_schema CASCADE")
	end)

	it("refuses a zero byte in a name instead of storing what comes before it", function()
		d:transaction(function()
			local calls = {
				function() return events.publish_aggregate_event("a\0evil", "created", {}) end,
				function() return events.publish_aggregate_event("user", "a\0evil", {}) end,
				function() return events.publish_future_aggregate_event("a\0evil", "x", os.time() + 60, {}) end,
				function() return events.cancel_future_aggregate_event("user", "a\0evil", { k = "v" }) end,
				function() return events.send_command("svc\0x", {}, { command_name = "c" }) end,
			}
			for i, f in ipairs(calls) do
				local ok, err = pcall(f)
				assert.is_false(ok, "call " .. i .. " was accepted")
				assert.truthy(tostring(err):find("zero byte", 1, true), err)
			end
			-- the C writer below refuses it too, whoever calls it
			local ok, err = pcall(core.outbox_insert, d.conn, name,
				{ exchange = "a\0evil", routing_key = "k", body_rest = '"x":1' })
			assert.is_false(ok)
			assert.truthy(tostring(err):find("zero byte", 1, true), err)
		end)
		assert.equal(0, #rows())
	end)
end)
