/* Unit tests of pg/conn.c and pg/session.c without a server: SQLSTATE classification, error
 * texts that never carry the password, statements on a closed connection, the prelude. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "pg/conn.h"
#include "util/error.h"
#include "util/ident.h"

static void test_sqlstate_classes(void **state)
{
	(void)state;
	assert_true(svc_pg_sqlstate_is_conn("08006"));
	assert_true(svc_pg_sqlstate_is_conn("08001"));
	assert_true(svc_pg_sqlstate_is_conn("57P01"));
	assert_true(svc_pg_sqlstate_is_conn("57P02"));
	assert_true(svc_pg_sqlstate_is_conn("57P03"));
	/* read-only: no primary any more; a new connection (target_session_attrs) finds it */
	assert_true(svc_pg_sqlstate_is_conn("25006"));
	assert_false(
	    svc_pg_sqlstate_is_conn("25P02")); /* in failed transaction: a statement error */
	assert_false(svc_pg_sqlstate_is_conn("57014")); /* query canceled: a statement error */
	assert_false(svc_pg_sqlstate_is_conn("23505"));
	assert_false(svc_pg_sqlstate_is_conn("40001"));
	assert_false(svc_pg_sqlstate_is_conn(""));
	assert_false(svc_pg_sqlstate_is_conn(NULL));
	assert_false(svc_pg_sqlstate_is_conn("08"));
}

/* Class 22 (data exception) is the fault of whoever sent the value: the inbox dead-letters. */
static void test_sqlstate_data(void **state)
{
	(void)state;
	assert_true(svc_pg_sqlstate_is_data("22021")); /* character_not_in_repertoire */
	assert_true(svc_pg_sqlstate_is_data("22001")); /* string_data_right_truncation */
	assert_true(svc_pg_sqlstate_is_data("22P05")); /* untranslatable_character */
	assert_false(svc_pg_sqlstate_is_data("08006"));
	assert_false(svc_pg_sqlstate_is_data("42P01"));
	assert_false(svc_pg_sqlstate_is_data("23505"));
	assert_false(svc_pg_sqlstate_is_data("22"));
	assert_false(svc_pg_sqlstate_is_data(""));
	assert_false(svc_pg_sqlstate_is_data(NULL));
}

static void test_status_names(void **state)
{
	(void)state;
	assert_string_equal(svc_pg_transaction_status_name(PQTRANS_IDLE), "idle");
	assert_string_equal(svc_pg_transaction_status_name(PQTRANS_INTRANS), "intrans");
	assert_string_equal(svc_pg_transaction_status_name(PQTRANS_INERROR), "inerror");
	assert_string_equal(svc_pg_transaction_status_name(PQTRANS_ACTIVE), "active");
	assert_string_equal(svc_pg_transaction_status_name(PQTRANS_UNKNOWN), "unknown");
}

static void test_bad_conninfo_hides_password(void **state)
{
	char err[SVC_PG_ERRSZ];
	PGconn *c;
	(void)state;
	c = svc_pg_open("host=localhost password=hunter2secret port", NULL, err, sizeof(err));
	assert_null(c);
	assert_non_null(strstr(err, "invalid database connection string"));
	assert_null(strstr(err, "hunter2secret"));
	c = svc_pg_open("postgresql://u:hunter2secret@localhost:5432/db?bogus=%zz", NULL, err,
	                sizeof(err));
	assert_null(c);
	assert_null(strstr(err, "hunter2secret"));
}

static void test_refused_connection(void **state)
{
	struct svc_pg pg;
	(void)state;
	svc_pg_init(&pg);
	/* port 1 on loopback: nothing listens there */
	assert_int_equal(svc_pg_connect(&pg, "postgresql://u:hunter2secret@127.0.0.1:1/db", "t"),
	                 SVC_ECONN);
	assert_false(svc_pg_is_ok(&pg));
	assert_string_equal(svc_pg_sqlstate(&pg), "08001");
	assert_true(strlen(svc_pg_error(&pg)) > 0);
	assert_null(strstr(svc_pg_error(&pg), "hunter2secret"));
	/* statements on a closed connection are connection errors, not statement errors */
	assert_int_equal(svc_pg_exec(&pg, "SELECT 1", 0, NULL, NULL), SVC_ECONN);
	assert_int_equal(
	    svc_pg_exec_simple(pg.conn, "BEGIN", pg.error, sizeof(pg.error), pg.sqlstate),
	    SVC_ECONN);
	assert_string_equal(svc_pg_sqlstate(&pg), "08003");
	/* savepoint names were checked as plain identifiers (the rule of util/ident.h) before
	 * any SQL was built */
	assert_false(svc_ident_part_ok("bad name; drop", strlen("bad name; drop")));
	assert_false(svc_ident_part_ok("1x", 2));
	assert_true(svc_ident_part_ok("svc_msg", 7));
	svc_pg_release(&pg);
	assert_null(pg.conninfo);
}

static void test_result_error_without_result(void **state)
{
	char err[64], st[6];
	(void)state;
	assert_int_equal(svc_pg_result_error(NULL, NULL, PGRES_COMMAND_OK, err, sizeof(err), st),
	                 SVC_ECONN);
	assert_string_equal(err, "no connection");
}

static void test_exec_without_connection(void **state)
{
	char err[64] = "", st[6] = "x";
	PGresult *res = (PGresult *)1;
	(void)state;
	assert_int_equal(svc_pg_exec_params(NULL, "SELECT 1", 0, NULL, &res, err, sizeof(err), st),
	                 SVC_ECONN);
	assert_null(res);
	assert_string_equal(err, "not connected");
	assert_string_equal(st, "08003");
	assert_int_equal(svc_pg_exec_simple(NULL, "SELECT 1", NULL, 0, NULL), SVC_ECONN);
}

/* The prelude is state of the PGconn (libpq instance data): it exists on a connection that
 * failed too, and nothing is sent until the next statement. */
static void test_multi_line_error_is_one_line(void **state)
{
	char err[256];

	(void)state;
	svc_pg_set_error(err, sizeof(err),
	                 "ERROR:  duplicate key value violates unique constraint \"t_pkey\"\n"
	                 "DETAIL:  Key (id)=(1) already exists.\nHINT:  try again\n");
	assert_string_equal(err, "ERROR:  duplicate key value violates unique constraint "
	                         "\"t_pkey\" | DETAIL:  Key (id)=(1) already exists. | HINT:  try "
	                         "again");
	svc_pg_set_error(err, sizeof(err), "ERROR:  syntax error\nLINE 1: selec 1\n        ^\n");
	assert_string_equal(err, "ERROR:  syntax error | LINE 1: selec 1 | ^");
	svc_pg_set_error(err, sizeof(err), "no newline ");
	assert_string_equal(err, "no newline");
	svc_pg_set_error(err, 12, "abcdefghij\nklm");
	assert_string_equal(err, "abcdefghij");
	assert_null(strchr(err, '\n'));
	svc_pg_set_error(err, sizeof(err), NULL);
	assert_string_equal(err, "unknown error");
}

static void test_prelude_state(void **state)
{
	static const char *const stmts[] = {"BEGIN", "SAVEPOINT svc_msg", "SELECT 1", "SELECT 2"};
	PGconn *conn = PQconnectdb("host=127.0.0.1 port=1 connect_timeout=2");
	PGresult *r;
	(void)state;
	assert_non_null(conn);
	assert_int_equal(PQstatus(conn), CONNECTION_BAD);
	assert_false(svc_pg_prelude_pending(conn));
	assert_int_equal(svc_pg_set_prelude(conn, stmts, SVC_PG_MAX_PRELUDE + 1), SVC_EINVAL);
	assert_int_equal(svc_pg_set_prelude(conn, stmts, -1), SVC_EINVAL);
	assert_int_equal(svc_pg_set_prelude(conn, stmts, 2), 0);
	assert_true(svc_pg_prelude_pending(conn));
	svc_pg_clear_prelude(conn);
	assert_false(svc_pg_prelude_pending(conn));
	/* a statement takes the prelude with it, also when it fails */
	assert_int_equal(svc_pg_set_prelude(conn, stmts, 2), 0);
	r = svc_pg_query(conn, "SELECT 1", 0, NULL, true);
	assert_int_not_equal(PQresultStatus(r), PGRES_TUPLES_OK);
	PQclear(r);
	assert_false(svc_pg_prelude_pending(conn));
	/* ahead of the prelude: it stays pending */
	assert_int_equal(svc_pg_set_prelude(conn, stmts, 1), 0);
	r = svc_pg_query_before_prelude(conn, "SELECT 1", 0, NULL, false);
	PQclear(r);
	assert_true(svc_pg_prelude_pending(conn));
	assert_int_equal(svc_pg_set_prelude(NULL, stmts, 1), SVC_ENOMEM);
	assert_int_equal(svc_pg_set_prelude(NULL, stmts, 0), 0);
	PQfinish(conn);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sqlstate_classes),
	    cmocka_unit_test(test_sqlstate_data),
	    cmocka_unit_test(test_status_names),
	    cmocka_unit_test(test_bad_conninfo_hides_password),
	    cmocka_unit_test(test_refused_connection),
	    cmocka_unit_test(test_result_error_without_result),
	    cmocka_unit_test(test_exec_without_connection),
	    cmocka_unit_test(test_prelude_state),
	    cmocka_unit_test(test_multi_line_error_is_one_line),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
