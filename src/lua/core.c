/* lua/core: the svccomm.core module and its small helpers. See core.h. */
#include "lua/core.h"

#include <amqp.h>
#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <libpq-fe.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "lua/json_decode.h"
#include "lua/outbox.h"
#include "lua/pg.h"
#include "util/clock.h"
#include "util/ident.h"
#include "util/log.h"
#include "util/secret.h"

/* parse_amqp_url(url) -> {host, port, user, vhost, ssl} | nil, err. The password is
 * deliberately not returned, so it cannot end up in output by accident. */
static int core_parse_amqp_url(lua_State *L)
{
	size_t len;
	const char *url = luaL_checklstring(L, 1, &len);
	char *copy = malloc(len + 1);
	struct amqp_connection_info info;
	int rc;

	if (!copy)
		return luaL_error(L, "out of memory");
	memcpy(copy, url, len + 1);
	amqp_default_connection_info(&info);
	rc = amqp_parse_url(copy, &info);
	if (rc != AMQP_STATUS_OK) {
		free(copy);
		lua_pushnil(L);
		lua_pushstring(L, "not a valid amqp:// or amqps:// URL");
		return 2;
	}
	lua_createtable(L, 0, 5);
	lua_pushstring(L, info.host);
	lua_setfield(L, -2, "host");
	lua_pushinteger(L, info.port);
	lua_setfield(L, -2, "port");
	lua_pushstring(L, info.user);
	lua_setfield(L, -2, "user");
	lua_pushstring(L, info.vhost);
	lua_setfield(L, -2, "vhost");
	lua_pushboolean(L, info.ssl);
	lua_setfield(L, -2, "ssl");
	free(copy);
	return 1;
}

/* parse_conninfo(s) -> true | nil, err: libpq's own parser, for key=value strings and
 * postgresql:// URLs alike. */
static int core_parse_conninfo(lua_State *L)
{
	const char *s = luaL_checkstring(L, 1);
	char *errmsg = NULL;
	PQconninfoOption *opts = PQconninfoParse(s, &errmsg);

	if (!opts) {
		lua_pushnil(L);
		if (errmsg) {
			size_t n = strlen(errmsg);
			while (n && errmsg[n - 1] == '\n')
				n--;
			lua_pushlstring(L, errmsg, n);
			PQfreemem(errmsg);
		} else {
			lua_pushstring(L, "out of memory");
		}
		return 2;
	}
	PQconninfoFree(opts);
	lua_pushboolean(L, 1);
	return 1;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* listdir(path) -> sorted array of entry names (no "." or "..") | nil, err. The names are
 * collected in C first, so the directory is closed before any Lua call that may raise. */
static int core_listdir(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	DIR *d = opendir(path);
	struct dirent *de;
	char **names = NULL, **grown;
	size_t n = 0, cap = 0;

	if (!d) {
		lua_pushnil(L);
		lua_pushfstring(L, "%s: %s", path, strerror(errno));
		return 2;
	}
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			grown = realloc(names, cap * sizeof(*names));
			if (!grown)
				goto oom;
			names = grown;
		}
		names[n] = strdup(de->d_name);
		if (!names[n])
			goto oom;
		n++;
	}
	closedir(d);
	if (n > 0) /* names is NULL for an empty directory: qsort's pointer must not be */
		qsort(names, n, sizeof(*names), cmp_names);
	lua_createtable(L, (int)n, 0);
	for (size_t i = 0; i < n; i++) {
		lua_pushstring(L, names[i]);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return 1;
oom:
	closedir(d);
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return luaL_error(L, "out of memory");
}

static int core_versions(lua_State *L)
{
	lua_createtable(L, 0, 4);
	lua_pushstring(L, SVCCOMM_VERSION);
	lua_setfield(L, -2, "svccomm");
	lua_pushstring(L, LUA_RELEASE);
	lua_setfield(L, -2, "lua");
	lua_pushstring(L, amqp_version());
	lua_setfield(L, -2, "rabbitmq_c");
	lua_pushfstring(L, "%d.%d", PQlibVersion() / 10000, PQlibVersion() % 10000);
	lua_setfield(L, -2, "libpq");
	return 1;
}

/* Runs a util function that writes into a buffer of need bytes and pushes the result. The
 * buffer is a userdata, so nothing leaks if pushing raises. */
static int push_buffered(lua_State *L, size_t need,
                         char *(*fn)(const char *, const char *, char *, size_t), const char *a,
                         const char *b)
{
	char *out = lua_newuserdatauv(L, need, 0);

	fn(a, b, out, need);
	lua_pushstring(L, out);
	lua_remove(L, -2);
	return 1;
}

static char *mask2(const char *url, const char *unused, char *out, size_t outsz)
{
	(void)unused;
	return svc_secret_mask(url, out, outsz);
}

/* mask_secret(url) -> url with every password replaced by "****" (util/secret.h). */
static int core_mask_secret(lua_State *L)
{
	size_t len;
	const char *url = luaL_checklstring(L, 1, &len);

	return push_buffered(L, len + 64, mask2, url, NULL);
}

/* scrub_secret(text, url) -> text without any password of url (util/secret.h). */
static int core_scrub_secret(lua_State *L)
{
	size_t len, ulen;
	const char *text = luaL_checklstring(L, 1, &len);
	const char *url = luaL_checklstring(L, 2, &ulen);

	return push_buffered(L, len + ulen + sizeof(SVC_SECRET_HIDDEN) + 64, svc_secret_scrub, text,
	                     url);
}

/* quote_ident(name) -> "\"schema\".\"name\"" | nil, reason: the one identifier check. */
static int core_quote_ident(lua_State *L)
{
	size_t len;
	const char *name = luaL_checklstring(L, 1, &len);
	char out[SVC_IDENT_QUOTED_MAX], err[160];

	if (strlen(name) != len) { /* a NUL would end the C string early: refuse, never truncate */
		lua_pushnil(L);
		lua_pushliteral(L, "table name contains a NUL byte");
		return 2;
	}
	if (svc_ident_check(name, err, sizeof(err)) < 0 ||
	    svc_ident_quote(name, out, sizeof(out)) < 0) {
		lua_pushnil(L);
		lua_pushstring(L, err);
		return 2;
	}
	lua_pushstring(L, out);
	return 1;
}

/* ---- time and ids ------------------------------------------------------------------- */

/* time() -> seconds since the epoch (float, microseconds) */
static int core_time(lua_State *L)
{
	struct timespec ts = svc_clock_wall();

	lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)(ts.tv_nsec / 1000) / 1e6);
	return 1;
}

/* utc_iso([t]) -> "2024-01-02T03:04:05.123456Z" for t (seconds since the epoch; default now) */
static int core_utc_iso(lua_State *L)
{
	struct timespec ts;
	char buf[40];

	if (lua_isnoneornil(L, 1)) {
		ts = svc_clock_wall();
	} else {
		double t = luaL_checknumber(L, 1), sec;
		long usec;

		if (!isfinite(t) || t < -62135596800.0 || t > 253402300799.0)
			return luaL_argerror(L, 1, "time out of range");
		sec = floor(t);
		usec = lround((t - sec) * 1e6);
		if (usec >= 1000000) {
			sec += 1;
			usec -= 1000000;
		}
		ts.tv_sec = (time_t)sec;
		ts.tv_nsec = usec * 1000;
	}
	if (!svc_clock_iso(ts, 6, buf, sizeof(buf)))
		return luaL_error(L, "time out of range");
	lua_pushstring(L, buf);
	return 1;
}

/* uuid4() -> random UUID string */
static int core_uuid4(lua_State *L)
{
	unsigned char b[16];
	char out[37];
	size_t got = 0;

	while (got < sizeof(b)) {
		ssize_t n = getrandom(b + got, sizeof(b) - got, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return luaL_error(L, "uuid4: getrandom: %s", strerror(errno));
		}
		got += (size_t)n;
	}
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
	snprintf(out, sizeof(out),
	         "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
	         b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
	         b[15]);
	lua_pushstring(L, out);
	return 1;
}

/* ---- logging ------------------------------------------------------------------------ */

#define LOG_MAX_FIELDS 32

static int check_level(lua_State *L, int idx, enum svc_log_level *level)
{
	const char *name = luaL_checkstring(L, idx);

	if (svc_log_parse_level(name, level) < 0 || *level == SVC_LOG_OFF)
		return luaL_argerror(L, idx, "level must be debug, info, warning or error");
	return 0;
}

/* log_enabled(level) -> boolean: whether a line at that level would be written */
static int core_log_enabled(lua_State *L)
{
	enum svc_log_level level;

	check_level(L, 1, &level);
	lua_pushboolean(L, level >= svc_log_threshold);
	return 1;
}

/* log(level, message [, {key1, value1, key2, value2, ...}]): one line through util/log, with
 * the current message's id (set by the consumer around each handler call) as first field. */
static int core_log(lua_State *L)
{
	struct svc_log_field fields[LOG_MAX_FIELDS + 1];
	enum svc_log_level level;
	const char *message;
	size_t n = 0;

	check_level(L, 1, &level);
	message = luaL_checkstring(L, 2);
	if (!lua_isnoneornil(L, 3))
		luaL_checktype(L, 3, LUA_TTABLE);
	if (level < svc_log_threshold)
		return 0;
	lua_settop(L, 3);
	/* The strings stay referenced by the table at index 3 (or the registry entry pushed
	 * here) until svc_log_write_fields returned, and nothing below can raise. */
	if (lua_getfield(L, LUA_REGISTRYINDEX, SVC_LUA_MESSAGE_ID_KEY) == LUA_TSTRING)
		fields[n++] = (struct svc_log_field){"message_id", lua_tostring(L, -1), false};
	if (lua_istable(L, 3)) {
		lua_Integer len = luaL_len(L, 3);

		luaL_checkstack(L, 2 * LOG_MAX_FIELDS, "too many log fields");
		for (lua_Integer i = 1; i + 1 <= len && n < LOG_MAX_FIELDS + 1; i += 2) {
			const char *k, *v;

			lua_geti(L, 3, i);
			lua_geti(L, 3, i + 1);
			k = lua_tostring(L, -2);
			v = lua_tostring(L, -1);
			if (!k || !v)
				return luaL_argerror(L, 3, "fields are strings: key, value, ...");
			fields[n++] = (struct svc_log_field){k, v, false};
		}
	}
	svc_log_write_fields(level, "handler", message, fields, n);
	return 0;
}

/* ---- registration ------------------------------------------------------------------- */

static const luaL_Reg core_funcs[] = {
    {"mask_secret", core_mask_secret},
    {"scrub_secret", core_scrub_secret},
    {"quote_ident", core_quote_ident},
    {"parse_amqp_url", core_parse_amqp_url},
    {"parse_conninfo", core_parse_conninfo},
    {"listdir", core_listdir},
    {"versions", core_versions},
    {"time", core_time},
    {"utc_iso", core_utc_iso},
    {"utc_now_iso", core_utc_iso},
    {"uuid4", core_uuid4},
    {"log", core_log},
    {"log_enabled", core_log_enabled},
    {NULL, NULL},
};

int luaopen_svccomm_core(lua_State *L)
{
	luaL_newlib(L, core_funcs);
	lua_pushstring(L, SVCCOMM_VERSION);
	lua_setfield(L, -2, "VERSION");
	svc_lua_pg_open(L);
	svc_lua_outbox_open(L);
	svc_lua_json_open(L);
	return 1;
}
