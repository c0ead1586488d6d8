/* Unit tests for amqp/nodes.c without a broker: checking the list, the shuffled order, and
 * which node a connect tries first (seen in the order of the refused nodes in the error). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "amqp/nodes.h"
#include "util/error.h"

static void bad_lists_name_the_entry_without_password(void **state)
{
	struct svc_amqp_nodes ns;
	char err[600];
	const char *malformed[] = {"amqp://u:s3cret@h1/", "amqp://u:s3cret@h2:notaport/"};
	const char *mixed[] = {"amqp://u:s3cret@h1/", "amqps://u:s3cret@h2/"};
	const char *http[] = {"http://u:s3cret@h1/"};

	(void)state;
	assert_int_equal(svc_amqp_nodes_init(&ns, NULL, 0, err, sizeof(err)), SVC_EINVAL);
	assert_non_null(strstr(err, "BROKER_CONNECTION_URL: expected at least one"));
	assert_int_equal(svc_amqp_nodes_init(&ns, malformed, 2, err, sizeof(err)), SVC_EINVAL);
	assert_non_null(strstr(err, "BROKER_CONNECTION_URL[2]: expected an amqp:// or amqps://"));
	assert_non_null(strstr(err, "u:****@h2:notaport"));
	assert_null(strstr(err, "s3cret"));
	assert_int_equal(svc_amqp_nodes_init(&ns, mixed, 2, err, sizeof(err)), SVC_EINVAL);
	assert_non_null(strstr(err, "BROKER_CONNECTION_URL[2]: expected an amqp:// URL like the "
	                            "first entry (amqp:// and amqps:// do not mix)"));
	assert_null(strstr(err, "s3cret"));
	assert_int_equal(svc_amqp_nodes_init(&ns, http, 1, err, sizeof(err)), SVC_EINVAL);
	assert_non_null(strstr(err, "BROKER_CONNECTION_URL[1]"));
	assert_null(ns.urls);
}

static void url_node_is_host_and_port(void **state)
{
	char node[64];
	bool ssl = false;

	(void)state;
	assert_true(svc_amqp_url_node("amqp://u:p@rabbit-1:5680/v", node, sizeof(node), &ssl));
	assert_string_equal(node, "rabbit-1:5680");
	assert_false(ssl);
	assert_true(svc_amqp_url_node("amqps://u:p@h/v", node, sizeof(node), &ssl));
	assert_string_equal(node, "h:5671");
	assert_true(ssl);
	assert_true(svc_amqp_url_node("amqp://localhost", node, sizeof(node), NULL));
	assert_string_equal(node, "localhost:5672");
	assert_false(svc_amqp_url_node("amqp://h:x/", node, sizeof(node), NULL));
}

/* The order of the refused nodes in the error after a failed round. */
static void tried_order(struct svc_amqp_nodes *ns, struct svc_amqp *c, const char *want)
{
	assert_int_equal(svc_amqp_nodes_connect(ns, c, 0, "t"), SVC_ECONN);
	const char *e = svc_amqp_error(c);
	char got[128] = "";
	size_t n = 0;
	for (const char *p = e; (p = strstr(p, "127.0.0.1:")) != NULL; p += 10)
		n += (size_t)snprintf(got + n, sizeof(got) - n, "%c", p[10]);
	assert_string_equal(got, want);
}

static void connect_tries_every_node_from_the_preferred_one(void **state)
{
	/* ports 1, 2 and 3 on the loopback: nothing listens there, each refuses at once */
	const char *urls[] = {"amqp://u:s3cret@127.0.0.1:1/", "amqp://u:s3cret@127.0.0.1:2/",
	                      "amqp://u:s3cret@127.0.0.1:3/"};
	struct svc_amqp_nodes ns;
	struct svc_amqp *c = svc_amqp_new();
	char err[600];

	(void)state;
	assert_int_equal(svc_amqp_nodes_init(&ns, urls, 3, err, sizeof(err)), 0);
	tried_order(&ns, c, "123");
	assert_non_null(strstr(svc_amqp_error(c), "no broker node answered: cannot connect to "));
	assert_null(strstr(svc_amqp_error(c), "s3cret"));
	assert_string_equal(svc_amqp_node(c), "");
	svc_amqp_nodes_lost(&ns); /* nothing was connected: no change */
	tried_order(&ns, c, "123");
	/* as after a successful connect to node 2: a loss moves the start to node 3 */
	ns.cur = ns.start = 1;
	ns.connected = ns.any = true;
	tried_order(&ns, c, "231");
	svc_amqp_nodes_lost(&ns);
	tried_order(&ns, c, "312");
	svc_amqp_nodes_lost(&ns); /* reported twice for one loss: still node 3 first */
	tried_order(&ns, c, "312");
	ns.cur = 2;
	ns.connected = true;
	svc_amqp_nodes_lost(&ns); /* wraps around */
	tried_order(&ns, c, "123");
	svc_amqp_free(c);
	svc_amqp_nodes_release(&ns);
	assert_null(ns.urls);
}

static void shuffle_is_a_permutation_that_depends_on_the_seed(void **state)
{
	const char *urls[] = {"amqp://a/", "amqp://b/", "amqp://c/", "amqp://d/", "amqp://e/"};
	struct svc_amqp_nodes ns, again;
	char err[200], first[8] = "";
	bool differs = false;

	(void)state;
	for (unsigned seed = 1; seed <= 20; seed++) {
		char order[8] = "";
		char order2[8] = "";
		assert_int_equal(svc_amqp_nodes_init(&ns, urls, 5, err, sizeof(err)), 0);
		assert_int_equal(svc_amqp_nodes_init(&again, urls, 5, err, sizeof(err)), 0);
		svc_amqp_nodes_shuffle(&ns, seed);
		svc_amqp_nodes_shuffle(&again, seed);
		for (size_t i = 0; i < 5; i++) {
			order[i] = svc_amqp_nodes_url(&ns, i)[7];
			order2[i] = svc_amqp_nodes_url(&again, i)[7];
		}
		assert_null(svc_amqp_nodes_url(&ns, 5));
		assert_string_equal(order, order2); /* the same seed, the same order */
		for (char x = 'a'; x <= 'e'; x++)
			assert_non_null(strchr(order, x)); /* every node still there once */
		if (seed == 1)
			memcpy(first, order, sizeof(first));
		else if (strcmp(first, order) != 0)
			differs = true;
		svc_amqp_nodes_release(&ns);
		svc_amqp_nodes_release(&again);
	}
	assert_true(differs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(bad_lists_name_the_entry_without_password),
	    cmocka_unit_test(url_node_is_host_and_port),
	    cmocka_unit_test(connect_tries_every_node_from_the_preferred_one),
	    cmocka_unit_test(shuffle_is_a_permutation_that_depends_on_the_seed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
