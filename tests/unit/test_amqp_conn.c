/* Unit tests for amqp_conn.c that need no broker: URL errors, refused connections, and the
 * behaviour of every call on a connection that is not open. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "amqp/conn.h"
#include "util/error.h"

static void invalid_url_is_einval(void **state)
{
	struct svc_amqp *c = svc_amqp_new();

	(void)state;
	assert_non_null(c);
	assert_int_equal(svc_amqp_connect(c, "http://localhost/", 0, "t"), SVC_EINVAL);
	assert_non_null(strstr(svc_amqp_error(c), "invalid broker URL"));
	assert_int_equal(svc_amqp_connect(c, "amqp://u:p@host:notaport/", 0, "t"), SVC_EINVAL);
	assert_false(svc_amqp_is_open(c));
	svc_amqp_free(c);
}

static void refused_connection_is_econn_without_password(void **state)
{
	struct svc_amqp *c = svc_amqp_new();

	(void)state;
	/* port 1 on the loopback: nothing listens there */
	assert_int_equal(svc_amqp_connect(c, "amqp://user:s3cret@127.0.0.1:1/vh", 0, "t"),
	                 SVC_ECONN);
	assert_non_null(strstr(svc_amqp_error(c), "127.0.0.1:1"));
	assert_null(strstr(svc_amqp_error(c), "s3cret"));
	assert_false(svc_amqp_is_open(c));
	assert_int_equal(svc_amqp_fd(c), -1);
	svc_amqp_free(c);
}

/* amqps://: the TLS options are applied before connecting, so a file that cannot be loaded is
 * reported by name without any server; the default trust store is the system bundle. */
static void tls_files_are_named_in_errors(void **state)
{
	struct svc_amqp *c = svc_amqp_new();
	struct svc_amqp_tls tls = {.ca_file = "/nonexistent/ca.pem", .verify_peer = true};

	(void)state;
	svc_amqp_set_tls(c, &tls);
	assert_int_equal(svc_amqp_connect(c, "amqps://u:s3cret@127.0.0.1:1/", 0, "t"), SVC_ECONN);
	assert_string_equal(svc_amqp_error(c),
	                    "BROKER_TLS.ca_file /nonexistent/ca.pem: cannot read "
	                    "it (No such file or directory)");
	tls.ca_file = NULL;
	tls.cert_file = "/proc/self/cmdline"; /* readable, not PEM */
	svc_amqp_set_tls(c, &tls);
	assert_int_equal(svc_amqp_connect(c, "amqps://u:s3cret@127.0.0.1:1/", 0, "t"), SVC_ECONN);
	assert_non_null(
	    strstr(svc_amqp_error(c), "BROKER_TLS.cert_file /proc/self/cmdline: cannot load it ("));
	tls.cert_file = "/nonexistent/client.pem";
	svc_amqp_set_tls(c, &tls);
	assert_int_equal(svc_amqp_connect(c, "amqps://u:s3cret@127.0.0.1:1/", 0, "t"), SVC_ECONN);
	assert_non_null(strstr(svc_amqp_error(c), "BROKER_TLS.cert_file /nonexistent/client.pem"));
	svc_amqp_set_tls(c, NULL); /* defaults: the system store, then the refused port */
	assert_int_equal(svc_amqp_connect(c, "amqps://u:s3cret@127.0.0.1:1/", 0, "t"), SVC_ECONN);
	assert_non_null(strstr(svc_amqp_error(c), "cannot connect to 127.0.0.1:1"));
	assert_null(strstr(svc_amqp_error(c), "s3cret"));
	assert_false(svc_amqp_is_open(c));
	svc_amqp_free(c);
}

static void calls_on_a_closed_connection_fail_cleanly(void **state)
{
	struct svc_amqp *c = svc_amqp_new();
	struct svc_amqp_exchange ex = {.name = "x", .type = "topic"};
	struct svc_amqp_confirm conf[4];
	size_t n = 7;
	uint64_t seq = 0;

	(void)state;
	assert_int_equal(svc_amqp_declare_exchange(c, &ex, false), SVC_ECONN);
	assert_int_equal(svc_amqp_declare_queue(c, "q", amqp_empty_table, false), SVC_ECONN);
	assert_int_equal(svc_amqp_bind(c, "q", "x", "#"), SVC_ECONN);
	assert_int_equal(svc_amqp_confirm_select(c), SVC_ECONN);
	assert_int_equal(svc_amqp_publish(c, "x", "k", "{}", 2, NULL, true, &seq), SVC_ECONN);
	assert_int_equal(svc_amqp_poll_confirms(c, 0, conf, 4, &n, NULL, NULL), SVC_ECONN);
	assert_int_equal(n, 0);
	assert_false(svc_amqp_buffered(c));
	assert_false(svc_amqp_confirm_mode(c));
	assert_int_equal(svc_amqp_last_seq(c), 0);
	assert_int_equal(svc_amqp_read_frame_max(c, 1 << 20), SVC_ECONN);
	svc_amqp_mark_broken(c); /* safe when closed: nothing to destroy */
	assert_false(svc_amqp_is_open(c));
	svc_amqp_close(c); /* safe when closed */
	svc_amqp_close(c);
	svc_amqp_free(c);
	svc_amqp_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(invalid_url_is_einval),
	    cmocka_unit_test(refused_connection_is_econn_without_password),
	    cmocka_unit_test(tls_files_are_named_in_errors),
	    cmocka_unit_test(calls_on_a_closed_connection_fail_cleanly),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
