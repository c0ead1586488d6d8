/* lua/runtime: the one lua_State of a process and every call into it.
 *
 * svc_runtime_new() builds the state inside a protected call: the standard libraries (with a
 * guarded os.exit), cjson (bounded by the memory cap, see cjson_bounded.h) and the svccomm
 * modules in package.preload (compiled into the binary), package.path extended with the
 * project's apps/ folder (svccomm.apps.extend_path, the rule a plain lua5.4 uses too), and an
 * allocator with a memory cap that keeps freed small blocks for reuse (runtime.c). All calls
 * from C into Lua go through svc_lua_pcall(), which adds a traceback, enforces a deadline with
 * a count hook (on every coroutine too: each thread inherits the hook) and checks that the
 * stack is balanced. */
#ifndef SVC_LUA_RUNTIME_H
#define SVC_LUA_RUNTIME_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>

struct svc_runtime;

/* Creates the state. project_dir is where apps/ lives (NULL: no apps path yet). Returns
 * NULL and the reason in err on failure. */
struct svc_runtime *svc_runtime_new(const char *project_dir, char *err, size_t errsz);
void svc_runtime_free(struct svc_runtime *rt);
/* Replaces the state by a fresh one built as svc_runtime_new() built it (nothing loaded into
 * it yet), closing the old one: every reference into the old state is gone. 0, or SVC_ENOMEM
 * with err filled and the old state kept. */
int svc_runtime_renew(struct svc_runtime *rt, char *err, size_t errsz);
/* A fresh state counted against rt but not installed (NULL with err filled): apps can be
 * loaded into it while the current one keeps serving, see svc_runtime_exchange(). */
lua_State *svc_runtime_state_new(struct svc_runtime *rt, char *err, size_t errsz);
/* Makes L the state of rt and returns the one it replaces (the caller closes it). */
lua_State *svc_runtime_exchange(struct svc_runtime *rt, lua_State *L);
lua_State *svc_runtime_state(struct svc_runtime *rt);
/* The runtime whose state L is, or NULL when svc_runtime_new() did not make L. */
struct svc_runtime *svc_runtime_of(lua_State *L);

/* Caps Lua's memory (bytes; 0 = no cap). An allocation past the cap fails, which Lua raises
 * as a "not enough memory" error in the code that asked for it. */
void svc_runtime_set_memory_limit(struct svc_runtime *rt, size_t bytes);
size_t svc_runtime_memory_used(const struct svc_runtime *rt);
/* The cap set by svc_runtime_set_memory_limit() (0: none). */
size_t svc_runtime_memory_limit(const struct svc_runtime *rt);
/* Counts bytes that C code called from Lua holds outside the allocator (a library's own
 * buffer) against the cap: 0, or SVC_ENOMEM when they do not fit (the current call then
 * counts as out of memory if it fails). */
int svc_runtime_reserve(struct svc_runtime *rt, size_t bytes);
/* Gives back bytes counted by svc_runtime_reserve(). */
void svc_runtime_unreserve(struct svc_runtime *rt, size_t bytes);
/* With forbidden, os.exit raises a Lua error instead of ending the process (a consumer sets
 * it before it starts consuming: a handler cannot end a worker). */
void svc_runtime_forbid_exit(struct svc_runtime *rt, bool forbidden);

/* Result of svc_lua_pcall beyond lua_pcall's codes. */
enum svc_lua_status {
	SVC_LUA_OK = 0,
	SVC_LUA_ERROR = 1,   /* the code raised; the error object is on the stack */
	SVC_LUA_TIMEOUT = 2, /* the deadline passed; a message string is on the stack */
	SVC_LUA_MEMORY = 3,  /* memory cap reached; a message string is on the stack */
};

/* Calls the function below nargs arguments like lua_pcall(L, nargs, nresults, 0), with a
 * traceback (error tables get a "traceback" field; any other error becomes its text, as
 * lua.c's message handler makes it, with the traceback appended) and a deadline of timeout_s
 * seconds (<= 0: none). On failure exactly one value (the error) is left on the stack. */
enum svc_lua_status svc_lua_pcall(struct svc_runtime *rt, int nargs, int nresults,
                                  double timeout_s);

/* Runs `require(name)` and leaves the module on the stack; 0 or SVC_ELUA with err filled. */
int svc_runtime_require(struct svc_runtime *rt, const char *name, char *err, size_t errsz);

/* Turns the error object on top of the stack into text (tostring, with traceback if any)
 * and pops it. The object's __tostring / __index run in a protected call with a short
 * deadline: one that raises or loops gives "(error object is a <type> value; reading its
 * text failed: ...)". Never raises. */
void svc_lua_error_text(lua_State *L, char *out, size_t outsz);

#endif
