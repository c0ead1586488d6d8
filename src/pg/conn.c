/* pg/conn: opening sessions, error texts and classes, struct svc_pg. See conn.h. */
#include "pg/conn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "util/secret.h"
#include "util/error.h"

#define SESSION_OPTIONS "-c TimeZone=UTC -c DateStyle=ISO"

void svc_pg_set_error(char *err, size_t errsz, const char *msg)
{
	size_t n = 0;

	if (!err || !errsz)
		return;
	if (!msg)
		msg = "unknown error";
	/* libpq's messages span lines ("ERROR: ...\nDETAIL: ...\nHINT: ...\n", "LINE 1: ..."
	 * with a caret line under it): one event is one log line, so each line break and the
	 * indentation after it become " | ", and the trailing newlines go. */
	for (const char *p = msg; *p && n + 1 < errsz;) {
		if (*p == '\n' || *p == '\r') {
			while (*p == '\n' || *p == '\r' || *p == ' ' || *p == '\t')
				p++;
			if (!*p || n + 4 >= errsz)
				break;
			memcpy(err + n, " | ", 3);
			n += 3;
			continue;
		}
		err[n++] = *p++;
	}
	while (n && err[n - 1] == ' ')
		n--;
	err[n] = '\0';
}

/* libpq's errors may quote the connection string or a piece of it (a parse error, a host
 * name made of the end of a password with an unencoded '@'): never return one unscrubbed. */
static void scrub(char *err, size_t errsz, const char *conninfo)
{
	char *copy;

	if (!err || !errsz || !conninfo || !(copy = strdup(err)))
		return;
	svc_secret_scrub(copy, conninfo, err, errsz);
	free(copy);
}

static void notice_to_log(void *arg, const char *message)
{
	size_t n = strlen(message);

	(void)arg;
	while (n && message[n - 1] == '\n')
		n--;
	svc_debug("pg", "%.*s", (int)n, message);
}

static bool option_set(const PQconninfoOption *opts, const char *key)
{
	for (const PQconninfoOption *o = opts; o->keyword; o++)
		if (strcmp(o->keyword, key) == 0)
			return o->val && o->val[0];
	return false;
}

/* The connection parameters of svc_pg_open: the user's conninfo, svccomm's defaults for what it
 * leaves unset, and the session options appended to any "options" it gives. keys/vals must
 * hold every option of opts plus N_DEFAULTS + 3 entries; *options receives what to free. */
static const char *const defaults[][2] = {
    {"keepalives", "1"},       {"keepalives_idle", "30"}, {"keepalives_interval", "10"},
    {"keepalives_count", "3"}, {"connect_timeout", "10"},
};
#define N_DEFAULTS (sizeof(defaults) / sizeof(defaults[0]))

static int build_params(const PQconninfoOption *opts, const char *application_name,
                        const char **keys, const char **vals, char **options)
{
	size_t i = 0;

	for (const PQconninfoOption *o = opts; o->keyword; o++) {
		if (!o->val)
			continue;
		if (strcmp(o->keyword, "options") != 0) {
			keys[i] = o->keyword;
			vals[i++] = o->val;
		} else if (o->val[0]) {
			size_t len = strlen(o->val) + sizeof(SESSION_OPTIONS) + 2;

			free(*options);
			*options = malloc(len);
			if (!*options)
				return SVC_ENOMEM;
			snprintf(*options, len, "%s %s", o->val, SESSION_OPTIONS);
		}
	}
	for (size_t d = 0; d < N_DEFAULTS; d++) {
		if (!option_set(opts, defaults[d][0])) {
			keys[i] = defaults[d][0];
			vals[i++] = defaults[d][1];
		}
	}
	if (!option_set(opts, "fallback_application_name")) {
		keys[i] = "fallback_application_name";
		vals[i++] = application_name ? application_name : "svccomm";
	}
	keys[i] = "options";
	vals[i++] = *options ? *options : SESSION_OPTIONS;
	keys[i] = NULL;
	vals[i] = NULL;
	return 0;
}

int svc_pg_target(PGconn *conn, char *out, size_t outsz)
{
	const char *db = conn ? PQdb(conn) : NULL, *host, *port, *user;

	if (!db)
		return SVC_EINVAL;
	host = PQhost(conn);
	port = PQport(conn);
	user = PQuser(conn);
	snprintf(out, outsz, "database \"%s\" on %s:%s as %s", db,
	         host && *host ? host : "localhost", port && *port ? port : "5432",
	         user ? user : "?");
	return 0;
}

/* Appends which database the failed connection was for: with several services and an
 * exported SVCCOMM_DATABASE_URL, "which database?" is the first question. No password. */
static void name_target(PGconn *conn, char *err, size_t errsz)
{
	char target[512];
	size_t n = strlen(err);

	if (n + 1 >= errsz || svc_pg_target(conn, target, sizeof(target)) != 0)
		return;
	snprintf(err + n, errsz - n, " (%s)", target);
}

/* Connects with the built parameters; errors are scrubbed of conninfo's passwords. */
static PGconn *connect_params(const char **keys, const char **vals, const char *conninfo, char *err,
                              size_t errsz)
{
	PGconn *conn = PQconnectdbParams(keys, vals, 0);

	if (!conn) {
		svc_pg_set_error(err, errsz, "out of memory");
		return NULL;
	}
	if (PQstatus(conn) != CONNECTION_OK) {
		svc_pg_set_error(err, errsz, PQerrorMessage(conn));
		name_target(conn, err, errsz); /* before scrub: the host may hold a piece of it */
		scrub(err, errsz, conninfo);
		PQfinish(conn);
		return NULL;
	}
	/* Notices (e.g. "relation already exists, skipping") go to our log, not stderr. */
	PQsetNoticeProcessor(conn, notice_to_log, NULL);
	svc_debug("pg", "connected to %s:%s/%s as %s", PQhost(conn), PQport(conn), PQdb(conn),
	          PQuser(conn));
	return conn;
}

PGconn *svc_pg_open(const char *conninfo, const char *application_name, char *err, size_t errsz)
{
	PQconninfoOption *opts;
	char *perr = NULL, *options = NULL;
	const char **keys = NULL, **vals = NULL;
	PGconn *conn = NULL;
	size_t n = N_DEFAULTS + 3;

	opts = PQconninfoParse(conninfo ? conninfo : "", &perr);
	if (!opts) {
		char buf[SVC_PG_ERRSZ];

		snprintf(buf, sizeof(buf), "invalid database connection string: %s",
		         perr ? perr : "out of memory");
		if (perr)
			PQfreemem(perr);
		svc_pg_set_error(err, errsz, buf);
		scrub(err, errsz, conninfo);
		return NULL;
	}
	for (const PQconninfoOption *o = opts; o->keyword; o++)
		n++;
	keys = calloc(n, sizeof(*keys));
	vals = calloc(n, sizeof(*vals));
	if (!keys || !vals || build_params(opts, application_name, keys, vals, &options) != 0)
		svc_pg_set_error(err, errsz, "out of memory");
	else
		conn = connect_params(keys, vals, conninfo, err, errsz);
	free(options);
	free(keys);
	free(vals);
	PQconninfoFree(opts);
	return conn;
}

bool svc_pg_sqlstate_is_conn(const char *s)
{
	if (!s || strlen(s) != 5)
		return false;
	if (s[0] == '0' && s[1] == '8')
		return true;
	/* 25006: the server went read-only (a demoted primary, a standby): with several hosts in
	 * the conninfo and target_session_attrs=read-write, a new connection finds the primary */
	return strcmp(s, "57P01") == 0 || strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0 ||
	       strcmp(s, "25006") == 0;
}

bool svc_pg_sqlstate_is_data(const char *s)
{
	return s && strlen(s) == 5 && s[0] == '2' && s[1] == '2';
}

int svc_pg_result_error(PGconn *conn, const PGresult *res, ExecStatusType want, char *err,
                        size_t errsz, char *sqlstate)
{
	const char *st;
	bool lost;

	if (res && PQresultStatus(res) == want) {
		if (sqlstate)
			sqlstate[0] = '\0';
		return 0;
	}
	if (!res) {
		svc_pg_set_error(err, errsz, conn ? PQerrorMessage(conn) : "no connection");
		if (sqlstate)
			strcpy(sqlstate, conn && PQstatus(conn) == CONNECTION_BAD ? "08006" : "");
		return conn && PQstatus(conn) != CONNECTION_BAD ? SVC_EDB : SVC_ECONN;
	}
	st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	if (PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK) {
		/* Succeeded, but not the kind of result the caller expects. */
		svc_pg_set_error(err, errsz, "unexpected result status");
		if (sqlstate)
			sqlstate[0] = '\0';
		return SVC_EDB;
	}
	svc_pg_set_error(err, errsz,
	                 PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
	                     ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
	                     : (PQresultErrorMessage(res)[0] ? PQresultErrorMessage(res)
	                                                     : PQerrorMessage(conn)));
	lost = (conn && PQstatus(conn) == CONNECTION_BAD) || svc_pg_sqlstate_is_conn(st);
	if (sqlstate) {
		if (st && strlen(st) == 5)
			strcpy(sqlstate, st);
		else
			strcpy(sqlstate, lost ? "08006" : "");
	}
	return lost ? SVC_ECONN : SVC_EDB;
}

const char *svc_pg_transaction_status_name(PGTransactionStatusType st)
{
	switch (st) {
	case PQTRANS_IDLE:
		return "idle";
	case PQTRANS_ACTIVE:
		return "active";
	case PQTRANS_INTRANS:
		return "intrans";
	case PQTRANS_INERROR:
		return "inerror";
	default:
		return "unknown";
	}
}

/* ---- struct svc_pg ------------------------------------------------------------------------ */

void svc_pg_init(struct svc_pg *pg)
{
	memset(pg, 0, sizeof(*pg));
}

void svc_pg_close(struct svc_pg *pg)
{
	if (pg->conn)
		PQfinish(pg->conn);
	pg->conn = NULL;
}

void svc_pg_release(struct svc_pg *pg)
{
	svc_pg_close(pg);
	free(pg->conninfo);
	free(pg->app_name);
	pg->conninfo = NULL;
	pg->app_name = NULL;
}

int svc_pg_reconnect(struct svc_pg *pg)
{
	svc_pg_close(pg);
	pg->sqlstate[0] = '\0';
	pg->error[0] = '\0';
	if (!pg->conninfo) {
		svc_pg_set_error(pg->error, sizeof(pg->error), "no connection string");
		return SVC_EINVAL;
	}
	pg->conn = svc_pg_open(pg->conninfo, pg->app_name, pg->error, sizeof(pg->error));
	if (!pg->conn) {
		strcpy(pg->sqlstate, "08001");
		return SVC_ECONN;
	}
	return 0;
}

int svc_pg_connect(struct svc_pg *pg, const char *conninfo, const char *application_name)
{
	char *ci = strdup(conninfo ? conninfo : "");
	char *an = application_name ? strdup(application_name) : NULL;

	if (!ci || (application_name && !an)) {
		free(ci);
		free(an);
		svc_pg_set_error(pg->error, sizeof(pg->error), "out of memory");
		return SVC_ENOMEM;
	}
	free(pg->conninfo);
	free(pg->app_name);
	pg->conninfo = ci;
	pg->app_name = an;
	return svc_pg_reconnect(pg);
}

bool svc_pg_is_ok(const struct svc_pg *pg)
{
	return pg->conn && PQstatus(pg->conn) == CONNECTION_OK;
}

const char *svc_pg_error(const struct svc_pg *pg)
{
	return pg->error;
}

const char *svc_pg_sqlstate(const struct svc_pg *pg)
{
	return pg->sqlstate;
}

int svc_pg_exec(struct svc_pg *pg, const char *sql, int nparams, const char *const *params,
                PGresult **res)
{
	return svc_pg_exec_params(pg->conn, sql, nparams, params, res, pg->error, sizeof(pg->error),
	                          pg->sqlstate);
}
