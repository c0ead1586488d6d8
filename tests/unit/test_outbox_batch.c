/* Unit tests of outbox/batch.c without a server: the deferred-row queue (marks, truncation),
 * poison and its reset, a deferred insert, and failures of a flush on a connection that is
 * gone. The state belongs to the PGconn, so a connection that failed to open carries it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "outbox/batch.h"
#include "outbox/write.h"
#include "pg/conn.h"
#include "util/error.h"

#define ROWS_SQL "INSERT INTO t SELECT * FROM json_to_recordset($1::json) AS r(a int)"

static int setup(void **state)
{
	PGconn *conn = PQconnectdb("host=127.0.0.1 port=1 connect_timeout=2");

	*state = conn;
	return conn && PQstatus(conn) == CONNECTION_BAD ? 0 : -1;
}

static int teardown(void **state)
{
	PQfinish(*state);
	return 0;
}

static void without_a_connection_nothing_is_queued(void **state)
{
	char err[64], st[6];
	(void)state;
	svc_outbox_set_deferral(NULL, true);
	assert_false(svc_outbox_deferral(NULL));
	assert_int_equal(svc_outbox_deferred_mark(NULL), 0);
	assert_int_equal(svc_outbox_flush_count(NULL), 0);
	assert_null(svc_outbox_poisoned(NULL));
	assert_int_equal(svc_outbox_flush(NULL, err, sizeof(err), st), 0);
	svc_outbox_deferred_truncate(NULL, 0);
	svc_outbox_transaction_reset(NULL);
}

static void deferral_is_per_connection_and_off_by_default(void **state)
{
	PGconn *conn = *state;
	(void)state;
	assert_false(svc_outbox_deferral(conn));
	svc_outbox_set_deferral(conn, true);
	assert_true(svc_outbox_deferral(conn));
	svc_outbox_set_deferral(conn, false);
	assert_false(svc_outbox_deferral(conn));
}

static void marks_and_truncation(void **state)
{
	PGconn *conn = *state;
	char err[128];

	assert_int_equal(svc_outbox_deferred_mark(conn), 0);
	assert_int_equal(svc_outbox_defer_row(conn, ROWS_SQL, "{\"a\":1}", err, sizeof(err), NULL),
	                 0);
	assert_int_equal(svc_outbox_deferred_mark(conn), 1);
	assert_int_equal(svc_outbox_defer_row(conn, ROWS_SQL, "{\"a\":2}", err, sizeof(err), NULL),
	                 0);
	assert_int_equal(svc_outbox_defer_row(conn, ROWS_SQL, "{\"a\":3}", err, sizeof(err), NULL),
	                 0);
	assert_int_equal(svc_outbox_deferred_mark(conn), 3);
	svc_outbox_deferred_truncate(conn, 1); /* a failed message's rows */
	assert_int_equal(svc_outbox_deferred_mark(conn), 1);
	svc_outbox_deferred_truncate(conn, 5); /* past the end: nothing to drop */
	assert_int_equal(svc_outbox_deferred_mark(conn), 1);
	svc_outbox_transaction_reset(conn);
	assert_int_equal(svc_outbox_deferred_mark(conn), 0);
	assert_int_equal(svc_outbox_flush_count(conn), 0); /* nothing was written */
}

static void a_failed_flush_poisons_until_the_transaction_ends(void **state)
{
	PGconn *conn = *state;
	char err[256], st[6];

	assert_int_equal(svc_outbox_defer_row(conn, ROWS_SQL, "{\"a\":1}", err, sizeof(err), NULL),
	                 0);
	assert_int_equal(svc_outbox_flush(conn, err, sizeof(err), st), SVC_ECONN);
	assert_true(strlen(err) > 0);
	assert_string_equal(st, "08006");
	assert_int_equal(svc_outbox_flush_count(conn), 1);
	assert_int_equal(svc_outbox_deferred_mark(conn), 0); /* the rows went with the flush */
	assert_non_null(svc_outbox_poisoned(conn));
	assert_string_equal(svc_outbox_poisoned(conn), err);
	svc_outbox_poison(conn, "a later reason"); /* the first one is kept */
	assert_string_equal(svc_outbox_poisoned(conn), err);
	svc_outbox_transaction_reset(conn);
	assert_null(svc_outbox_poisoned(conn));
	svc_outbox_poison(conn, "rows of a failed message were already written");
	assert_string_equal(svc_outbox_poisoned(conn),
	                    "rows of a failed message were already written");
	svc_outbox_transaction_reset(conn);
}

static void rows_of_another_statement_flush_the_queue_first(void **state)
{
	PGconn *conn = *state;
	char err[256];

	assert_int_equal(svc_outbox_defer_row(conn, ROWS_SQL, "{\"a\":1}", err, sizeof(err), NULL),
	                 0);
	/* another outbox table: the queued rows must be written first, which fails here */
	assert_int_equal(
	    svc_outbox_defer_row(conn, ROWS_SQL " -- other", "{\"a\":2}", err, sizeof(err), NULL),
	    SVC_ECONN);
	assert_int_equal(svc_outbox_flush_count(conn), 1);
	assert_non_null(svc_outbox_poisoned(conn));
	svc_outbox_transaction_reset(conn);
}

/* An outbox row on a deferring connection is queued without a round trip: it takes its id
 * when the batch is written (under the locks the transaction holds then), so none is known
 * yet. */
static void a_deferred_insert_takes_its_id_when_written(void **state)
{
	PGconn *conn = *state;
	struct svc_outbox_row row = {.exchange = "e",
	                             .routing_key = "k",
	                             .body = "{\"eventType\":\"k\"}",
	                             .envelope = true,
	                             .id_sequence = "t_id_seq"};
	char err[256], st[6];
	long long id = -1;

	svc_outbox_set_deferral(conn, true);
	assert_int_equal(svc_outbox_insert_st(conn, "t", &row, &id, err, sizeof(err), st), 0);
	assert_int_equal(id, 0);
	assert_int_equal(svc_outbox_deferred_mark(conn), 1);
	assert_int_equal(svc_outbox_flush_count(conn), 0);
	/* a sequence name that would break the statement's literal is refused, nothing queued */
	row.id_sequence = "t'_id_seq";
	assert_int_equal(svc_outbox_insert_st(conn, "t", &row, &id, err, sizeof(err), st),
	                 SVC_EINVAL);
	assert_int_equal(svc_outbox_deferred_mark(conn), 1);
	svc_outbox_transaction_reset(conn);
}

/* The batch state the consumer drives: deferral, poison, marks, flushes and the reset. */
static void batch_state_round_trip(void **state)
{
	PGconn *conn = *state;

	svc_outbox_set_deferral(conn, true);
	assert_true(svc_outbox_deferral(conn));
	svc_outbox_poison(conn, "x");
	assert_string_equal(svc_outbox_poisoned(conn), "x");
	assert_int_equal(svc_outbox_deferred_mark(conn), 0);
	svc_outbox_deferred_truncate(conn, 0);
	assert_int_equal(svc_outbox_flush_count(conn), 0);
	assert_int_equal(svc_outbox_flush(conn, NULL, 0, NULL), 0);
	svc_outbox_transaction_reset(conn);
	assert_null(svc_outbox_poisoned(conn));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(without_a_connection_nothing_is_queued),
	    cmocka_unit_test_setup_teardown(deferral_is_per_connection_and_off_by_default, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(marks_and_truncation, setup, teardown),
	    cmocka_unit_test_setup_teardown(a_failed_flush_poisons_until_the_transaction_ends,
	                                    setup, teardown),
	    cmocka_unit_test_setup_teardown(rows_of_another_statement_flush_the_queue_first, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(a_deferred_insert_takes_its_id_when_written, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(batch_state_round_trip, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
