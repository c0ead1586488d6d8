/* Unit tests of pg/session.c's deferred statements (svc_pg_send / svc_pg_sync) against the
 * local PostgreSQL (SVCCOMM_DATABASE_URL, from `scripts/servers.sh env`): queuing, reading
 * one's own writes, the late error, the bound, the Parse cache. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg/conn.h"
#include "util/error.h"

static PGconn *open_db(void)
{
	const char *url = getenv("SVCCOMM_DATABASE_URL");
	char err[SVC_PG_ERRSZ];
	PGconn *conn;

	if (!url || !*url)
		fail_msg("SVCCOMM_DATABASE_URL is not set: run eval \"$(scripts/servers.sh env)\" "
		         "first");
	conn = svc_pg_open(url, "svccomm-unit", err, sizeof(err));
	if (!conn)
		fail_msg("%s", err);
	return conn;
}

static void exec_ok(PGconn *conn, const char *sql)
{
	PGresult *r = PQexec(conn, sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
		fail_msg("%s: %s", sql, PQresultErrorMessage(r));
	PQclear(r);
}

static long long count_rows(PGconn *conn)
{
	PGresult *r = svc_pg_query(conn, "SELECT count(*) FROM t_pipe", 0, NULL, false);
	long long n;
	assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
	n = atoll(PQgetvalue(r, 0, 0));
	PQclear(r);
	return n;
}

/* Not allowed, or no connection: nothing is queued, the caller runs the statement itself. */
static void test_not_allowed(void **state)
{
	PGconn *conn = open_db();
	(void)state;
	assert_int_equal(svc_pg_send(conn, "SELECT 1", 0, NULL), SVC_EINVAL);
	assert_int_equal(svc_pg_pipeline_allow(conn, true), 0);
	assert_int_equal(svc_pg_pipeline_allow(conn, false), 0);
	assert_int_equal(svc_pg_send(conn, "SELECT 1", 0, NULL), SVC_EINVAL);
	assert_int_equal(svc_pg_pipeline_pending(conn), 0);
	assert_int_equal(svc_pg_pipeline_allow(NULL, true), SVC_ENOMEM);
	assert_int_equal(svc_pg_pipeline_pending(NULL), 0);
	assert_null(svc_pg_late_error(NULL));
	assert_int_equal(svc_pg_sync(NULL), 0);
	PQfinish(conn);
}

/* Queued with the prelude, prepared on first use; a later statement reads them first. */
static void test_queue_and_read_own_writes(void **state)
{
	static const char *const begin[] = {"BEGIN"};
	const char *one[] = {"1"}, *two[] = {"2"};
	PGconn *conn = open_db();
	(void)state;
	exec_ok(conn, "CREATE TEMP TABLE t_pipe (a int PRIMARY KEY)");
	assert_int_equal(svc_pg_pipeline_allow(conn, true), 0);
	assert_int_equal(svc_pg_set_prelude(conn, begin, 1), 0);
	assert_int_equal(svc_pg_send(conn, "INSERT INTO t_pipe VALUES ($1)", 1, one), 0);
	assert_false(svc_pg_prelude_pending(conn));
	assert_int_equal(svc_pg_pipeline_pending(conn), 3); /* BEGIN, Parse, execution */
	assert_int_equal(svc_pg_send(conn, "INSERT INTO t_pipe VALUES ($1)", 1, two), 0);
	assert_int_equal(svc_pg_pipeline_pending(conn), 4); /* prepared: no second Parse */
	assert_int_equal(count_rows(conn), 2);
	assert_int_equal(svc_pg_pipeline_pending(conn), 0);
	assert_null(svc_pg_late_error(conn));
	assert_int_equal(PQtransactionStatus(conn), PQTRANS_INTRANS);
	exec_ok(conn, "ROLLBACK");
	PQfinish(conn);
}

/* A failure is read at the sync, kept until the reset; the statements after it did not run. */
static void test_late_error(void **state)
{
	const char *one[] = {"1"}, *three[] = {"3"};
	PGconn *conn = open_db();
	PGresult *r;
	(void)state;
	exec_ok(conn, "CREATE TEMP TABLE t_pipe (a int PRIMARY KEY)");
	exec_ok(conn, "INSERT INTO t_pipe VALUES (1)");
	exec_ok(conn, "BEGIN");
	assert_int_equal(svc_pg_pipeline_allow(conn, true), 0);
	assert_int_equal(svc_pg_send(conn, "INSERT INTO t_pipe VALUES ($1)", 1, one), 0);
	assert_int_equal(svc_pg_send(conn, "INSERT INTO t_pipe VALUES ($1)", 1, three), 0);
	assert_int_equal(svc_pg_sync(conn), SVC_EDB);
	assert_non_null(svc_pg_late_error(conn));
	assert_string_equal(PQresultErrorField(svc_pg_late_error(conn), PG_DIAG_SQLSTATE), "23505");
	/* kept: nothing more is queued until the owner rolls back */
	assert_int_equal(svc_pg_send(conn, "SELECT 1", 0, NULL), SVC_EDB);
	assert_int_equal(PQtransactionStatus(conn), PQTRANS_INERROR);
	svc_pg_pipeline_reset(conn);
	assert_null(svc_pg_late_error(conn));
	exec_ok(conn, "ROLLBACK");
	assert_int_equal(count_rows(conn), 1);
	/* a statement that needs results reads the failure and returns an error in its place */
	exec_ok(conn, "BEGIN");
	assert_int_equal(svc_pg_send(conn, "INSERT INTO t_pipe VALUES ($1)", 1, one), 0);
	r = svc_pg_query(conn, "SELECT 1", 0, NULL, false);
	assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
	PQclear(r);
	assert_non_null(svc_pg_late_error(conn));
	svc_pg_pipeline_reset(conn);
	exec_ok(conn, "ROLLBACK");
	PQfinish(conn);
}

/* A Parse that failed is not cached: the next use of the text parses it again. */
static void test_failed_parse_is_forgotten(void **state)
{
	PGconn *conn = open_db();
	(void)state;
	exec_ok(conn, "BEGIN");
	assert_int_equal(svc_pg_pipeline_allow(conn, true), 0);
	assert_int_equal(svc_pg_send(conn, "INSERT INTO t_pipe_later VALUES (1)", 0, NULL), 0);
	assert_int_equal(svc_pg_pipeline_pending(conn), 2);
	assert_int_equal(svc_pg_sync(conn), SVC_EDB);
	assert_string_equal(PQresultErrorField(svc_pg_late_error(conn), PG_DIAG_SQLSTATE), "42P01");
	svc_pg_pipeline_reset(conn);
	exec_ok(conn, "ROLLBACK");
	exec_ok(conn, "CREATE TEMP TABLE t_pipe_later (a int)");
	exec_ok(conn, "BEGIN");
	assert_int_equal(svc_pg_send(conn, "INSERT INTO t_pipe_later VALUES (1)", 0, NULL), 0);
	assert_int_equal(svc_pg_pipeline_pending(conn), 2); /* Parse again, under a new name */
	assert_int_equal(svc_pg_sync(conn), 0);
	exec_ok(conn, "COMMIT");
	PQfinish(conn);
}

/* At most SVC_PG_PIPELINE_MAX statements wait: past it, a sync reads them. */
static void test_bound(void **state)
{
	PGconn *conn = open_db();
	char val[16];
	const char *p[] = {val};
	(void)state;
	exec_ok(conn, "CREATE TEMP TABLE t_pipe (a int PRIMARY KEY)");
	exec_ok(conn, "BEGIN");
	assert_int_equal(svc_pg_pipeline_allow(conn, true), 0);
	for (int i = 0; i < 2500; i++) {
		snprintf(val, sizeof(val), "%d", i);
		assert_int_equal(svc_pg_send(conn, "INSERT INTO t_pipe VALUES ($1)", 1, p), 0);
		assert_true(svc_pg_pipeline_pending(conn) <= SVC_PG_PIPELINE_MAX);
	}
	assert_true(svc_pg_pipeline_pending(conn) < 2500);
	assert_int_equal(count_rows(conn), 2500);
	exec_ok(conn, "ROLLBACK");
	PQfinish(conn);
}

/* COPY is never queued (COPY FROM STDIN in a pipeline makes the server end the session): the
 * caller runs it at once, where svccomm.db refuses it cleanly. */
static void test_copy_not_queued(void **state)
{
	PGconn *conn = open_db();
	(void)state;
	exec_ok(conn, "BEGIN");
	assert_int_equal(svc_pg_pipeline_allow(conn, true), 0);
	assert_int_equal(svc_pg_send(conn, "COPY t FROM STDIN", 0, NULL), SVC_EINVAL);
	assert_int_equal(svc_pg_send(conn, "  copy\tt FROM STDIN", 0, NULL), SVC_EINVAL);
	assert_int_equal(
	    svc_pg_send(conn, "/* a /* nested */ one */ -- and a line\nCoPy t TO STDOUT", 0, NULL),
	    SVC_EINVAL);
	assert_int_equal(svc_pg_send(conn, "copy", 0, NULL), SVC_EINVAL);
	assert_int_equal(svc_pg_pipeline_pending(conn), 0);
	/* a word that only starts with it is not COPY */
	assert_int_equal(svc_pg_send(conn, "SELECT 1 AS copy", 0, NULL), 0);
	assert_int_equal(svc_pg_send(conn, "/* copy */ SELECT 2 AS copying", 0, NULL), 0);
	assert_int_equal(svc_pg_send(conn, "cop", 0, NULL), 0); /* a syntax error, read late */
	assert_int_equal(svc_pg_sync(conn), SVC_EDB);
	assert_string_equal(PQresultErrorField(svc_pg_late_error(conn), PG_DIAG_SQLSTATE), "42601");
	svc_pg_pipeline_reset(conn);
	exec_ok(conn, "ROLLBACK");
	PQfinish(conn);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_not_allowed), cmocka_unit_test(test_queue_and_read_own_writes),
	    cmocka_unit_test(test_late_error),  cmocka_unit_test(test_failed_parse_is_forgotten),
	    cmocka_unit_test(test_bound),       cmocka_unit_test(test_copy_not_queued),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
