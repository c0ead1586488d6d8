#include "config/config.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/runtime.h"
#include "util/error.h"

/* Scalar settings copied into struct svc_config: key, kind, offset. The schema itself (types,
 * defaults, checks) is lua/svccomm/settings.lua; by the time a value gets here it is valid. */
enum field_kind { F_STRING, F_OPT_STRING, F_INTEGER, F_NUMBER, F_BOOLEAN };

struct field {
	const char *key;
	enum field_kind kind;
	size_t offset;
};

#define FIELD(key, kind, member)                                                                   \
	{                                                                                          \
		key, kind, offsetof(struct svc_config, member)                                     \
	}

static const struct field fields[] = {
    FIELD("_PATH", F_STRING, path),
    FIELD("_DIR", F_STRING, dir),
    FIELD("APP_ID", F_STRING, app_id),
    FIELD("BROKER_SHUFFLE", F_BOOLEAN, broker_shuffle),
    FIELD("DATABASE_URL", F_OPT_STRING, database_url),
    FIELD("QUEUE", F_OPT_STRING, queue),
    FIELD("DO_NOT_DECLARE", F_BOOLEAN, do_not_declare),
    FIELD("PREFETCH_COUNT", F_INTEGER, prefetch_count),
    FIELD("MAX_ATTEMPTS", F_INTEGER, max_attempts),
    FIELD("HANDLER_TIMEOUT", F_NUMBER, handler_timeout),
    FIELD("LUA_MEMORY_LIMIT_MB", F_INTEGER, lua_memory_limit_mb),
    FIELD("UNROUTED", F_STRING, unrouted),
    FIELD("KEY_STYLE", F_STRING, key_style),
    FIELD("WIRE_FORMAT", F_STRING, wire_format),
    FIELD("MAX_JSON_DEPTH", F_INTEGER, max_json_depth),
    FIELD("MAX_MESSAGE_BYTES", F_INTEGER, max_message_bytes),
    FIELD("INBOX", F_BOOLEAN, inbox),
    FIELD("INBOX_TABLE", F_STRING, inbox_table),
    FIELD("INBOX_RETENTION", F_NUMBER, inbox_retention),
    FIELD("HEARTBEAT", F_INTEGER, heartbeat),
    FIELD("SHUTDOWN_TIMEOUT", F_NUMBER, shutdown_timeout),
    FIELD("CONSUMER_COMMIT_INTERVAL", F_NUMBER, consumer_commit_interval),
    FIELD("CONSUMER_PIPELINE", F_BOOLEAN, consumer_pipeline),
    FIELD("RECONNECT_MAX_DELAY", F_NUMBER, reconnect_max_delay),
    FIELD("OUTBOX_TABLE", F_STRING, outbox_table),
    FIELD("PUBLISHER_MODE", F_STRING, publisher_mode),
    FIELD("PUBLISHER_POLL_INTERVAL", F_NUMBER, publisher_poll_interval),
    FIELD("PUBLISHER_BATCH_SIZE", F_INTEGER, publisher_batch_size),
    FIELD("PUBLISHER_WINDOW", F_INTEGER, publisher_window),
    FIELD("PUBLISHER_UNROUTABLE", F_STRING, publisher_unroutable),
    FIELD("STATS_INTERVAL", F_NUMBER, stats_interval),
    FIELD("LOG_LEVEL", F_STRING, log_level),
    FIELD("METRICS_ADDRESS", F_OPT_STRING, metrics_address),
    FIELD("LOG_FORMAT", F_STRING, log_format),
};

/* BROKER_TLS, a table in the normalized settings: its fields, copied into broker_tls. */
static const struct field tls_fields[] = {
    FIELD("ca_file", F_OPT_STRING, broker_tls.ca_file),
    FIELD("cert_file", F_OPT_STRING, broker_tls.cert_file),
    FIELD("key_file", F_OPT_STRING, broker_tls.key_file),
    FIELD("verify_peer", F_BOOLEAN, broker_tls.verify_peer),
    FIELD("verify_hostname", F_BOOLEAN, broker_tls.verify_hostname),
};

/* Copies t[key] (a string) into *out; missing is an error unless optional. */
static int copy_string(lua_State *L, int t, const char *key, bool optional, char **out)
{
	int rc = 0;

	lua_getfield(L, t, key);
	if (lua_isnil(L, -1) && optional)
		*out = NULL;
	else if (lua_type(L, -1) != LUA_TSTRING)
		rc = SVC_ECONFIG;
	else if (!(*out = strdup(lua_tostring(L, -1))))
		rc = SVC_ENOMEM;
	lua_pop(L, 1);
	return rc;
}

static int copy_field(lua_State *L, int t, const struct field *f, struct svc_config *cfg)
{
	char *base = (char *)cfg + f->offset;
	int rc = 0;

	switch (f->kind) {
	case F_STRING:
	case F_OPT_STRING:
		return copy_string(L, t, f->key, f->kind == F_OPT_STRING, (char **)(void *)base);
	case F_INTEGER:
		lua_getfield(L, t, f->key);
		if (lua_isinteger(L, -1))
			*(long *)(void *)base = (long)lua_tointeger(L, -1);
		else
			rc = SVC_ECONFIG;
		break;
	case F_NUMBER:
		lua_getfield(L, t, f->key);
		if (lua_type(L, -1) == LUA_TNUMBER)
			*(double *)(void *)base = lua_tonumber(L, -1);
		else
			rc = SVC_ECONFIG;
		break;
	case F_BOOLEAN:
		lua_getfield(L, t, f->key);
		if (lua_isboolean(L, -1))
			*(bool *)(void *)base = lua_toboolean(L, -1);
		else
			rc = SVC_ECONFIG;
		break;
	}
	lua_pop(L, 1);
	return rc;
}

/* Copies the list t[key] of records {a=..., b=...} into an array of string pairs. */
static int copy_pairs(lua_State *L, int t, const char *key, const char *a, const char *b,
                      char ***out_a, size_t stride, size_t *n_out)
{
	size_t n;
	char *arr;
	int rc = 0;

	lua_getfield(L, t, key);
	if (!lua_istable(L, -1)) {
		lua_pop(L, 1);
		return SVC_ECONFIG;
	}
	n = (size_t)luaL_len(L, -1);
	arr = calloc(n ? n : 1, stride);
	if (!arr) {
		lua_pop(L, 1);
		return SVC_ENOMEM;
	}
	*out_a = (char **)(void *)arr;
	*n_out = n;
	for (size_t i = 0; i < n && rc == 0; i++) {
		char **pair = (char **)(void *)(arr + i * stride);
		int e = (lua_rawgeti(L, -1, (lua_Integer)i + 1), lua_gettop(L));

		rc = copy_string(L, e, a, false, &pair[0]);
		if (rc == 0)
			rc = copy_string(L, e, b, false, &pair[1]);
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
	return rc;
}

/* The queue arguments table settings[key] into *out (n_out entries). */
static int copy_queue_args(lua_State *L, int t, const char *key, struct svc_queue_arg **out,
                           size_t *n_out)
{
	size_t n = 0;
	int rc = 0;

	lua_getfield(L, t, key);
	if (!lua_istable(L, -1)) {
		lua_pop(L, 1);
		return SVC_ECONFIG;
	}
	for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1))
		n++;
	*out = calloc(n ? n : 1, sizeof(**out));
	if (!*out) {
		lua_pop(L, 1);
		return SVC_ENOMEM;
	}
	for (lua_pushnil(L); rc == 0 && lua_next(L, -2); lua_pop(L, 1)) {
		struct svc_queue_arg *qa = &(*out)[*n_out];

		if (lua_type(L, -2) != LUA_TSTRING) {
			rc = SVC_ECONFIG;
			continue;
		}
		if (!(qa->key = strdup(lua_tostring(L, -2)))) {
			rc = SVC_ENOMEM;
			continue;
		}
		(*n_out)++;
		if (lua_isinteger(L, -1)) {
			qa->kind = 'i';
			qa->num = (long long)lua_tointeger(L, -1);
		} else if (lua_isboolean(L, -1)) {
			qa->kind = 'b';
			qa->num = lua_toboolean(L, -1);
		} else if (lua_type(L, -1) == LUA_TSTRING) {
			qa->kind = 's';
			if (!(qa->str = strdup(lua_tostring(L, -1))))
				rc = SVC_ENOMEM;
		} else {
			rc = SVC_ECONFIG;
		}
	}
	if (rc != 0)
		lua_pop(L, 1); /* the key lua_next left */
	lua_pop(L, 1);
	return rc;
}

/* BROKER_CONNECTION_URL: a string (one node) or a list of strings. */
static int copy_urls(lua_State *L, int t, struct svc_config *cfg)
{
	size_t n = 1;
	int rc = 0;

	lua_getfield(L, t, "BROKER_CONNECTION_URL");
	if (lua_istable(L, -1))
		n = (size_t)luaL_len(L, -1);
	else if (lua_type(L, -1) != LUA_TSTRING)
		n = 0;
	if (n == 0) {
		lua_pop(L, 1);
		return SVC_ECONFIG;
	}
	cfg->broker_urls = calloc(n, sizeof(*cfg->broker_urls));
	if (!cfg->broker_urls) {
		lua_pop(L, 1);
		return SVC_ENOMEM;
	}
	for (size_t i = 0; i < n && rc == 0; i++) {
		if (lua_istable(L, -1))
			lua_rawgeti(L, -1, (lua_Integer)i + 1);
		else
			lua_pushvalue(L, -1);
		if (lua_type(L, -1) != LUA_TSTRING)
			rc = SVC_ECONFIG;
		else if (!(cfg->broker_urls[i] = strdup(lua_tostring(L, -1))))
			rc = SVC_ENOMEM;
		else
			cfg->n_broker_urls = i + 1;
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
	if (rc == 0 && !(cfg->broker_url = strdup(cfg->broker_urls[0])))
		rc = SVC_ENOMEM;
	return rc;
}

static int copy_tls(lua_State *L, int t, struct svc_config *cfg)
{
	int rc = 0;

	lua_getfield(L, t, "BROKER_TLS");
	if (!lua_istable(L, -1)) {
		lua_pop(L, 1);
		return SVC_ECONFIG;
	}
	for (size_t i = 0; i < sizeof(tls_fields) / sizeof(tls_fields[0]) && rc == 0; i++)
		rc = copy_field(L, lua_gettop(L), &tls_fields[i], cfg);
	lua_pop(L, 1);
	return rc;
}

/* A copy of settings._SOURCES[key] (see lua/svccomm/settings.lua), or NULL. */
static char *source_of(lua_State *L, int t, const char *key)
{
	char *out = NULL;

	lua_getfield(L, t, "_SOURCES");
	if (lua_istable(L, -1)) {
		lua_getfield(L, -1, key);
		if (lua_type(L, -1) == LUA_TSTRING)
			out = strdup(lua_tostring(L, -1));
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
	return out;
}

/* Whether key kept its default (development commands choose other defaults then). */
static bool is_default(lua_State *L, int t, const char *key)
{
	char *src = source_of(L, t, key);
	bool yes = src && strcmp(src, "default") == 0;

	free(src);
	return yes;
}

static int copy_delays(lua_State *L, int t, struct svc_config *cfg)
{
	size_t n;

	lua_getfield(L, t, "RETRY_DELAYS");
	if (!lua_istable(L, -1)) {
		lua_pop(L, 1);
		return SVC_ECONFIG;
	}
	n = (size_t)luaL_len(L, -1);
	cfg->retry_delays = calloc(n ? n : 1, sizeof(double));
	if (!cfg->retry_delays) {
		lua_pop(L, 1);
		return SVC_ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		lua_rawgeti(L, -1, (lua_Integer)i + 1);
		cfg->retry_delays[i] = lua_tonumber(L, -1);
		lua_pop(L, 1);
	}
	cfg->n_retry_delays = n;
	lua_pop(L, 1);
	return 0;
}

/* require("svccomm.host").load_settings(path): validates with lua/svccomm/settings.lua and
 * configures the other Lua modules. */
static int load_settings(lua_State *L)
{
	const char *path = lua_tostring(L, 1);

	lua_getglobal(L, "require");
	lua_pushliteral(L, "svccomm.host");
	lua_call(L, 1, 1);
	lua_getfield(L, -1, "load_settings");
	lua_pushstring(L, path);
	lua_call(L, 1, 1);
	return 1;
}

/* Runs load_settings(path) and leaves the settings table on the stack; a settings error is
 * SVC_ECONFIG with its message in err. The error of settings.lua is the user's, not a bug:
 * Lua's pcall catches it, so it comes back as the message alone, without the traceback that
 * svc_lua_pcall() adds to an error that escapes. */
static int run_load_settings(lua_State *L, const char *path, char *err, size_t errsz)
{
	struct svc_runtime *rt = svc_runtime_of(L);

	if (!rt) {
		snprintf(err, errsz, "settings: not a state of svc_runtime_new()");
		return SVC_EINVAL;
	}
	lua_getglobal(L, "pcall");
	lua_pushcfunction(L, load_settings);
	lua_pushstring(L, path);
	if (svc_lua_pcall(rt, 2, 2, 0) != SVC_LUA_OK) {
		svc_lua_error_text(L, err, errsz);
		return SVC_ECONFIG;
	}
	if (!lua_toboolean(L, -2)) {
		snprintf(err, errsz, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
		lua_pop(L, 2);
		return SVC_ECONFIG;
	}
	lua_remove(L, -2);
	return 0;
}

int svc_config_load(lua_State *L, const char *path, struct svc_config *cfg, char *err, size_t errsz)
{
	int top = lua_gettop(L), t, rc = 0;
	const char *bad = NULL;

	memset(cfg, 0, sizeof(*cfg));
	if ((rc = run_load_settings(L, path, err, errsz)) < 0) {
		lua_settop(L, top);
		return rc;
	}
	t = lua_gettop(L);
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]) && rc == 0; i++) {
		rc = copy_field(L, t, &fields[i], cfg);
		bad = fields[i].key;
	}
	if (rc == 0) { /* for error lines that must say which database, and why that one */
		cfg->database_url_source = source_of(L, t, "DATABASE_URL");
		cfg->log_level_default = is_default(L, t, "LOG_LEVEL");
		cfg->retry_delays_default = is_default(L, t, "RETRY_DELAYS");
		cfg->retry_queue_args_default = is_default(L, t, "RETRY_QUEUE_ARGUMENTS");
		cfg->dlq_args_default = is_default(L, t, "DEAD_LETTER_QUEUE_ARGUMENTS");
	}
	if (rc == 0) {
		bad = "EXCHANGES";
		rc =
		    copy_pairs(L, t, "EXCHANGES", "name", "type", (char ***)(void *)&cfg->exchanges,
		               sizeof(*cfg->exchanges), &cfg->n_exchanges);
	}
	if (rc == 0) {
		bad = "BINDS";
		rc = copy_pairs(L, t, "BINDS", "exchange", "routing_key",
		                (char ***)(void *)&cfg->binds, sizeof(*cfg->binds), &cfg->n_binds);
	}
	if (rc == 0) {
		bad = "QUEUE_ARGUMENTS";
		rc = copy_queue_args(L, t, bad, &cfg->queue_args, &cfg->n_queue_args);
	}
	if (rc == 0) {
		bad = "RETRY_QUEUE_ARGUMENTS";
		rc = copy_queue_args(L, t, bad, &cfg->retry_queue_args, &cfg->n_retry_queue_args);
	}
	if (rc == 0) {
		bad = "DEAD_LETTER_QUEUE_ARGUMENTS";
		rc = copy_queue_args(L, t, bad, &cfg->dlq_args, &cfg->n_dlq_args);
	}
	if (rc == 0) {
		bad = "RETRY_DELAYS";
		rc = copy_delays(L, t, cfg);
	}
	if (rc == 0) {
		bad = "BROKER_CONNECTION_URL";
		rc = copy_urls(L, t, cfg);
	}
	if (rc == 0) {
		bad = "BROKER_TLS";
		rc = copy_tls(L, t, cfg);
	}
	lua_settop(L, top);
	if (rc != 0) {
		snprintf(err, errsz, "%s: %s: %s", path, bad,
		         rc == SVC_ENOMEM ? "out of memory" : "not in the normalized form");
		svc_config_release(cfg);
		return rc == SVC_ENOMEM ? SVC_ENOMEM : SVC_ECONFIG;
	}
	return 0;
}

static void free_queue_args(struct svc_queue_arg *args, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(args[i].key);
		free(args[i].str);
	}
	free(args);
}

void svc_config_release(struct svc_config *cfg)
{
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
		if (fields[i].kind == F_STRING || fields[i].kind == F_OPT_STRING)
			free(*(char **)(void *)((char *)cfg + fields[i].offset));
	}
	for (size_t i = 0; i < cfg->n_exchanges; i++) {
		free(cfg->exchanges[i].name);
		free(cfg->exchanges[i].type);
	}
	free(cfg->database_url_source);
	free(cfg->broker_url);
	for (size_t i = 0; i < cfg->n_broker_urls; i++)
		free(cfg->broker_urls[i]);
	free(cfg->broker_urls);
	free(cfg->exchanges);
	for (size_t i = 0; i < cfg->n_binds; i++) {
		free(cfg->binds[i].exchange);
		free(cfg->binds[i].routing_key);
	}
	free(cfg->binds);
	free_queue_args(cfg->queue_args, cfg->n_queue_args);
	free_queue_args(cfg->retry_queue_args, cfg->n_retry_queue_args);
	free_queue_args(cfg->dlq_args, cfg->n_dlq_args);
	free(cfg->retry_delays);
	for (size_t i = 0; i < sizeof(tls_fields) / sizeof(tls_fields[0]); i++) {
		if (tls_fields[i].kind == F_OPT_STRING)
			free(*(char **)(void *)((char *)cfg + tls_fields[i].offset));
	}
	memset(cfg, 0, sizeof(*cfg));
}
