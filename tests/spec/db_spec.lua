-- svccomm.db against the real PostgreSQL of SVCCOMM_DATABASE_URL
-- (eval "$(scripts/servers.sh env)"); its JSON encoder is svccomm.json (json_spec.lua).
local db = require "svccomm.db"
local cjson = require "cjson"

local URL = os.getenv("SVCCOMM_DATABASE_URL")

local function connect()
	assert(URL, "SVCCOMM_DATABASE_URL is not set: run eval \"$(scripts/servers.sh env)\" first")
	return assert(db.connect(URL))
end

describe("svccomm.db JSON", function()
	it("encodes parameters and payloads with svccomm.json", function()
		local json = require "svccomm.json"
		assert.equal(json.encode, db.encode_json)
		assert.equal(json.array, db.array)
		assert.equal(json.array_mt, db.array_mt)
		assert.equal(json.null, db.null)
	end)
end)

describe("svccomm.db with PostgreSQL", function()
	local d

	before_each(function()
		d = connect()
	end)
	after_each(function()
		if d then
			pcall(d.close, d)
		end
	end)

	it("takes several hosts: libpq tries them in order and keeps the read-write one", function()
		-- host 127.0.0.1:1 refuses; the test server is the primary
		local userinfo, hostport, rest = URL:match("^postgresql://([^@]+)@([^/]+)(/[^?]*)")
		assert(userinfo, "SVCCOMM_DATABASE_URL is not a postgresql://user@host:port/db URL")
		local two = string.format("postgresql://%s@127.0.0.1:1,%s%s?target_session_attrs=read-write",
			userinfo, hostport, rest)
		local c = assert(db.connect(two))
		local rows = c:query("SELECT pg_is_in_recovery() AS standby, current_setting('port') AS port")
		assert.is_false(rows[1].standby)
		assert.equal(hostport:match(":(%d+)$"), rows[1].port)
		c:close()
	end)

	it("marks a read-only server's error (SQLSTATE 25006) as a lost connection", function()
		d:exec("SET default_transaction_read_only = on")
		local ok, err = pcall(d.exec, d, "CREATE TEMP TABLE ro_check (a int)")
		assert.is_false(ok)
		assert.equal("25006", err.sqlstate)
		assert.is_true(err.connection_lost) -- reconnect: with target_session_attrs=read-write
		-- db.connect finds whichever host is the primary now
	end)

	it("fails to connect with a message and SQLSTATE, never the password", function()
		local c, err, st = db.connect("postgresql://someone:s3cr3tpw@127.0.0.1:1/x")
		assert.is_nil(c)
		assert.is_string(err)
		assert.is_nil(err:find("s3cr3tpw", 1, true))
		assert.equal("08001", st)
	end)

	it("maps column types", function()
		local rows, cols = d:query([[SELECT 1::int2 AS i2, 2::int4 AS i4, 9223372036854775807::int8 AS i8,
			1.5::float4 AS f4, 0.1::float8 AS f8, 'NaN'::float8 AS fnan, 'Infinity'::float8 AS finf,
			42::numeric AS nint, 12.25::numeric AS nfrac, true AS b, false AS bf, 'héllo'::text AS t,
			'{"a":[1,2,{"b":null}],"c":"d"}'::jsonb AS jb, '[]'::json AS j,
			'2024-01-02 03:04:05.123456+02'::timestamptz AS ts, NULL::int AS n,
			'2024-01-02'::date AS dt, '\x0102'::bytea AS bin]])
		local r = rows[1]
		assert.equal(1, #rows)
		assert.equal(1, r.i2)
		assert.equal("integer", math.type(r.i2))
		assert.equal(2, r.i4)
		assert.equal(math.maxinteger, r.i8)
		assert.equal(1.5, r.f4)
		assert.equal(0.1, r.f8)
		assert.is_true(r.fnan ~= r.fnan)
		assert.equal(math.huge, r.finf)
		assert.equal(42, r.nint)
		assert.equal("integer", math.type(r.nint))
		assert.equal(12.25, r.nfrac)
		assert.is_true(r.b)
		assert.is_false(r.bf)
		assert.equal("héllo", r.t)
		assert.same({ 1, 2, { b = cjson.null } }, r.jb.a)
		assert.equal("d", r.jb.c)
		assert.same({}, r.j)
		assert.equal("2024-01-02 01:04:05.123456+00", r.ts)
		assert.is_nil(r.n)
		assert.equal("2024-01-02", r.dt)
		assert.equal("\\x0102", r.bin)
		assert.equal("i2", cols[1].name)
		assert.equal("int2", cols[1].type)
		assert.equal("jsonb", cols[13].type)
		assert.equal(18, #cols)
	end)

	it("passes parameters: nil, null, booleans, numbers, strings, tables as JSON", function()
		local rows = d:query([[SELECT $1::int AS a, $2::text AS b, $3::bool AS c, $4::int8 AS d,
			$5::float8 AS e, $6::text AS f, $7::jsonb AS g, $8::bool AS h]],
			nil, db.null, true, math.mininteger, 0.1 + 0.2, "ünï\n'\"", { k = { 1, 2 }, e = db.array() }, false)
		local r = rows[1]
		assert.is_nil(r.a)
		assert.is_nil(r.b)
		assert.is_true(r.c)
		assert.equal(math.mininteger, r.d)
		assert.equal(0.1 + 0.2, r.e)
		assert.equal("ünï\n'\"", r.f)
		assert.same({ 1, 2 }, r.g.k)
		assert.same({}, r.g.e)
		assert.is_false(r.h)
	end)

	it("refuses parameters that are not values", function()
		assert.truthy(select(2, pcall(d.query, d, "SELECT $1", print)):find("cannot be a SQL parameter"))
		assert.truthy(select(2, pcall(d.query, d, "SELECT $1::text", "a\0b")):find("zero byte"))
	end)

	it("binds floats in their shortest round-trip form: 19.99 stays 19.99 in a numeric column", function()
		d:exec("CREATE TEMP TABLE t_float_param (id int, amount numeric)")
		local values = { 19.99, 0.1, 0.1 + 0.2, 1 / 3, 1e21, -2.5, 3.0, 42, 1e-7 }
		for i, v in ipairs(values) do
			d:exec("INSERT INTO t_float_param VALUES ($1, $2)", i, v)
		end
		local rows = d:query("SELECT id, amount::text AS a FROM t_float_param ORDER BY id")
		local texts = {}
		for i, r in ipairs(rows) do
			texts[i] = r.a
		end
		assert.same({ "19.99", "0.1", "0.30000000000000004", "0.3333333333333333", "1000000000000000000000",
			"-2.5", "3", "42", "0.0000001" }, texts)
		for i, r in ipairs(d:query("SELECT id, amount::float8 AS f FROM t_float_param ORDER BY id")) do
			assert.equal(values[i], r.f)
		end
		local nan = d:query("SELECT $1::numeric::text AS n, $2::float8 AS inf", 0 / 0, -math.huge)[1]
		assert.equal("NaN", nan.n)
		assert.equal(-math.huge, nan.inf)
	end)

	it("raises errors carrying the SQLSTATE", function()
		local ok, err = pcall(d.query, d, "SELECT * FROM svccomm_no_such_table")
		assert.is_false(ok)
		assert.equal("42P01", err.sqlstate)
		assert.truthy(err.message:find("svccomm_no_such_table"))
		assert.equal(err.message .. " (SQLSTATE 42P01)", tostring(err))
		local ok2, err2 = pcall(d.query, d, "SELECT 1/0")
		assert.is_false(ok2)
		assert.equal("22012", err2.sqlstate)
		assert.is_false(err2.connection_lost)
	end)

	it("exec returns the affected count and runs several statements without parameters", function()
		assert.equal(3, d:exec("CREATE TEMP TABLE t_exec (a int); INSERT INTO t_exec VALUES (1), (2), (3)"))
		assert.equal(2, d:exec("UPDATE t_exec SET a = a * 10 WHERE a >= $1", 2))
		assert.equal(0, d:exec("DELETE FROM t_exec WHERE a = $1", 999))
	end)

	describe("transactions", function()
		before_each(function()
			d:exec("CREATE TEMP TABLE t_tx (a int)")
		end)
		local function values()
			local out = {}
			for _, r in ipairs(d:query("SELECT a FROM t_tx ORDER BY a")) do
				out[#out + 1] = r.a
			end
			return out
		end

		it("commits and returns the function's results", function()
			local x, y = d:transaction(function(tx, p)
				assert.equal(d, tx)
				assert.equal(d, db.current())
				assert.equal("intrans", tx.conn:transaction_status())
				tx:exec("INSERT INTO t_tx VALUES ($1)", p)
				return "r1", 2
			end, 7)
			assert.equal("r1", x)
			assert.equal(2, y)
			assert.same({ 7 }, values())
			assert.is_nil(db.current())
			assert.equal("idle", d.conn:transaction_status())
		end)

		it("rolls back on error and re-raises the same error value", function()
			local e = { custom = true }
			local ok, err = pcall(d.transaction, d, function(tx)
				tx:exec("INSERT INTO t_tx VALUES (1)")
				error(e)
			end)
			assert.is_false(ok)
			assert.equal(e, err)
			assert.same({}, values())
			assert.is_nil(db.current())
		end)

		it("nested calls use savepoints: an inner failure rolls back only the inner part", function()
			d:transaction(function(tx)
				tx:exec("INSERT INTO t_tx VALUES (1)")
				local ok, err = pcall(tx.transaction, tx, function()
					tx:exec("INSERT INTO t_tx VALUES (2)")
					tx:query("SELECT 1/0")
				end)
				assert.is_false(ok)
				assert.equal("22012", err.sqlstate)
				assert.equal("intrans", tx.conn:transaction_status())
				db.transaction(function() -- module function: runs on db.current()
					db.exec("INSERT INTO t_tx VALUES (3)")
				end)
			end)
			assert.same({ 1, 3 }, values())
		end)

		it("refuses to commit after a swallowed database error", function()
			local ok, err = pcall(d.transaction, d, function(tx)
				tx:exec("INSERT INTO t_tx VALUES (1)")
				pcall(tx.query, tx, "SELECT 1/0")
			end)
			assert.is_false(ok)
			assert.equal("25P02", err.sqlstate)
			assert.same({}, values())
		end)

		it("module functions without a transaction raise a clear error", function()
			local ok, err = pcall(db.query, "SELECT 1")
			assert.is_false(ok)
			assert.truthy(err:find("svccomm.db.query: no transaction: call it inside a consumer handler or db:transaction()", 1, true))
			assert.truthy(select(2, pcall(db.exec, "SELECT 1")):find("svccomm.db.exec: no transaction", 1, true))
		end)

		it("tracks the innermost transaction across db objects", function()
			local d2 = connect()
			d:transaction(function()
				assert.equal(d, db.current())
				d2:transaction(function()
					assert.equal(d2, db.current())
					d:transaction(function()
						assert.equal(d, db.current())
					end)
					assert.equal(d2, db.current())
				end)
				assert.equal(d, db.current())
			end)
			d2:close()
		end)
	end)

	it("lends a host connection: handler transaction, savepoints, cannot close it", function()
		d:exec("CREATE TEMP TABLE t_host (a int)")
		d:exec("BEGIN") -- what the consumer does before calling the handler
		local h = db._enter_host(d.conn)
		assert.equal(h, db.current())
		db.exec("INSERT INTO t_host VALUES (1)")
		assert.is_false(pcall(db.transaction, function()
			db.exec("INSERT INTO t_host VALUES (2)")
			error("inner")
		end))
		assert.truthy(select(2, pcall(h.close, h)):find("not yours to close"))
		-- a broken handler may leave entries above the host: leave_host clears them
		table.insert(db._stack, d)
		db._leave_host()
		assert.is_nil(db.current())
		d:exec("COMMIT")
		local rows = d:query("SELECT a FROM t_host ORDER BY a")
		assert.equal(1, #rows)
		assert.equal(1, rows[1].a)
	end)

	it("a pipelining host's exec returns true at its top level, the count when nested", function()
		d:exec("CREATE TEMP TABLE t_pipe (a int PRIMARY KEY)")
		d:exec("BEGIN")
		db._enter_host(d.conn, true)
		-- this connection is not the consumer's: conn:send runs the statement at once
		assert.is_true(db.exec("INSERT INTO t_pipe VALUES ($1)", 1))
		assert.is_true(db.exec("INSERT INTO t_pipe VALUES (2); INSERT INTO t_pipe VALUES (3)"))
		assert.equal(3, db.query("SELECT count(*) AS c FROM t_pipe")[1].c)
		assert.equal(1, db.transaction(function()
			return db.exec("INSERT INTO t_pipe VALUES ($1)", 4)
		end))
		local ok, err = pcall(db.exec, "INSERT INTO t_pipe VALUES (1)")
		assert.is_false(ok)
		assert.equal("23505", err.sqlstate)
		db._leave_host()
		d:exec("ROLLBACK")
		-- without pipelining (CONSUMER_PIPELINE = false), exec returns the count
		d:exec("BEGIN")
		db._enter_host(d.conn, false)
		assert.equal(1, db.exec("INSERT INTO t_pipe VALUES ($1)", 1))
		db._leave_host()
		d:exec("ROLLBACK")
	end)

	it("closes: later use raises, close is idempotent", function()
		d:close()
		assert.truthy(tostring(select(2, pcall(d.query, d, "SELECT 1"))):find("connection is closed"))
		d.conn:close()
		d = nil
	end)
end)
