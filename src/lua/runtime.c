/* lua/runtime: the lua_State, its allocator and every call into it. See runtime.h. */
#include "lua/runtime.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/cjson_bounded.h"
#include "lua/core.h"
#include "lua/embedded.h"
#include "lua/modpath.h"
#include "util/clock.h"
#include "util/error.h"

/* How many VM instructions run between two deadline checks: small enough to stop a runaway
 * loop within a millisecond or so, large enough to cost nothing measurable. */
#define HOOK_INSTRUCTIONS 10000
/* How long turning an error object into text may run (its __tostring or __index is the
 * application's code, which may loop). */
#define ERROR_TEXT_TIMEOUT_S 0.5

/* Lua's small blocks, kept for reuse. Every message allocates and frees the same few dozen
 * small blocks (its strings, the decoded body's tables and their parts, the message table),
 * and the generational collector frees them in bursts a little later. Lua tells the allocator
 * the size of each block it frees, so a freed block of up to SMALL_MAX bytes goes on the list
 * of its 16-byte size class and the next allocation of that class takes it back: a pointer
 * pop instead of a trip through malloc and free. Blocks come from malloc at their class's full
 * size; at most CACHE_MAX bytes wait on the lists, the rest go back to free(). Under
 * AddressSanitizer nothing is kept, so a use after free in Lua's heap is still caught. */
#define SMALL_STEP    16
#define SMALL_MAX     256
#define SMALL_CLASSES (SMALL_MAX / SMALL_STEP)
#define CACHE_MAX     (1024 * 1024)

#if defined(__SANITIZE_ADDRESS__)
#define CACHE_ON 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CACHE_ON 0
#endif
#endif
#ifndef CACHE_ON
#define CACHE_ON 1
#endif

struct free_block {
	struct free_block *next;
};

struct block_cache {
	struct free_block *list[SMALL_CLASSES];
	size_t bytes; /* waiting on the lists */
};

/* The size class of a block of n bytes (1..SMALL_MAX): 0 for 1..16, 1 for 17..32, ... */
static unsigned small_class(size_t n)
{
	return (unsigned)((n - 1) / SMALL_STEP);
}

static void *block_take(struct block_cache *bc, size_t n)
{
	if (n <= SMALL_MAX) {
		unsigned k = small_class(n);
		struct free_block *b = bc->list[k];

		if (b) {
			bc->list[k] = b->next;
			bc->bytes -= (k + 1) * SMALL_STEP;
			return b;
		}
		return malloc((k + 1) * SMALL_STEP);
	}
	return malloc(n);
}

static void block_give(struct block_cache *bc, void *p, size_t n)
{
	if (CACHE_ON && n <= SMALL_MAX && bc->bytes + SMALL_MAX <= CACHE_MAX) {
		unsigned k = small_class(n);
		struct free_block *b = p;

		b->next = bc->list[k];
		bc->list[k] = b;
		bc->bytes += (k + 1) * SMALL_STEP;
		return;
	}
	free(p);
}

static void block_cache_clear(struct block_cache *bc)
{
	for (unsigned k = 0; k < SMALL_CLASSES; k++) {
		while (bc->list[k]) {
			struct free_block *b = bc->list[k];

			bc->list[k] = b->next;
			free(b);
		}
	}
	bc->bytes = 0;
}

/* A block of osize bytes (Lua's size for it) resized to nsize > 0. */
static void *block_resize(struct block_cache *bc, void *p, size_t osize, size_t nsize)
{
	void *q;

	if (osize > SMALL_MAX && nsize > SMALL_MAX)
		return realloc(p, nsize);
	if (osize <= SMALL_MAX && nsize <= SMALL_MAX && small_class(osize) == small_class(nsize))
		return p; /* the block already has the class's full size */
	q = block_take(bc, nsize);
	if (q) {
		memcpy(q, p, osize < nsize ? osize : nsize);
		block_give(bc, p, osize);
	}
	return q;
}

struct svc_runtime {
	lua_State *L;
	size_t used;
	size_t limit;
	bool over_limit; /* an allocation failed because of the cap during the current call */
	double deadline; /* svc_clock_mono() seconds */
	bool has_deadline;
	bool timed_out;
	double timeout_s;
	bool exit_forbidden; /* os.exit raises (svc_runtime_forbid_exit) */
	char *project_dir;   /* for svc_runtime_renew() */
	struct block_cache cache;
};

static void deadline_hook(lua_State *L, lua_Debug *ar);

static void *runtime_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct svc_runtime *rt = ud;
	void *p;

	if (ptr == NULL)
		osize = 0;
	if (nsize == 0) {
		if (ptr)
			block_give(&rt->cache, ptr, osize);
		rt->used -= osize;
		return NULL;
	}
	if (rt->limit && nsize > osize && rt->used + (nsize - osize) > rt->limit) {
		rt->over_limit = true;
		return NULL;
	}
	p = ptr ? block_resize(&rt->cache, ptr, osize, nsize) : block_take(&rt->cache, nsize);
	if (p)
		rt->used = rt->used - osize + nsize;
	return p;
}

static int preload_embedded(lua_State *L)
{
	const struct svc_embedded *e = lua_touserdata(L, lua_upvalueindex(1));

	if (luaL_loadbuffer(L, e->data, e->len, e->path) != LUA_OK)
		return lua_error(L);
	lua_pushstring(L, e->name);
	lua_call(L, 1, 1);
	return 1;
}

/* os.exit as Lua code sees it: the standard one (upvalue 1) until svc_runtime_forbid_exit(),
 * then an error, so that a handler cannot end a worker that is consuming. */
static int guarded_exit(lua_State *L)
{
	struct svc_runtime *rt = svc_runtime_of(L);

	if (rt && rt->exit_forbidden)
		return luaL_error(L,
		                  "os.exit() is not allowed in a handler: raise an error to fail "
		                  "the message");
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
	return lua_gettop(L);
}

/* Runs inside lua_pcall so a memory error while building the state is reported, not fatal. */
static int build_state(lua_State *L)
{
	const char *project_dir = lua_touserdata(L, 1);

	luaL_openlibs(L);
	/* replaced before any other code runs, so that no module keeps the unguarded one */
	lua_getglobal(L, "os");
	lua_getfield(L, -1, "exit");
	lua_pushcclosure(L, guarded_exit, 1);
	lua_setfield(L, -2, "exit");
	lua_pop(L, 1);
	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
	/* the cjson that handlers can require is the bounded one (see cjson_bounded.h) */
	lua_pushcfunction(L, svc_luaopen_cjson_bounded);
	lua_setfield(L, -2, "cjson");
	lua_pushcfunction(L, svc_luaopen_cjson_safe_bounded);
	lua_setfield(L, -2, "cjson.safe");
	lua_pushcfunction(L, luaopen_svccomm_core);
	lua_setfield(L, -2, "svccomm.core");
	for (const struct svc_embedded *e = svc_embedded_lua; e->name; e++) {
		lua_pushlightuserdata(L, (void *)e);
		lua_pushcclosure(L, preload_embedded, 1);
		lua_setfield(L, -2, e->name);
	}
	lua_pop(L, 1);
	svc_modpath_setup(L);
	if (project_dir) {
		/* the project's modules are found from the start (settings.lua may require them);
		 * svccomm.apps owns the path rule, for a plain lua5.4 as well */
		if (luaL_loadstring(L, "require('svccomm.apps').extend_path(...)") != LUA_OK)
			return lua_error(L);
		lua_pushstring(L, project_dir);
		lua_call(L, 1, 0);
	}
	return 0;
}

/* A fresh state of rt (its allocator counts against rt), or NULL with err filled. */
static lua_State *state_new(struct svc_runtime *rt, char *err, size_t errsz)
{
	lua_State *L = lua_newstate(runtime_alloc, rt);

	if (!L) {
		snprintf(err, errsz, "cannot create the Lua state: out of memory");
		return NULL;
	}
	/* Generational collection: each message leaves only young garbage (the decoded body,
	 * the message table), so a collection does not walk the long-lived handlers and routes;
	 * with incremental collection, per-message cost grew with the number of routes. */
	lua_gc(L, LUA_GCGEN, 0, 0);
	/* The deadline hook stays on the main thread for the life of the state: every coroutine
	 * inherits it when it is created (lua_newthread copies the hook), so a coroutine made
	 * while a module loaded is under the deadline of whichever call resumes it. */
	lua_sethook(L, deadline_hook, LUA_MASKCOUNT, HOOK_INSTRUCTIONS);
	lua_pushcfunction(L, build_state);
	lua_pushlightuserdata(L, (void *)rt->project_dir);
	if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
		snprintf(err, errsz, "cannot set up Lua: %s", lua_tostring(L, -1));
		lua_close(L);
		return NULL;
	}
	return L;
}

struct svc_runtime *svc_runtime_new(const char *project_dir, char *err, size_t errsz)
{
	struct svc_runtime *rt = calloc(1, sizeof(*rt));

	if (!rt || (project_dir && !(rt->project_dir = strdup(project_dir)))) {
		snprintf(err, errsz, "out of memory");
		free(rt);
		return NULL;
	}
	rt->L = state_new(rt, err, errsz);
	if (!rt->L) {
		svc_runtime_free(rt);
		return NULL;
	}
	return rt;
}

int svc_runtime_renew(struct svc_runtime *rt, char *err, size_t errsz)
{
	size_t limit = rt->limit;
	lua_State *L;

	/* The old state may sit at the cap: the new one is built beside it without one. */
	rt->limit = 0;
	L = state_new(rt, err, errsz);
	rt->limit = limit;
	if (!L)
		return SVC_ENOMEM;
	lua_close(rt->L);
	rt->L = L;
	rt->over_limit = false;
	return 0;
}

lua_State *svc_runtime_state_new(struct svc_runtime *rt, char *err, size_t errsz)
{
	size_t limit = rt->limit;
	lua_State *L;

	/* built beside the current state, which may sit near the cap */
	rt->limit = 0;
	L = state_new(rt, err, errsz);
	rt->limit = limit;
	return L;
}

lua_State *svc_runtime_exchange(struct svc_runtime *rt, lua_State *L)
{
	lua_State *old = rt->L;

	rt->L = L;
	rt->over_limit = false;
	return old;
}

void svc_runtime_free(struct svc_runtime *rt)
{
	if (!rt)
		return;
	if (rt->L)
		lua_close(rt->L);
	block_cache_clear(&rt->cache);
	free(rt->project_dir);
	free(rt);
}

lua_State *svc_runtime_state(struct svc_runtime *rt)
{
	return rt->L;
}

struct svc_runtime *svc_runtime_of(lua_State *L)
{
	void *ud;

	return lua_getallocf(L, &ud) == runtime_alloc ? ud : NULL;
}

void svc_runtime_set_memory_limit(struct svc_runtime *rt, size_t bytes)
{
	rt->limit = bytes;
}

size_t svc_runtime_memory_used(const struct svc_runtime *rt)
{
	return rt->used;
}

size_t svc_runtime_memory_limit(const struct svc_runtime *rt)
{
	return rt->limit;
}

int svc_runtime_reserve(struct svc_runtime *rt, size_t bytes)
{
	if (rt->limit && (rt->used > rt->limit || bytes > rt->limit - rt->used)) {
		rt->over_limit = true;
		return SVC_ENOMEM;
	}
	rt->used += bytes;
	return 0;
}

void svc_runtime_unreserve(struct svc_runtime *rt, size_t bytes)
{
	rt->used -= bytes;
}

void svc_runtime_forbid_exit(struct svc_runtime *rt, bool forbidden)
{
	rt->exit_forbidden = forbidden;
}

/* Once the deadline has passed the hook fires at every instruction and raises each time, so
 * a handler that catches the error with pcall cannot keep running: the first instruction
 * after its pcall raises again. It runs in every thread (see svc_runtime_new): a coroutine
 * that passes the deadline raises too, and so does the main thread that resumed it. */
static void deadline_hook(lua_State *L, lua_Debug *ar)
{
	struct svc_runtime *rt = svc_runtime_of(L);
	char msg[64];

	(void)ar;
	if (!rt || !rt->has_deadline || (!rt->timed_out && svc_clock_mono() < rt->deadline)) {
		/* a coroutine left at every instruction by an earlier timeout slows down no more */
		if (lua_gethookcount(L) != HOOK_INSTRUCTIONS)
			lua_sethook(L, deadline_hook, LUA_MASKCOUNT, HOOK_INSTRUCTIONS);
		return;
	}
	rt->timed_out = true;
	lua_sethook(L, deadline_hook, LUA_MASKCOUNT, 1);
	if (L != rt->L)
		lua_sethook(rt->L, deadline_hook, LUA_MASKCOUNT, 1);
	/* lua_pushfstring has no %g precision: format here. */
	snprintf(msg, sizeof(msg), "timed out after %.3g s (HANDLER_TIMEOUT)", rt->timeout_s);
	luaL_error(L, "%s", msg);
}

/* lua_pcall(L, nargs, nresults, 0) for code that runs on the side of a call (turning an
 * error object into text): at most limit_s seconds, or until the enclosing call's deadline
 * when that comes first (but always a few thousand instructions). The enclosing deadline is
 * kept afterwards; *timed_out tells whether this call was stopped by the limit. */
static int pcall_bounded(struct svc_runtime *rt, lua_State *L, int nargs, int nresults,
                         double limit_s, bool *timed_out)
{
	bool had = rt->has_deadline, was_out = rt->timed_out;
	double deadline = rt->deadline, timeout_s = rt->timeout_s;
	double until = svc_clock_mono() + limit_s;
	int rc;

	if (!had || until < deadline) {
		rt->deadline = until;
		rt->timeout_s = limit_s;
	}
	rt->has_deadline = true;
	rt->timed_out = false;
	lua_sethook(L, deadline_hook, LUA_MASKCOUNT, HOOK_INSTRUCTIONS);
	rc = lua_pcall(L, nargs, nresults, 0);
	*timed_out = rt->timed_out;
	rt->has_deadline = had;
	rt->deadline = deadline;
	rt->timeout_s = timeout_s;
	rt->timed_out = was_out || (had && *timed_out && svc_clock_mono() >= deadline);
	lua_sethook(L, deadline_hook, LUA_MASKCOUNT, rt->timed_out ? 1 : HOOK_INSTRUCTIONS);
	return rc;
}

/* Protected: luaL_tolstring of the value at index 1 (its __tostring is the application's). */
static int to_text(lua_State *L)
{
	luaL_tolstring(L, 1, NULL);
	return 1;
}

/* Adds a traceback: a table error keeps its fields (C reads `permanent`) and gets the
 * traceback as field "traceback" (set raw: its __newindex is not called); any other error
 * becomes its text with the traceback appended, in the shape of lua.c's msghandler: a string
 * or a number as it is, another value through its __tostring, else "(error object is a <type>
 * value)". The __tostring runs in a protected call under a deadline: one that raises or loops
 * gives the "(error object ...)" text. */
static int msghandler(lua_State *L)
{
	struct svc_runtime *rt = svc_runtime_of(L);
	const char *msg = NULL;
	bool timed_out;

	if (lua_type(L, 1) == LUA_TTABLE) {
		lua_pushliteral(L, "traceback");
		luaL_traceback(L, L, NULL, 1);
		lua_rawset(L, 1);
		lua_settop(L, 1);
		return 1;
	}
	if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER) {
		msg = lua_tostring(L, 1);
	} else if (rt && luaL_getmetafield(L, 1, "__tostring") != LUA_TNIL) {
		lua_pop(L, 1);
		lua_pushcfunction(L, to_text);
		lua_pushvalue(L, 1);
		if (pcall_bounded(rt, L, 1, 1, ERROR_TEXT_TIMEOUT_S, &timed_out) == LUA_OK)
			msg = lua_tostring(L, -1);
	}
	if (msg == NULL)
		msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	luaL_traceback(L, L, msg, 1);
	return 1;
}

enum svc_lua_status svc_lua_pcall(struct svc_runtime *rt, int nargs, int nresults, double timeout_s)
{
	lua_State *L = rt->L;
	int base = lua_gettop(L) - nargs; /* index of the function */
	int rc;
	enum svc_lua_status st = SVC_LUA_OK;

	lua_pushcfunction(L, msghandler);
	lua_insert(L, base);
	rt->over_limit = false;
	rt->timed_out = false;
	rt->has_deadline = timeout_s > 0;
	if (rt->has_deadline) {
		rt->timeout_s = timeout_s;
		rt->deadline = svc_clock_mono() + timeout_s;
	}
	/* back to the normal rate after an earlier timeout */
	lua_sethook(L, deadline_hook, LUA_MASKCOUNT, HOOK_INSTRUCTIONS);
	rc = lua_pcall(L, nargs, nresults, base);
	lua_sethook(L, deadline_hook, LUA_MASKCOUNT, HOOK_INSTRUCTIONS);
	lua_remove(L, base);
	if (rc != LUA_OK) {
		if (rt->timed_out) {
			st = SVC_LUA_TIMEOUT;
		} else if (rc == LUA_ERRMEM || rt->over_limit) {
			st = SVC_LUA_MEMORY;
			if (rc == LUA_ERRMEM) {
				lua_pop(L, 1);
				lua_pushfstring(
				    L, "Lua memory limit reached (%d MiB, LUA_MEMORY_LIMIT_MB)",
				    (int)(rt->limit >> 20));
			}
		} else {
			st = SVC_LUA_ERROR;
		}
		/* Memory use past the cap is released by the next collection; run it now so the
		 * next message starts below the cap. */
		if (st == SVC_LUA_MEMORY)
			lua_gc(L, LUA_GCCOLLECT);
	}
	rt->has_deadline = false;
	if (nresults != LUA_MULTRET && lua_gettop(L) != base - 1 + (rc == LUA_OK ? nresults : 1)) {
		fprintf(stderr, "svccomm: Lua stack unbalanced after a call (%d, expected %d)\n",
		        lua_gettop(L), base - 1 + (rc == LUA_OK ? nresults : 1));
		abort();
	}
	return st;
}

int svc_runtime_require(struct svc_runtime *rt, const char *name, char *err, size_t errsz)
{
	lua_State *L = rt->L;

	lua_getglobal(L, "require");
	lua_pushstring(L, name);
	if (svc_lua_pcall(rt, 1, 1, 0) != SVC_LUA_OK) {
		svc_lua_error_text(L, err, errsz);
		return SVC_ELUA;
	}
	return 0;
}

/* Protected part of svc_lua_error_text: the text of the error value at index 1. A table's
 * __tostring and __index (for "message") are the application's code: they may raise or loop. */
static int error_text(lua_State *L)
{
	const char *msg = NULL, *tb;

	if (lua_type(L, 1) != LUA_TTABLE) {
		luaL_tolstring(L, 1, NULL);
		return 1;
	}
	if (luaL_callmeta(L, 1, "__tostring")) {
		msg = lua_tostring(L, -1);
	} else {
		lua_getfield(L, 1, "message");
		msg = lua_tostring(L, -1);
	}
	lua_pushliteral(L, "traceback");
	lua_rawget(L, 1);
	tb = lua_tostring(L, -1);
	lua_pushfstring(L, "%s%s%s", msg ? msg : "(error table)", tb ? "\n" : "", tb ? tb : "");
	return 1;
}

void svc_lua_error_text(lua_State *L, char *out, size_t outsz)
{
	struct svc_runtime *rt = svc_runtime_of(L);
	const char *why;
	bool timed_out = false;
	int type = lua_type(L, -1), rc;

	if (type == LUA_TSTRING) {
		snprintf(out, outsz, "%s", lua_tostring(L, -1));
		lua_pop(L, 1);
		return;
	}
	lua_pushcfunction(L, error_text);
	lua_insert(L, -2);
	rc = rt ? pcall_bounded(rt, L, 1, 1, ERROR_TEXT_TIMEOUT_S, &timed_out)
	        : lua_pcall(L, 1, 1, 0);
	if (rc == LUA_OK) {
		snprintf(out, outsz, "%s", lua_tostring(L, -1));
	} else {
		why = timed_out                        ? "it took too long"
		      : lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
		                                       : "it raised an error";
		snprintf(out, outsz, "(error object is a %s value; reading its text failed: %s)",
		         lua_typename(L, type), why);
	}
	lua_pop(L, 1);
}
