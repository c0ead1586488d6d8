---@meta svccomm
-- LuaLS definitions of svccomm's public API (https://luals.github.io/wiki/annotations/).
-- Only for the editor: never loaded at run time. `svccomm init` points .luarc.json here.

---@class svccomm.PermanentError
---@field permanent true
---@field message string
---@field where string|nil   file:line of the permanent_error call

---The message a handler receives as its third argument (and meta.message).
---@class svccomm.Message
---@field exchange string
---@field routing_key string
---@field redelivered boolean|nil
---@field attempt integer|nil        1 for the first delivery
---@field properties table|nil       AMQP properties (message_id, correlation_id, headers, ...)

---The second argument of an event_consumer handler.
---@class svccomm.EventMeta
---@field event_id string|nil
---@field event_time string|number|nil
---@field event_type string
---@field aggregate string|nil
---@field routing_key string
---@field message svccomm.Message|nil

---The second argument of a command_consumer / call_consumer handler.
---@class svccomm.CommandMeta
---@field routing_key string
---@field message svccomm.Message|nil
---@field [string] any

---A raw handler: what message_router.consumer registers.
---@alias svccomm.Handler fun(routing_key: string, body: any, message: svccomm.Message): any
---@alias svccomm.EventHandler fun(payload: any, meta: svccomm.EventMeta): any
---@alias svccomm.CommandHandler fun(arguments: any, meta: svccomm.CommandMeta): any

---@class svccomm.Route
---@field exchange string|nil
---@field pattern string|nil
---@field fn svccomm.Handler
---@field app string|nil
---@field where string
---@field defined string
---@field kind "exact"|"pattern"|"exchange"|"default"
---@field handler_id string

---Routing: which handler takes a message, by exchange and AMQP topic pattern.
---@class svccomm.message_router
local message_router = {}

---Registers fn for (exchange, pattern): `consumer(ex, pat)(fn)`, `consumer(ex, pat, fn)` or
---`consumer(ex)(fn)` (every routing key of the exchange). Returns fn (or a decorator).
---@param exchange string
---@param pattern string|nil
---@param fn svccomm.Handler|nil
---@return fun(fn: svccomm.Handler): svccomm.Handler|svccomm.Handler
function message_router.consumer(exchange, pattern, fn) end

---Registers a call handler for method on exchange (decorator or direct style).
---@param exchange string
---@param method string
---@param handler function|nil
---@return function
function message_router.call_handler(exchange, method, handler) end

---Registers the handler of messages no other handler takes.
---@param fn svccomm.Handler|nil
---@return function
function message_router.default_consumer(fn) end

---The route that takes (exchange, routing_key), or nil.
---@param exchange string
---@param routing_key string
---@return svccomm.Route|nil
function message_router.match(exchange, routing_key) end

---Every registration, in precedence order.
---@return svccomm.Route[]
function message_router.routes() end

---True when an AMQP topic pattern matches a routing key.
---@param pattern string
---@param routing_key string
---@return boolean
function message_router.topic_match(pattern, routing_key) end

---Forgets every registration.
function message_router.reset() end

---@class svccomm.DBError
---@field message string
---@field sqlstate string|nil
---@field detail string|nil
---@field hint string|nil
---@field connection_lost boolean|nil

---@class svccomm.Column
---@field name string
---@field oid integer
---@field type string

---A PostgreSQL connection (db.connect) or the handler's transaction (db.current()).
---@class svccomm.DB
local DB = {}

---Runs one statement; returns rows (tables keyed by column name) and columns.
---@param sql string
---@param ... any   $1, $2, ... (nil / db.null = NULL, tables = JSON)
---@return table[] rows
---@return svccomm.Column[] columns
function DB:query(sql, ...) end

---Runs a statement; returns the number of rows it affected. At the top level of a consumer
---handler with CONSUMER_PIPELINE on, the statement is pipelined and `true` is returned (no
---count; a failure fails the batch, retried one message at a time: README "Pipelined statements").
---@param sql string
---@param ... any
---@return integer|true
function DB:exec(sql, ...) end

---Runs fn(db, ...) between BEGIN and COMMIT (nested: a SAVEPOINT); returns fn's results.
---@generic R
---@param fn fun(db: svccomm.DB, ...): R
---@param ... any
---@return R
function DB:transaction(fn, ...) end

---True inside a transaction of this connection.
---@return boolean
function DB:in_transaction() end

---Closes the connection (a connection of db.connect; the handler's own is the consumer's).
function DB:close() end

---PostgreSQL access, the same inside handlers and in plain Lua programs.
---@class svccomm.db
---@field null lightuserdata  SQL NULL / JSON null
local db = {}

---Connects; returns a db object, or nil, message, sqlstate.
---@param url string   postgresql:// URL or libpq key=value conninfo
---@param opts {application_name: string|nil}|nil
---@return svccomm.DB|nil db
---@return string|nil err
---@return string|nil sqlstate
function db.connect(url, opts) end

---The innermost active transaction (the handler's own, or a db:transaction in progress).
---@return svccomm.DB|nil
function db.current() end

---query() on db.current().
---@param sql string
---@param ... any
---@return table[] rows
---@return svccomm.Column[] columns
function db.query(sql, ...) end

---exec() on db.current() (in a handler with CONSUMER_PIPELINE on: pipelined, returns true).
---@param sql string
---@param ... any
---@return integer|true
function db.exec(sql, ...) end

---transaction() on db.current().
---@generic R
---@param fn fun(db: svccomm.DB, ...): R
---@param ... any
---@return R
function db.transaction(fn, ...) end

---Marks t (default a new table) as a JSON array, so that an empty one encodes as [].
---@param t table|nil
---@return table
function db.array(t) end

---@param v any
---@return string
function db.encode_json(v) end

---Handler logging through svccomm's logger: one line per call, fields as key=value.
---@class svccomm.log
local log = {}

---@param msg string
---@param fields table|nil
function log.debug(msg, fields) end

---@param msg string
---@param fields table|nil
function log.info(msg, fields) end

---@param msg string
---@param fields table|nil
function log.warning(msg, fields) end

---The same as log.warning.
---@param msg string
---@param fields table|nil
function log.warn(msg, fields) end

---@param msg string
---@param fields table|nil
function log.error(msg, fields) end

---@class svccomm.EventSpec
---@field aggregate string
---@field event_type string
---@field payload any|nil
---@field delay number|nil   seconds before it is published

---@class svccomm
---@field VERSION string
---@field message_router svccomm.message_router
---@field db svccomm.db
---@field log svccomm.log
---@field null lightuserdata   JSON null
local svccomm = {}

---Wraps fn(payload, meta) as a handler of event envelopes.
---@param fn svccomm.EventHandler
---@return svccomm.Handler
function svccomm.event_consumer(fn) end

---Wraps fn(arguments, meta) as a handler of commands (expired ones are skipped).
---@param fn svccomm.CommandHandler
---@return svccomm.Handler
function svccomm.command_consumer(fn) end

---Wraps fn(data, meta) as a call handler whose result is sent back to reply_to.
---@param fn svccomm.CommandHandler
---@return svccomm.Handler
function svccomm.call_consumer(fn) end

---Wraps fn(result, meta) as a handler of call responses.
---@param fn svccomm.CommandHandler
---@return svccomm.Handler
function svccomm.call_response_consumer(fn) end

---Registers a call handler for method on exchange (decorator or direct style).
---@param exchange string
---@param method string
---@param handler function|nil
---@return function
function svccomm.call_handler(exchange, method, handler) end

---Raises an error that dead-letters the message at once (no retries).
---@param msg any
---@return nil
function svccomm.permanent_error(msg) end

---True when err was raised by permanent_error.
---@param err any
---@return boolean
function svccomm.is_permanent(err) end

---Writes an event to the outbox in the current transaction: named
---`{aggregate=, event_type=, payload=[, delay=]}` or positional (aggregate, event_type, payload).
---@param aggregate string|svccomm.EventSpec
---@param event_type string|nil
---@param payload any
---@return string|nil event_id
function svccomm.publish_aggregate_event(aggregate, event_type, payload) end

---Writes an event the relay publishes at event_time (a Unix time or an ISO 8601 text).
---@param aggregate string|table
---@param event_type string|nil
---@param event_time number|string|nil
---@param payload any
---@param tags table|nil   for cancel_future_aggregate_event
---@return string|nil event_id
function svccomm.publish_future_aggregate_event(aggregate, event_type, event_time, payload, tags) end

---Cancels scheduled events of (aggregate, event_type) whose tags contain tags.
---@param aggregate string|table
---@param event_type string|nil
---@param tags table|nil
---@return integer cancelled
function svccomm.cancel_future_aggregate_event(aggregate, event_type, tags) end

---Writes a command for service to the outbox.
---@param service string
---@param arguments table|nil
---@param opts {command_name: string, timeout: number|nil, expired_time: number|string|nil}
---@return string|nil row_id
function svccomm.send_command(service, arguments, opts) end

---Writes a call of service.method to the outbox; returns its call id.
---@param service string
---@param method string
---@param data any
---@param opts {reply_to: string|nil, timeout: number|nil, expired_time: number|string|nil}|nil
---@return string call_id
function svccomm.send_call(service, method, data, opts) end

---Sets the correlation id of the messages written next (nil: the incoming one).
---@param id string|nil
function svccomm.set_correlation_id(id) end

---Sets the W3C traceparent of the messages written next.
---@param tp string|nil
function svccomm.set_traceparent(tp) end

---Configures the outbox writes outside a consumer (a plain Lua program).
---@param opts {OUTBOX_TABLE: string|nil, KEY_STYLE: "preserve"|"snake"|nil, WIRE_FORMAT: "svccomm"|"django"|nil, APP_ID: string|nil, MAX_JSON_DEPTH: integer|nil}
function svccomm.configure(opts) end

---Marks t (default a new table) as a JSON array.
---@param t table|nil
---@return table
function svccomm.array(t) end

return svccomm
