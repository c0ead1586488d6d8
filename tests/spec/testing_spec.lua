-- svccomm.testing itself, on a project written here: commands, calls, scheduled events,
-- cancel, rollback of the outbox, the fake clock, UNROUTED, and svccomm.db without a database.
local testing = require "svccomm.testing"

-- the database of the handlers: SVCCOMM_TEST_DATABASE_URL, else the specs' own database
local DB_URL = os.getenv("SVCCOMM_TEST_DATABASE_URL") or os.getenv("SVCCOMM_DATABASE_URL")

local function write(path, text)
	local f = assert(io.open(path, "w"))
	f:write(text)
	f:close()
end

local function make_project(settings_extra)
	local dir = os.tmpname()
	os.remove(dir)
	assert(os.execute("mkdir -p " .. dir .. "/apps/shop"))
	write(dir .. "/settings.lua", [[return {
  APP_ID = "shop-test", BROKER_CONNECTION_URL = "amqp://localhost/", QUEUE = "shop",
  EXCHANGES = { "orders" }, BINDS = { { "orders", "#" } },
  RETRY_DELAYS = { 2, 20 }, MAX_ATTEMPTS = 3,
]] .. (settings_extra or "") .. "}\n")
	write(dir .. "/apps/shop/consumers.lua", [[
local svccomm = require "svccomm"
local router = svccomm.message_router
router.consumer("orders", "order.placed", svccomm.event_consumer(function(p)
  if p.fail == "transient" then
    svccomm.publish_aggregate_event("orders", "order.noted", { id = p.id })
    error("stock service is down")
  end
  svccomm.publish_future_aggregate_event { aggregate = "orders", event_type = "order.remind",
    event_time = os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(require("svccomm.core").time()) + 3600),
    payload = { id = p.id }, tags = { order = p.id } }
  svccomm.send_command("mailer", { to = p.email }, { command_name = "send", timeout = 60 })
  svccomm.send_call("stock", "reserve", { id = p.id }, { reply_to = "shop" })
end))
router.consumer("orders", "order.cancelled", svccomm.event_consumer(function(p)
  svccomm.cancel_future_aggregate_event("orders", "order.remind", { order = p.id })
end))
router.consumer("orders", "order.audit", svccomm.event_consumer(function()
  svccomm.db.query("SELECT 1")
end))
router.consumer("orders", "order.store", svccomm.event_consumer(function(p)
  svccomm.db.exec("CREATE TABLE IF NOT EXISTS " .. p.table .. " (id int)")
  svccomm.db.exec("INSERT INTO " .. p.table .. " VALUES ($1)", p.id)
  if p.fail then error("after the insert") end
end))
router.consumer("orders", "cmd.ship", svccomm.command_consumer(function(args)
  svccomm.publish_aggregate_event("orders", "order.shipped", { id = args.id })
end))
router.call_handler("orders", "price", svccomm.call_consumer(function(data)
  return { price = data.qty * 3 }
end))
]])
	return dir
end

describe("svccomm.testing", function()
	local t, dir
	before_each(function()
		dir = make_project()
		t = testing.project(dir, { database_url = DB_URL or false })
		t.clock:set("2026-12-01T10:00:00Z")
	end)
	after_each(function()
		t:close()
		os.execute("rm -rf " .. dir)
	end)

	it("captures events, scheduled events, commands and calls as the relay would send them", function()
		local out = t:deliver("orders", "order.placed",
			t:event("orders", "order.placed", { id = 5, email = "a@b" }),
			{ headers = { traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" } })
		assert.are.equal("ok", out.status)
		assert.are.equal(3, #t.outbox)
		local remind, cmd, call = t.outbox[1], t.outbox[2], t.outbox[3]
		assert.are.equal("order.remind", remind.routing_key)
		assert.are.equal("2026-12-01T11:00:00.000000Z", remind.send_after)
		assert.are.same({ order = "5" }, { order = tostring(remind.tags.order) })
		assert.are.equal("mailer", cmd.exchange)
		assert.are.equal("send", cmd.routing_key)
		assert.are.equal("2026-12-01T10:01:00.000000Z", cmd.body.meta.expired_time)
		assert.are.equal("stock", call.exchange)
		assert.are.equal("shop", call.body.meta.replyTo)
		assert.are.equal("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
			cmd.headers.traceparent)
		-- the fake clock drives what is due
		assert.are.same({ cmd, call }, t:due_events())
		t.clock:advance(3600)
		assert.are.equal(3, #t:due_events())
	end)

	it("cancel removes the pending scheduled event", function()
		t:deliver("orders", "order.placed", t:event("orders", "order.placed", { id = 5 }))
		t:deliver("orders", "order.cancelled", t:event("orders", "order.cancelled", { id = 5 }))
		assert.are.equal(0, #t:sent("orders", "order.remind"))
		assert.are.equal(1, t.cancelled[1].count)
	end)

	it("a failing handler is retried with the configured delays and its outbox rows dropped", function()
		local ev = t:event("orders", "order.placed", { id = 5, fail = "transient" })
		local out = t:deliver("orders", "order.placed", ev)
		assert.are.equal("retry", out.status)
		assert.are.equal(2, out.delay)
		assert.matches("^apps/shop/consumers.lua:%d+: stock service is down", out.error)
		assert.are.equal("2", out.headers["x-svccomm-attempt"])
		assert.are.equal(0, #t.outbox)
		assert.are.equal(20, t:deliver("orders", "order.placed", ev, { attempt = 2 }).delay)
		local last = t:deliver("orders", "order.placed", ev, { attempt = 3 })
		assert.are.equal("dead_letter", last.status)
		assert.are.equal("max-attempts", last.headers["x-svccomm-reason"])
		assert.are.equal("3", last.headers["x-svccomm-attempts"])
		assert.matches("apps/shop/consumers.lua", last.headers["x-svccomm-handler"])
	end)

	it("commands expire by the fake clock", function()
		local body = { id = 1, meta = { expired_time = "2026-12-01T10:05:00Z" } }
		assert.are.equal("ok", t:deliver("orders", "cmd.ship", body).status)
		t:reset()
		t.clock:advance(600)
		local out = t:deliver("orders", "cmd.ship", body)
		assert.are.equal("skipped", out.status)
		assert.are.equal(0, #t.outbox)
	end)

	it("a call's response is captured for its reply_to exchange", function()
		local out = t:deliver("orders", "call.price",
			{ callId = "c1", data = { qty = 2 }, meta = { replyTo = "caller" } })
		assert.are.equal("ok", out.status)
		assert.are.equal("caller", t.outbox[1].exchange)
		assert.are.same({ price = 6 }, t.outbox[1].body.data)
	end)

	it("an exchange no handler takes is unrouted, never an error", function()
		local out = t:deliver("nowhere", "x", "not even json")
		assert.are.equal("dead_letter", out.status) -- malformed first, as the consumer decodes first
		out = t:deliver("nowhere", "x", {})
		assert.are.equal("unrouted", out.status)
		assert.are.equal("ack", out.action)
	end)

	it("UNROUTED = dead-letter dead-letters with reason unrouted", function()
		local d2 = make_project('UNROUTED = "dead-letter",\n')
		local t2 = testing.project(d2)
		local out = t2:deliver("nowhere", "x", {})
		assert.are.equal("dead_letter", out.status)
		assert.are.equal("unrouted", out.headers["x-svccomm-reason"])
		t2:close()
		os.execute("rm -rf " .. d2)
	end)

	it("MAX_JSON_DEPTH and KEY_STYLE come from the settings", function()
		local d2 = make_project('MAX_JSON_DEPTH = 3, KEY_STYLE = "snake",\n')
		local t2 = testing.project(d2)
		local out = t2:deliver("orders", "cmd.ship", '{"a":{"b":{"c":{"d":1}}}}')
		assert.are.equal("dead_letter", out.status)
		assert.are.equal("too-deep", out.reason)
		t2:close()
		os.execute("rm -rf " .. d2)
	end)

	it("svccomm.db without SVCCOMM_TEST_DATABASE_URL fails saying how to give one", function()
		t:close()
		t = testing.project(dir, { database_url = false })
		local out = t:deliver("orders", "order.audit", t:event("orders", "order.audit", {}))
		assert.are.equal("retry", out.status)
		assert.matches("SVCCOMM_TEST_DATABASE_URL", out.error)
	end)

	it("svccomm.db runs against SVCCOMM_TEST_DATABASE_URL when given", function()
		if not DB_URL then
			pending("neither SVCCOMM_TEST_DATABASE_URL nor SVCCOMM_DATABASE_URL is set")
			return
		end
		local out = t:deliver("orders", "order.audit", t:event("orders", "order.audit", {}))
		assert.are.equal("ok", out.status)
	end)

	it("a failed handler's writes are rolled back; t:reset() rolls back the test's", function()
		if not DB_URL then
			pending("neither SVCCOMM_TEST_DATABASE_URL nor SVCCOMM_DATABASE_URL is set")
			return
		end
		local tbl = "svccomm_testing_" .. math.random(1, 1e9)
		assert.are.equal("ok", t:deliver("orders", "order.store",
			t:event("orders", "order.store", { table = tbl, id = 1 })).status)
		assert.are.equal("retry", t:deliver("orders", "order.store",
			t:event("orders", "order.store", { table = tbl, id = 2, fail = true })).status)
		assert.are.equal(1, #t.conn:query("SELECT id FROM " .. tbl))
		t:reset()
		assert.are.equal(0, t.conn:query("SELECT count(*) AS n FROM pg_class WHERE relname = $1", tbl)[1].n)
	end)
end)
