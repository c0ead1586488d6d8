--- svccomm.db: a small PostgreSQL API for Lua services, the same inside consumer handlers
--- and in any Lua program.
---
---   local db = require("svccomm.db")
---   local conn = assert(db.connect(os.getenv("DATABASE_URL")))
---   conn:transaction(function(tx)
---     local rows = tx:query("SELECT id, data FROM users WHERE id = $1", 42)
---     tx:exec("UPDATE users SET seen = now() WHERE id = $1", 42)
---     svccomm.publish_aggregate_event("user", "seen", { id = 42 }) -- joins this transaction
---   end)
---
--- Parameters ($1, $2, ...): nil and db.null (= cjson.null) are SQL NULL; booleans, integers,
--- floats and strings as themselves; tables are JSON-encoded (db.encode_json), so a table
--- can be passed to a json/jsonb parameter.
---
--- Results: query() returns rows (an array of tables keyed by column name) and columns
--- ({name=, oid=, type=}). Types: bool -> boolean; int2/int4/int8 -> integer; float4/float8 ->
--- float; numeric -> integer when whole and within 64 bits, else a float (double precision:
--- cast to text in SQL for exact decimals); json/jsonb -> decoded Lua value (JSON null ->
--- db.null; integers within int64 decode as integers, exactly, other numbers as floats;
--- see svccomm.json.decode); timestamps -> text in UTC ("2024-01-02 03:04:05.123456+00", the session runs
--- with TimeZone=UTC); other types -> their text; SQL NULL -> nil (the key is absent).
---
--- Errors raise a table {message=, sqlstate=, detail=, hint=, connection_lost=} whose
--- tostring is "message (SQLSTATE <code>)". connection_lost is also true for SQLSTATE 25006
--- (the server went read-only: no primary any more): connect again, and with several hosts
--- and target_session_attrs=read-write in the URL libpq finds the one that is primary now.
---
--- Transactions: db:transaction(fn, ...) runs fn(db, ...) between BEGIN and COMMIT and returns
--- fn's results; a nested call uses a SAVEPOINT, so an error inside it rolls back only the
--- inner part (and is re-raised: catch it with pcall to go on). An error rolls back and is
--- re-raised unchanged. A transaction function that swallowed a database error (pcall) cannot
--- commit: PostgreSQL aborted the transaction, so it is rolled back and an error with
--- SQLSTATE 25P02 is raised.
---
--- db.current() is the innermost active transaction (its db object): a consumer handler's
--- own transaction, or the innermost db:transaction() in progress. db.query / db.exec /
--- db.transaction as module functions run on it.
local core = require "svccomm.core"
local json = require "svccomm.json"

local M = {}

local type, error, pcall, select, tostring, setmetatable = type, error, pcall, select, tostring, setmetatable
local pairs = pairs
local format, remove = string.format, table.remove
local pack, unpack = table.pack, table.unpack

--- SQL NULL / JSON null (the same value as cjson.null).
M.null = core.null

-- JSON: the encoder of svccomm.json (exact integers, [] for marked empty arrays), re-exported
-- here because parameters and payloads are encoded with it.

--- Mark t (default a new table) as a JSON array, so that an empty one encodes as [] (see
--- svccomm.json.array).
M.array = json.array
M.array_mt = json.array_mt

--- Encode a Lua value as JSON text (see svccomm.json.encode).
M.encode_json = json.encode

local json_decode = json.decode

local function decode_json_columns(rows, cols)
	for c = 1, #cols do
		local col = cols[c]
		if col.type == "json" or col.type == "jsonb" then
			local name = col.name
			for r = 1, #rows do
				local row = rows[r]
				local v = row[name]
				if v ~= nil then
					row[name] = json_decode(v)
				end
			end
		end
	end
end

-- ---------------------------------------------------------------------------------------
-- db objects
-- ---------------------------------------------------------------------------------------

---@class svccomm.DB
---@field conn userdata the svccomm.core connection
local DB = {}
DB.__index = DB
DB.__name = "svccomm.db"

local stack = {} -- active transactions, innermost last
M._stack = stack

local function wrap(conn, owned, host)
	return setmetatable({ conn = conn, _depth = 0, _owned = owned, _host = host }, DB)
end

-- Encodes table parameters as JSON; returns the arguments to pass on.
local function params(...)
	local n = select("#", ...)
	for i = 1, n do
		if type((select(i, ...))) == "table" then
			local args = pack(...)
			for j = i, n do
				if type(args[j]) == "table" then
					args[j] = json.encode(args[j], 128, "parameter $" .. j)
				end
			end
			return unpack(args, 1, n)
		end
	end
	return ...
end

--- Connect. url: a postgresql:// URL or a libpq "key=value" string. opts.application_name
--- names the session (default "svccomm"). Returns a db object, or nil, message, sqlstate.
---@param url string
---@param opts table|nil
---@return svccomm.DB|nil db
---@return string|nil err
---@return string|nil sqlstate
function M.connect(url, opts)
	if type(url) ~= "string" then
		error("svccomm.db.connect: url must be a string, got " .. type(url), 2)
	end
	if opts ~= nil and type(opts) ~= "table" then
		error("svccomm.db.connect: opts must be a table", 2)
	end
	for k in pairs(opts or {}) do -- a typo would silently use the default name
		if k ~= "application_name" then
			error(format("svccomm.db.connect: opts: unknown key %s (known: application_name)",
				tostring(k)), 2)
		end
	end
	local conn, err, st = core.connect(url, opts and opts.application_name)
	if not conn then
		return nil, err, st
	end
	return wrap(conn, true, false)
end

--- Run one statement and return rows, columns (see the module comment for types).
---@param sql string
---@return table[] rows
---@return table[] columns
function DB:query(sql, ...)
	if type(sql) ~= "string" then
		error("query: sql must be a string, got " .. type(sql), 2)
	end
	local rows, cols = self.conn:query(sql, params(...))
	decode_json_columns(rows, cols)
	return rows, cols
end

--- Run a statement and return the number of rows it affected. Without parameters, several
--- statements separated by ';' may be given.
---
--- In a consumer handler's own transaction with CONSUMER_PIPELINE on (and not inside a nested
--- transaction), the statement is pipelined: it returns true at once, without the count, and
--- its result is read later (at the batch's COMMIT, the next query or nested transaction). A
--- failure then does not reach the handler: the batch is rolled back and retried one message
--- at a time, without pipelining, so the failing message meets its error in its handler.
---@param sql string
---@return integer|true
function DB:exec(sql, ...)
	if type(sql) ~= "string" then
		error("exec: sql must be a string, got " .. type(sql), 2)
	end
	if self._pipe and self._depth == 1 then
		return self.conn:send(sql, params(...))
	end
	return self.conn:exec(sql, params(...))
end

local function remove_from_stack(d)
	for i = #stack, 1, -1 do
		if stack[i] == d then
			remove(stack, i)
			return
		end
	end
end

local function aborted_error()
	return core.pg_error(
		"transaction aborted by an earlier database error (caught inside the transaction function): rolled back",
		"25P02")
end

--- Run fn(self, ...) in a transaction (a savepoint when one is already open) and return its
--- results. An error rolls back (to the savepoint) and is re-raised.
---@param fn fun(db: svccomm.DB, ...): ...
---@return ...
function DB:transaction(fn, ...)
	if type(fn) ~= "function" then
		error("transaction: expected a function, got " .. type(fn), 2)
	end
	local conn = self.conn
	local depth = self._depth
	local outer = depth == 0 and conn:transaction_status() == "idle"
	local sp, mark
	if outer then
		conn:exec("BEGIN")
		self._ctx = {}
	else
		sp = "svccomm_sp_" .. (depth + 1)
		-- Outbox rows a consumer handler wrote are kept until the batch commits; those from
		-- before this savepoint are written now, those from inside it are dropped with it.
		mark = conn:_rows_mark()
		conn:exec("SAVEPOINT " .. sp)
		self._ctx = self._ctx or {}
	end
	self._depth = depth + 1
	stack[#stack + 1] = self
	local res = pack(pcall(fn, self, ...))
	remove_from_stack(self)
	self._depth = depth
	if res[1] then
		local ok, err
		if conn:transaction_status() == "inerror" then
			if outer then
				pcall(conn.exec, conn, "ROLLBACK")
			else
				pcall(conn.exec, conn, "ROLLBACK TO SAVEPOINT " .. sp)
				pcall(conn.exec, conn, "RELEASE SAVEPOINT " .. sp)
				conn:_rows_drop(mark)
			end
			ok, err = false, aborted_error()
		elseif outer then
			ok, err = pcall(conn.exec, conn, "COMMIT")
		else
			ok, err = pcall(conn.exec, conn, "RELEASE SAVEPOINT " .. sp)
		end
		if outer then
			self._ctx = nil
		end
		if not ok then
			error(err, 0)
		end
		return unpack(res, 2, res.n)
	end
	if outer then
		pcall(conn.exec, conn, "ROLLBACK")
		self._ctx = nil
	else
		pcall(conn.exec, conn, "ROLLBACK TO SAVEPOINT " .. sp)
		pcall(conn.exec, conn, "RELEASE SAVEPOINT " .. sp)
		conn:_rows_drop(mark)
	end
	error(res[2], 0)
end

--- True while a transaction of this db object is open.
---@return boolean
function DB:in_transaction()
	return self._depth > 0
end

--- Close the connection (not allowed on a consumer handler's lent connection).
function DB:close()
	if self._host then
		error("close: this is the consumer's connection; it is not yours to close", 2)
	end
	remove_from_stack(self)
	self._depth = 0
	self.conn:close()
end

DB.__close = function(self)
	if not self._host then
		self.conn:close()
	end
end

function DB:__tostring()
	return "svccomm.db (" .. tostring(self.conn) .. (self._depth > 0 and ", in transaction" or "") .. ")"
end

-- ---------------------------------------------------------------------------------------
-- the current transaction
-- ---------------------------------------------------------------------------------------

--- The db object of the innermost active transaction, or nil.
---@return svccomm.DB|nil
function M.current()
	return stack[#stack]
end

local function current_or_error(fname)
	local d = stack[#stack]
	if not d then
		error(format("svccomm.db.%s: no transaction: call it inside a consumer handler or db:transaction()", fname), 3)
	end
	return d
end

--- query() on db.current().
---@param sql string
function M.query(sql, ...)
	return current_or_error("query"):query(sql, ...)
end

--- exec() on db.current().
---@param sql string
function M.exec(sql, ...)
	return current_or_error("exec"):exec(sql, ...)
end

--- transaction() on db.current(): a savepoint inside the current transaction.
---@param fn function
function M.transaction(fn, ...)
	return current_or_error("transaction"):transaction(fn, ...)
end

local host_wrappers = setmetatable({}, { __mode = "k" })

--- (for the consumer) the handler's transaction on the lent connection conn starts; pipe:
--- db.exec at its top level pipelines (CONSUMER_PIPELINE).
---@param conn userdata
---@param pipe boolean|nil
function M._enter_host(conn, pipe)
	local d = host_wrappers[conn]
	if not d then
		d = wrap(conn, false, true)
		host_wrappers[conn] = d
	end
	d._depth = 1
	d._pipe = pipe and true or nil
	d._ctx = {}
	stack[#stack + 1] = d
	return d
end

--- (for the consumer) the handler returned: forget its transaction and anything a broken
--- handler left above it.
function M._leave_host()
	for i = #stack, 1, -1 do
		if stack[i]._host then
			for j = #stack, i, -1 do
				local d = stack[j]
				stack[j] = nil
				if d._host then
					d._depth = 0
					d._ctx = nil
					d._pipe = nil
				end
			end
			return
		end
	end
end

return M
