/* `svccomm init [DIR]`: writes the skeleton of a new service (settings.lua from the settings
 * schema, an example app, its busted spec, .luarc.json, .gitignore). The file list and texts
 * come from svccomm.scaffold and the templates compiled in (cmake/embed_templates.cmake); this
 * file only checks that none exists yet and writes them, never overwriting anything. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>

#include "cli/cli.h"
#include "lua/embedded.h"
#include "lua/runtime.h"
#include "util/error.h"

#ifndef SVCCOMM_TYPES_DIR
#define SVCCOMM_TYPES_DIR "/usr/local/share/svccomm/types"
#endif

/* The service name init writes as APP_ID and QUEUE: the directory's last component with
 * characters outside [A-Za-z0-9_.-] replaced by '_' ("service" when nothing is left). */
static void service_name(const char *dir, char *out, size_t outsz)
{
	char real[4096];
	const char *base, *src = realpath(dir, real) ? real : dir;
	size_t n = 0;

	base = strrchr(src, '/');
	base = base && base[1] ? base + 1 : src;
	for (; *base && n + 1 < outsz && n < 64; base++) {
		char c = *base;
		int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		         (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
		out[n++] = ok ? c : '_';
	}
	out[n] = '\0';
	if (n == 0 || strcmp(out, ".") == 0 || strcmp(out, "..") == 0 || strcmp(out, "/") == 0)
		snprintf(out, outsz, "service");
}

/* Leaves on the stack the array of {path, text} of svccomm.scaffold.files(). 0 or SVC_ELUA. */
static int scaffold_files(struct svc_runtime *rt, const char *name, char *err, size_t errsz)
{
	lua_State *L = svc_runtime_state(rt);
	const char *types = getenv("SVCCOMM_TYPES_DIR");

	if (svc_runtime_require(rt, "svccomm.scaffold", err, errsz) != 0)
		return SVC_ELUA;
	lua_getfield(L, -1, "files");
	lua_remove(L, -2);
	lua_pushstring(L, name);
	lua_newtable(L);
	for (const struct svc_embedded *t = svc_embedded_templates; t->name; t++) {
		lua_pushlstring(L, t->data, t->len);
		lua_setfield(L, -2, t->name);
	}
	lua_pushstring(L, types && *types ? types : SVCCOMM_TYPES_DIR);
	if (svc_lua_pcall(rt, 3, 1, 0) != SVC_LUA_OK) {
		svc_lua_error_text(L, err, errsz);
		return SVC_ELUA;
	}
	return 0;
}

/* Creates every missing directory of path (its parents included); 0 or -1 with errno. */
static int make_dirs(const char *path)
{
	char buf[4096];

	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = buf + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;
		*p = '\0';
		if (mkdir(buf, 0777) != 0 && errno != EEXIST)
			return -1;
		*p = c;
		if (c == '\0')
			return 0;
	}
}

/* Writes text to path, which must not exist (O_EXCL: never overwrites); 0 or -1 with errno. */
static int write_new(const char *path, const char *text, size_t len)
{
	char dir[4096];
	const char *slash = strrchr(path, '/');
	int fd, saved;

	if (slash && slash != path) {
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
		if (make_dirs(dir) != 0)
			return -1;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
	if (fd < 0)
		return -1;
	while (len > 0) {
		ssize_t w = write(fd, text, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			goto fail;
		text += w;
		len -= (size_t)w;
	}
	if (close(fd) != 0)
		return -1;
	return 0;
fail:
	saved = errno;
	close(fd);
	errno = saved;
	return -1;
}

/* The full path of entry i of the file list on top of the stack, and its text. */
static void entry(lua_State *L, const char *dir, int i, char *path, size_t pathsz, const char **rel,
                  const char **text, size_t *len)
{
	lua_rawgeti(L, -1, i);
	lua_rawgeti(L, -1, 1);
	lua_rawgeti(L, -2, 2);
	*rel = lua_tostring(L, -2);
	*text = lua_tolstring(L, -1, len);
	lua_pop(L, 3); /* the strings stay alive in the list, which stays on the stack */
	snprintf(path, pathsz, "%s/%s", dir, *rel);
}

/* Prints the files of the list on top of the stack that exist already; returns how many. */
static int existing(lua_State *L, const char *dir)
{
	char path[4096];
	const char *rel, *text;
	size_t len;
	struct stat st;
	int n = (int)lua_rawlen(L, -1), found = 0;

	for (int i = 1; i <= n; i++) {
		entry(L, dir, i, path, sizeof(path), &rel, &text, &len);
		if (lstat(path, &st) == 0 || errno != ENOENT) {
			if (found++ == 0)
				fprintf(stderr,
				        "svccomm init: %s: refusing to overwrite; these exist "
				        "already (nothing was written):\n",
				        dir);
			fprintf(stderr, "  %s\n", path);
		}
	}
	return found;
}

static int run(struct svc_cli_ctx *ctx)
{
	const char *dir = ctx->nargs > 0 ? ctx->arg[0] : ".";
	char err[8192], name[128], path[4096];
	struct svc_runtime *rt;
	lua_State *L;
	const char *rel, *text;
	size_t len;
	int rc = SVC_EXIT_FAILURE, n;

	rt = svc_runtime_new(NULL, err, sizeof(err));
	if (!rt) {
		fprintf(stderr, "svccomm init: %s\n", err);
		return SVC_EXIT_USAGE;
	}
	L = svc_runtime_state(rt);
	service_name(dir, name, sizeof(name));
	if (scaffold_files(rt, name, err, sizeof(err)) != 0) {
		fprintf(stderr, "svccomm init: %s\n", err);
		goto out;
	}
	if (existing(L, dir) > 0) {
		rc = SVC_EXIT_USAGE;
		goto out_pop;
	}
	n = (int)lua_rawlen(L, -1);
	for (int i = 1; i <= n; i++) {
		entry(L, dir, i, path, sizeof(path), &rel, &text, &len);
		if (write_new(path, text, len) != 0) {
			fprintf(stderr, "svccomm init: cannot write %s: %s\n", path,
			        strerror(errno));
			goto out_pop;
		}
		printf("created %s\n", path);
	}
	printf("next: cd %s && svccomm check && busted\n", dir);
	rc = SVC_EXIT_OK;
out_pop:
	lua_pop(L, 1);
out:
	svc_runtime_free(rt);
	return rc;
}

const struct svc_cmd svc_cmd_init = {
    .name = "init",
    .run = run,
    .needs = SVC_NEEDS_NOTHING,
    .summary = "write the skeleton of a new service into DIR (default .)",
    .args = "[DIR]",
    .min_args = 0,
    .max_args = 1,
    .description =
        "Writes settings.lua (every setting, documented, at its default; APP_ID and QUEUE\n"
        "named after DIR), apps/example/consumers.lua (an event handler),\n"
        "spec/example_spec.lua (its busted spec), .luarc.json (the Lua language server,\n"
        "pointing at the installed type definitions; SVCCOMM_TYPES_DIR overrides where)\n"
        "and .gitignore. DIR and missing folders are created. If any of these files exists\n"
        "already, lists them and writes nothing.\n",
    .exit_codes = "Exit codes: 0 written, 1 a file could not be written, 2 usage error or a\n"
                  "file exists already (nothing written).",
};
