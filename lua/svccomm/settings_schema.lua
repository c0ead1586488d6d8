--- svccomm.settings_schema: the one schema of the settings keys, in reference order: key, type
--- (the text of the README reference), default, the environment variable that overrides it,
--- its checker (svccomm.settings_checks) and its documentation. svccomm.settings loads and
--- validates with it; scripts/settings-reference.lua prints the README table from it.
local C = require "svccomm.settings_checks"

local M = {}

local type, pairs, ipairs, tostring, next = type, pairs, ipairs, tostring, next
local format, concat, sort = string.format, table.concat, table.sort

--- The rows {key, type, default, nullable, env, check, doc}. `nullable`: nil is a valid
--- value (the default is nil). `check` normalizes a value or raises (settings_checks.fail).
--- `env_fields` (a table setting): field -> the environment variable that overrides it.
M.rows = {
	{ key = "APP_ID", type = "string", default = "svccomm",
		-- the relay's message ids are "<APP_ID>:<row id>": ':' and 19 digits must fit in 255
		check = C.string { max = 235 },
		doc = "AMQP app_id of published messages; names this service in logs." },
	{ key = "BROKER_CONNECTION_URL", type = "URL or list", default = "amqp://guest:guest@localhost:5672/%2f",
		check = C.amqp_urls, env = "SVCCOMM_BROKER_URL",
		doc = "RabbitMQ URL (amqp:// or amqps://), or a list of URLs, one per node of a cluster: "
			.. "the first that answers is used, and after a lost connection the next one. Every "
			.. "entry must parse, and amqp:// and amqps:// do not mix. Env SVCCOMM_BROKER_URL "
			.. "overrides (several URLs separated by commas)." },
	{ key = "BROKER_SHUFFLE", type = "boolean", default = false,
		check = C.boolean,
		doc = "Try the nodes of BROKER_CONNECTION_URL in an order shuffled once per process (each "
			.. "--workers worker and each relay draws its own) instead of as listed, to spread "
			.. "connections over a cluster." },
	{ key = "BROKER_TLS", type = "table", default = { verify_peer = true, verify_hostname = true },
		check = C.broker_tls,
		env_fields = { ca_file = "SVCCOMM_BROKER_CA_FILE", cert_file = "SVCCOMM_BROKER_CERT_FILE",
			key_file = "SVCCOMM_BROKER_KEY_FILE" },
		doc = "TLS of an amqps:// URL (an error with amqp://): { ca_file, cert_file, key_file, "
			.. "verify_peer, verify_hostname }. No ca_file = the system store "
			.. "/etc/ssl/certs/ca-certificates.crt; cert_file/key_file = a client certificate "
			.. "(key_file defaults to cert_file). Files must be readable PEM. Env "
			.. "SVCCOMM_BROKER_CA_FILE, SVCCOMM_BROKER_CERT_FILE, SVCCOMM_BROKER_KEY_FILE override "
			.. "the files. Turning verification off logs a warning at every start." },
	{ key = "DATABASE_URL", type = "conninfo", nullable = true,
		check = C.database_url, env = "SVCCOMM_DATABASE_URL",
		doc = "PostgreSQL URL or key=value conninfo; unset = no transactions, no outbox. "
			.. "Env SVCCOMM_DATABASE_URL overrides." },
	{ key = "QUEUE", type = "string", nullable = true,
		check = C.queue,
		doc = "The queue runconsumer consumes from (required by runconsumer); at most 238 bytes "
			.. "of UTF-8, so that <QUEUE>.retry.<ms> fits in 255." },
	{ key = "QUEUE_ARGUMENTS", type = "table", default = {},
		check = C.queue_arguments,
		doc = 'Arguments of QUEUE, e.g. { ["x-queue-type"] = "quorum", '
			.. '["x-quorum-initial-group-size"] = 3 }. A queue that exists with other arguments '
			.. "is an error naming this key: a queue's type cannot change in place." },
	{ key = "RETRY_QUEUE_ARGUMENTS", type = "table", nullable = true,
		check = C.retry_queue_arguments,
		doc = "Arguments of the <QUEUE>.retry.<ms> queues (svccomm sets x-message-ttl and "
			.. "x-dead-letter-*: not allowed here). Unset = follow QUEUE_ARGUMENTS: a quorum "
			.. "QUEUE gets quorum retry queues (same x-quorum-initial-group-size), any other "
			.. "type (streams included) classic ones. A quorum retry queue gets "
			.. 'x-dead-letter-strategy = "at-least-once" and x-overflow = "reject-publish" '
			.. "unless given. Unset, a retry queue that exists with other arguments is used as "
			.. "it is (a warning); set, that is an error naming this key." },
	{ key = "DEAD_LETTER_QUEUE_ARGUMENTS", type = "table", nullable = true,
		check = C.queue_arguments,
		doc = "Arguments of <QUEUE>.dlq. Unset = follow QUEUE_ARGUMENTS as the retry queues do "
			.. "(quorum or classic; an existing DLQ declared otherwise is used as it is, with a "
			.. "warning)." },
	{ key = "EXCHANGES", type = "list", default = {},
		check = C.exchanges,
		doc = 'Exchanges to declare: "name" or {"name", "type"} (type direct|fanout|topic|headers, '
			.. "default topic)." },
	{ key = "BINDS", type = "list", default = {},
		check = C.binds,
		doc = 'Bindings of QUEUE: "exchange" (routing key "#") or {"exchange", "routing_key"}.' },
	{ key = "DO_NOT_DECLARE", type = "boolean", default = false,
		check = C.boolean,
		doc = "Do not declare exchanges, queue and binds; only check they exist." },
	{ key = "INSTALLED_APPS", type = "list", nullable = true,
		check = C.apps,
		doc = "Apps to load (apps/<name>/consumers.lua); unset = every app, sorted by name." },
	{ key = "PREFETCH_COUNT", type = "integer", default = 1000,
		check = C.integer(1, 65535),
		doc = "basic.qos prefetch: unacknowledged messages per consumer (also the largest "
			.. "batch per transaction). Lower it for slow handlers so work spreads across "
			.. "workers and consumers." },
	{ key = "MAX_ATTEMPTS", type = "integer", default = 4,
		check = C.integer(1, 1000),
		doc = "Deliveries of a failing message before it goes to <QUEUE>.dlq." },
	{ key = "RETRY_DELAYS", type = "list of seconds", default = { 1, 10, 60 },
		check = C.retry_delays,
		doc = "Delay before each retry; the last one repeats." },
	{ key = "HANDLER_TIMEOUT", type = "seconds", default = 30,
		check = C.number(0, true),
		doc = "A handler running longer (in Lua or in a database statement, then cancelled) is stopped and counts as failed." },
	{ key = "LUA_MEMORY_LIMIT_MB", type = "integer", default = 64,
		check = C.integer(1, 1048576),
		doc = "Memory cap of the Lua state, in MiB." },
	{ key = "UNROUTED", type = "enum", default = "ack",
		check = C.enum { "ack", "dead-letter" },
		doc = 'A message no handler takes: "ack" (logged at warning) or "dead-letter".' },
	{ key = "KEY_STYLE", type = "enum", default = "preserve",
		check = C.enum { "preserve", "snake" },
		doc = '"snake" converts incoming body keys from camelCase to snake_case.' },
	{ key = "WIRE_FORMAT", type = "enum", default = "svccomm",
		check = C.enum { "svccomm", "django" },
		doc = 'What svccomm writes: "svccomm" (the documented envelope) or "django" (the '
			.. "Python library 2.6's bodies and content type). Both are always read." },
	{ key = "MAX_JSON_DEPTH", type = "integer", default = 128,
		check = C.integer(1, 1000),
		doc = "Deeper JSON bodies are dead-lettered as malformed." },
	{ key = "MAX_MESSAGE_BYTES", type = "integer", default = 8388608,
		check = C.integer(1, 536870912),
		doc = "Larger bodies are dead-lettered without being read." },
	{ key = "INBOX", type = "boolean", default = false,
		check = C.boolean,
		doc = "Record handled message ids and skip duplicates (needs DATABASE_URL)." },
	{ key = "INBOX_TABLE", type = "identifier", default = "svccomm_inbox",
		check = C.identifier,
		doc = "Inbox table name (optionally schema.table)." },
	{ key = "INBOX_RETENTION", type = "seconds", default = 604800,
		check = C.number(0, true),
		doc = "Inbox rows older than this are deleted." },
	{ key = "HEARTBEAT", type = "integer", default = 30,
		check = C.integer(0, 65535),
		doc = "AMQP heartbeat in seconds (0 disables it)." },
	{ key = "SHUTDOWN_TIMEOUT", type = "seconds", default = 30,
		check = C.number(0, false),
		doc = "On SIGTERM, time allowed to finish the handler in progress." },
	{ key = "CONSUMER_COMMIT_INTERVAL", type = "seconds", default = 0.02,
		check = C.number(0, false, 10),
		doc = "Longest wait before committing (and acking) handled messages together." },
	{ key = "CONSUMER_PIPELINE", type = "boolean", default = true,
		check = C.boolean,
		doc = "Pipeline handlers' db.exec statements across the batch (returns true, no count; a late failure retries the batch one message at a time)." },
	{ key = "RECONNECT_MAX_DELAY", type = "seconds", default = 30,
		check = C.number(0, true),
		doc = "Cap of the exponential reconnect backoff." },
	{ key = "OUTBOX_TABLE", type = "identifier", default = "svccomm_outbox",
		check = C.identifier,
		doc = "Outbox table name (optionally schema.table)." },
	{ key = "PUBLISHER_MODE", type = "enum", default = "listen",
		check = C.enum { "listen", "poll" },
		doc = '"listen" sleeps on the outbox table\'s wake lock and wakes on the insert trigger\'s '
			.. 'NOTIFY (and polls as a fallback); "poll" only polls (no LISTEN: PgBouncer in '
			.. 'transaction pooling): pair it with a short PUBLISHER_POLL_INTERVAL (see "Commit '
			.. 'throughput and NOTIFY").' },
	{ key = "PUBLISHER_POLL_INTERVAL", type = "seconds", default = 1,
		check = C.number(0, true),
		doc = "Polling interval of the relay." },
	{ key = "PUBLISHER_BATCH_SIZE", type = "integer", default = 500,
		check = C.integer(1, 100000),
		doc = "Outbox rows claimed per batch (while a backlog lasts, up to 4 times as many, at most half of PUBLISHER_WINDOW)." },
	{ key = "PUBLISHER_WINDOW", type = "integer", default = 2000,
		check = C.integer(1, 1000000),
		doc = "Most published messages awaiting broker confirmation." },
	{ key = "PUBLISHER_UNROUTABLE", type = "enum", default = "keep",
		check = C.enum { "drop", "keep" },
		doc = 'A returned (unroutable) event: "keep" (left in the outbox and published again with a '
			.. 'growing delay up to RECONNECT_MAX_DELAY, until a queue is bound) or "drop" (deleted, '
			.. 'logged at warning with its exchange and routing key). See "Unroutable events and '
			.. 'lost bindings".' },
	{ key = "STATS_INTERVAL", type = "seconds", default = 60,
		check = C.number(0, false),
		doc = "Seconds between stats log lines (0 = off)." },
	{ key = "METRICS_ADDRESS", type = "host:port", nullable = true,
		check = C.host_port, env = "SVCCOMM_METRICS_ADDRESS",
		doc = 'runconsumer and runpublisher serve /metrics (Prometheus), /healthz and /readyz on '
			.. 'this address, e.g. "127.0.0.1:9464"; unset = no listener. An address that cannot '
			.. "be used (malformed, unknown host, port taken) stops the start with exit 2. Env "
			.. "SVCCOMM_METRICS_ADDRESS overrides." },
	{ key = "LOG_LEVEL", type = "enum", default = "info",
		check = C.enum({ "debug", "info", "warning", "error" }, true), env = "SVCCOMM_LOG_LEVEL",
		doc = 'debug, info, warning or error. Env SVCCOMM_LOG_LEVEL overrides.' },
	{ key = "LOG_FORMAT", type = "enum", default = "text",
		check = C.enum { "text", "json" }, env = "SVCCOMM_LOG_FORMAT",
		doc = '"text" (one line per event) or "json" (one JSON object per line, see "Logs"). '
			.. 'Env SVCCOMM_LOG_FORMAT overrides.' },
}

--- The row of each key.
---@type table<string, table>
M.by_key = {}
for _, row in ipairs(M.rows) do
	M.by_key[row.key] = row
end

local function deep_copy(v)
	if type(v) ~= "table" then
		return v
	end
	local out = {}
	for k, val in pairs(v) do
		out[k] = deep_copy(val)
	end
	return out
end

--- A fresh copy of the default of a row (tables included: every load gets its own).
---@param row table
---@return any
function M.default(row)
	return deep_copy(row.default)
end

-- A default as Lua source text ("nil" when unset).
local function render(v)
	if v == nil then
		return "nil"
	end
	if type(v) == "string" then
		return format("%q", v)
	end
	if type(v) == "table" then
		local parts = {}
		for i, x in ipairs(v) do
			parts[i] = render(x)
		end
		if #parts == 0 and next(v) ~= nil then -- a record: its fields by name
			for k in pairs(v) do
				parts[#parts + 1] = k
			end
			sort(parts, function(a, b) return a > b end)
			for i, k in ipairs(parts) do
				parts[i] = format("%s = %s", k, render(v[k]))
			end
		end
		return "{" .. concat(parts, ", ") .. "}"
	end
	return tostring(v)
end

--- The environment variables of a row's fields (`env_fields`), sorted, as one text; nil
--- when it has none.
---@param row table
---@return string|nil
function M.env_names(row)
	if not row.env_fields then
		return nil
	end
	local names = {}
	for _, name in pairs(row.env_fields) do
		names[#names + 1] = name
	end
	sort(names)
	return concat(names, ", ")
end

--- Rows {key, type, default, doc} of the schema, in schema order, for the README reference.
--- `default` is rendered as Lua source text ("nil" when unset); `value` is the raw default.
---@return table[]
function M.reference()
	local out = {}
	for i, row in ipairs(M.rows) do
		out[i] = {
			key = row.key,
			type = row.type,
			default = render(row.default),
			value = deep_copy(row.default),
			doc = row.doc,
			env = row.env or M.env_names(row),
		}
	end
	return out
end

--- The settings keys in schema order.
---@return string[]
function M.keys()
	local out = {}
	for i, row in ipairs(M.rows) do
		out[i] = row.key
	end
	return out
end

return M
