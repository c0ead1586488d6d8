/* Unit tests of config/config.c: settings.lua loaded through the runtime's protected call,
 * its errors as their message alone (no traceback), the values copied into the struct. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "lua/runtime.h"
#include "util/error.h"

struct fixture {
	struct svc_runtime *rt;
	char path[64];
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	char err[256];
	int fd;

	if (!f)
		return -1;
	snprintf(f->path, sizeof(f->path), "/tmp/svccomm_settings_XXXXXX");
	fd = mkstemp(f->path);
	if (fd < 0)
		return -1;
	close(fd);
	f->rt = svc_runtime_new(NULL, err, sizeof(err));
	*state = f;
	return f->rt ? 0 : -1;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	unlink(f->path);
	svc_runtime_free(f->rt);
	free(f);
	return 0;
}

static void write_settings(const struct fixture *f, const char *source)
{
	FILE *fh = fopen(f->path, "w");

	assert_non_null(fh);
	fputs(source, fh);
	fclose(fh);
}

/* Loads the fixture's file; returns the code and leaves the message in err. */
static int load(struct fixture *f, struct svc_config *cfg, char *err, size_t errsz)
{
	lua_State *L = svc_runtime_state(f->rt);
	int top = lua_gettop(L), rc;

	err[0] = '\0';
	rc = svc_config_load(L, f->path, cfg, err, errsz);
	assert_int_equal(lua_gettop(L), top);
	return rc;
}

static void settings_are_copied(void **state)
{
	struct fixture *f = *state;
	struct svc_config cfg;
	char err[512];

	write_settings(f, "return { QUEUE = 'q', PREFETCH_COUNT = 7 }\n");
	assert_int_equal(load(f, &cfg, err, sizeof(err)), 0);
	assert_string_equal(cfg.path, f->path);
	assert_string_equal(cfg.dir, "/tmp");
	assert_string_equal(cfg.queue, "q");
	assert_int_equal(cfg.prefetch_count, 7);
	svc_config_release(&cfg);
	assert_null(cfg.queue);
}

/* BROKER_CONNECTION_URL: one URL or a list; broker_url is the first. */
static void broker_urls_are_copied(void **state)
{
	struct fixture *f = *state;
	struct svc_config cfg;
	char err[512];
	char *env = getenv("SVCCOMM_BROKER_URL") ? strdup(getenv("SVCCOMM_BROKER_URL")) : NULL;

	unsetenv("SVCCOMM_BROKER_URL");
	write_settings(
	    f, "return { BROKER_CONNECTION_URL = { 'amqp://u:p@n1:5680/v', "
	       "'amqp://u:p@n2:5681/v', 'amqp://u:p@n3:5682/v' }, BROKER_SHUFFLE = true }\n");
	assert_int_equal(load(f, &cfg, err, sizeof(err)), 0);
	assert_int_equal(cfg.n_broker_urls, 3);
	assert_string_equal(cfg.broker_urls[0], "amqp://u:p@n1:5680/v");
	assert_string_equal(cfg.broker_urls[2], "amqp://u:p@n3:5682/v");
	assert_string_equal(cfg.broker_url, "amqp://u:p@n1:5680/v");
	assert_true(cfg.broker_shuffle);
	svc_config_release(&cfg);
	assert_null(cfg.broker_urls);
	write_settings(f, "return { BROKER_CONNECTION_URL = 'amqp://u:p@n1/v' }\n");
	assert_int_equal(load(f, &cfg, err, sizeof(err)), 0);
	assert_int_equal(cfg.n_broker_urls, 1);
	assert_string_equal(cfg.broker_urls[0], "amqp://u:p@n1/v");
	assert_false(cfg.broker_shuffle);
	svc_config_release(&cfg);
	write_settings(f, "return { BROKER_CONNECTION_URL = {} }\n");
	assert_int_equal(load(f, &cfg, err, sizeof(err)), SVC_ECONFIG);
	assert_non_null(strstr(err, "BROKER_CONNECTION_URL: expected at least one"));
	if (env) {
		setenv("SVCCOMM_BROKER_URL", env, 1);
		free(env);
	}
}

/* BROKER_TLS reaches struct svc_amqp_tls: the files (here the settings file itself, a readable
 * file) and the switches; unset, verification is on and there are no files. */
static void broker_tls_is_copied(void **state)
{
	struct fixture *f = *state;
	struct svc_config cfg;
	char err[512], src[512];
	char *url = getenv("SVCCOMM_BROKER_URL") ? strdup(getenv("SVCCOMM_BROKER_URL")) : NULL;

	unsetenv("SVCCOMM_BROKER_URL");
	unsetenv("SVCCOMM_BROKER_CA_FILE");
	unsetenv("SVCCOMM_BROKER_CERT_FILE");
	unsetenv("SVCCOMM_BROKER_KEY_FILE");
	snprintf(src, sizeof(src),
	         "return { BROKER_CONNECTION_URL = 'amqps://u:p@h/v',\n"
	         "  BROKER_TLS = { ca_file = '%s', cert_file = '%s', verify_hostname = false } }\n",
	         f->path, f->path);
	write_settings(f, src);
	assert_int_equal(load(f, &cfg, err, sizeof(err)), 0);
	assert_string_equal(cfg.broker_tls.ca_file, f->path);
	assert_string_equal(cfg.broker_tls.cert_file, f->path);
	assert_null(cfg.broker_tls.key_file);
	assert_true(cfg.broker_tls.verify_peer);
	assert_false(cfg.broker_tls.verify_hostname);
	svc_config_release(&cfg);
	assert_null(cfg.broker_tls.ca_file);

	write_settings(f, "return { BROKER_CONNECTION_URL = 'amqps://u:p@h/v' }\n");
	assert_int_equal(load(f, &cfg, err, sizeof(err)), 0);
	assert_null(cfg.broker_tls.ca_file);
	assert_null(cfg.broker_tls.cert_file);
	assert_true(cfg.broker_tls.verify_peer);
	assert_true(cfg.broker_tls.verify_hostname);
	svc_config_release(&cfg);
	if (url)
		setenv("SVCCOMM_BROKER_URL", url, 1);
	free(url);
}

/* The messages `svccomm check` prints: the error after the file's path, no traceback. */
static void settings_errors_are_the_message_alone(void **state)
{
	static const struct {
		const char *source, *message; /* message: after "<path>" */
	} cases[] = {
	    {"local x = 1\nerror('set NOT_SET_ANYWHERE_42')\n", ":2: set NOT_SET_ANYWHERE_42"},
	    {"return {\n  QUEUE = = 1,\n}\n", ":2: unexpected symbol near '='"},
	    {"QUEUE = 'q'\n", ": expected the file to return a table, got nil"},
	    {"return { QUEUE = 1 }\n", ": QUEUE: expected a non-empty string, got 1"},
	};
	struct fixture *f = *state;
	struct svc_config cfg;
	char err[512], want[256];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		write_settings(f, cases[i].source);
		assert_int_equal(load(f, &cfg, err, sizeof(err)), SVC_ECONFIG);
		snprintf(want, sizeof(want), "%s%s", f->path, cases[i].message);
		assert_string_equal(err, want);
	}
}

/* The call goes through svc_lua_pcall, which needs the runtime of the state. */
static void a_state_without_runtime_is_refused(void **state)
{
	struct fixture *f = *state;
	struct svc_config cfg;
	char err[256];
	lua_State *plain = luaL_newstate();

	write_settings(f, "return {}\n");
	assert_int_equal(svc_config_load(plain, f->path, &cfg, err, sizeof(err)), SVC_EINVAL);
	assert_non_null(strstr(err, "svc_runtime_new"));
	lua_close(plain);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(settings_are_copied, setup, teardown),
	    cmocka_unit_test_setup_teardown(broker_urls_are_copied, setup, teardown),
	    cmocka_unit_test_setup_teardown(broker_tls_is_copied, setup, teardown),
	    cmocka_unit_test_setup_teardown(settings_errors_are_the_message_alone, setup, teardown),
	    cmocka_unit_test_setup_teardown(a_state_without_runtime_is_refused, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
