#include "pg/conn.h"

#include <libpq-events.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "util/secret.h"
#include "util/error.h"

#define SESSION_OPTIONS "-c TimeZone=UTC -c DateStyle=ISO"

static void set_err(char *err, size_t errsz, const char *msg)
{
	size_t n;

	if (!err || !errsz)
		return;
	if (!msg)
		msg = "unknown error";
	n = strlen(msg);
	/* libpq messages end with newlines; they do not belong in one-line logs. */
	while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
		n--;
	if (n >= errsz)
		n = errsz - 1;
	memcpy(err, msg, n);
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

PGconn *svc_pg_open(const char *conninfo, const char *application_name, char *err, size_t errsz)
{
	PQconninfoOption *opts = NULL;
	char *perr = NULL;
	const char **keys = NULL, **vals = NULL;
	char *options = NULL;
	PGconn *conn = NULL;
	size_t n = 0, i = 0;
	static const char *const defaults[][2] = {
	    {"keepalives", "1"},       {"keepalives_idle", "30"}, {"keepalives_interval", "10"},
	    {"keepalives_count", "3"}, {"connect_timeout", "10"},
	};

	opts = PQconninfoParse(conninfo ? conninfo : "", &perr);
	if (!opts) {
		char buf[SVC_PG_ERRSZ];
		snprintf(buf, sizeof(buf), "invalid database connection string: %s",
		         perr ? perr : "out of memory");
		if (perr)
			PQfreemem(perr);
		set_err(err, errsz, buf);
		scrub(err, errsz, conninfo);
		return NULL;
	}
	for (const PQconninfoOption *o = opts; o->keyword; o++)
		n++;
	n += sizeof(defaults) / sizeof(defaults[0]) + 3;
	keys = calloc(n, sizeof(*keys));
	vals = calloc(n, sizeof(*vals));
	if (!keys || !vals) {
		set_err(err, errsz, "out of memory");
		goto out;
	}
	for (const PQconninfoOption *o = opts; o->keyword; o++) {
		if (!o->val || strcmp(o->keyword, "options") == 0)
			continue;
		keys[i] = o->keyword;
		vals[i] = o->val;
		i++;
	}
	for (size_t d = 0; d < sizeof(defaults) / sizeof(defaults[0]); d++) {
		if (option_set(opts, defaults[d][0]))
			continue;
		keys[i] = defaults[d][0];
		vals[i] = defaults[d][1];
		i++;
	}
	if (!option_set(opts, "fallback_application_name")) {
		keys[i] = "fallback_application_name";
		vals[i] = application_name ? application_name : "svccomm";
		i++;
	}
	for (const PQconninfoOption *o = opts; o->keyword; o++) {
		if (strcmp(o->keyword, "options") == 0 && o->val && o->val[0]) {
			size_t len = strlen(o->val) + sizeof(SESSION_OPTIONS) + 2;
			options = malloc(len);
			if (!options) {
				set_err(err, errsz, "out of memory");
				goto out;
			}
			snprintf(options, len, "%s %s", o->val, SESSION_OPTIONS);
		}
	}
	keys[i] = "options";
	vals[i] = options ? options : SESSION_OPTIONS;
	i++;
	keys[i] = NULL;
	vals[i] = NULL;

	conn = PQconnectdbParams(keys, vals, 0);
	if (!conn) {
		set_err(err, errsz, "out of memory");
	} else if (PQstatus(conn) != CONNECTION_OK) {
		set_err(err, errsz, PQerrorMessage(conn));
		scrub(err, errsz, conninfo);
		PQfinish(conn);
		conn = NULL;
	} else {
		/* Notices (e.g. "relation already exists, skipping") go to our log, not stderr. */
		PQsetNoticeProcessor(conn, notice_to_log, NULL);
		svc_debug("pg", "connected to %s:%s/%s as %s", PQhost(conn), PQport(conn),
		          PQdb(conn), PQuser(conn));
	}
out:
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
	return strcmp(s, "57P01") == 0 || strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0;
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
		set_err(err, errsz, conn ? PQerrorMessage(conn) : "no connection");
		if (sqlstate)
			strcpy(sqlstate, conn && PQstatus(conn) == CONNECTION_BAD ? "08006" : "");
		return conn && PQstatus(conn) != CONNECTION_BAD ? SVC_EDB : SVC_ECONN;
	}
	st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	if (PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK) {
		/* Succeeded, but not the kind of result the caller expects. */
		set_err(err, errsz, "unexpected result status");
		if (sqlstate)
			sqlstate[0] = '\0';
		return SVC_EDB;
	}
	set_err(err, errsz,
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

/* ---- per-connection state: prelude, prepared statements, deferred rows ------------------------
 */

#define MAX_PREPARED  16
#define ID_BLOCK_MIN  8         /* ids reserved by the first reservation of a transaction */
#define ID_BLOCK_MAX  128       /* each further reservation doubles, up to this */
#define MAX_ROW_BYTES (1 << 20) /* deferred rows are written early past this much JSON */

struct prepared {
	char *sql;
	char name[24];
};

struct conn_state {
	const char *prelude[SVC_PG_MAX_PRELUDE];
	int n_prelude;
	struct prepared prep[MAX_PREPARED];
	int n_prep;
	unsigned next_name;
	bool no_prepare; /* the session lost a prepared statement: unnamed ones only */
	/* deferred rows: JSON objects for one statement that takes them as a JSON array ($1) */
	bool deferral;
	char *rows_sql;
	char *rows; /* "[obj,obj,..." */
	size_t rows_len, rows_cap;
	size_t *row_end; /* rows_len after each row, for truncating */
	size_t n_rows, row_cap;
	unsigned long flushes; /* flushes so far (a caller can tell whether one happened) */
	bool poisoned;
	char poison[256];
	/* ids reserved in the current transaction */
	char *id_seq;
	long long ids[ID_BLOCK_MAX];
	int ids_n, ids_next, id_block, id_first_block, ids_used;
};

static void truncate_rows(struct conn_state *s, size_t mark)
{
	if (mark >= s->n_rows)
		return;
	s->n_rows = mark;
	s->rows_len = mark ? s->row_end[mark - 1] : 0;
}

static void transaction_reset(struct conn_state *s)
{
	truncate_rows(s, 0);
	s->poisoned = false;
	s->poison[0] = '\0';
	/* the next transaction starts with a block as large as this one used */
	s->id_first_block = s->ids_used > ID_BLOCK_MIN ? s->ids_used : ID_BLOCK_MIN;
	s->ids_used = 0;
	s->ids_n = s->ids_next = 0;
	s->id_block = 0;
}

static void state_forget(struct conn_state *s)
{
	for (int i = 0; i < s->n_prep; i++)
		free(s->prep[i].sql);
	s->n_prep = 0;
	s->n_prelude = 0;
	transaction_reset(s);
	free(s->id_seq);
	free(s->rows_sql);
	free(s->rows);
	free(s->row_end);
	s->id_seq = s->rows_sql = s->rows = NULL;
	s->row_end = NULL;
	s->rows_cap = s->row_cap = 0;
}

static int state_proc(PGEventId id, void *info, void *pass)
{
	(void)pass;
	if (id == PGEVT_REGISTER) {
		struct conn_state *s = calloc(1, sizeof(*s));
		PGEventRegister *e = info;

		return s && PQsetInstanceData(e->conn, state_proc, s) ? 1 : (free(s), 0);
	}
	if (id == PGEVT_CONNRESET) {
		PGEventConnReset *e = info;
		struct conn_state *s = PQinstanceData(e->conn, state_proc);

		if (s)
			state_forget(s); /* a new session: its prepared statements are gone */
	} else if (id == PGEVT_CONNDESTROY) {
		PGEventConnDestroy *e = info;
		struct conn_state *s = PQinstanceData(e->conn, state_proc);

		if (s) {
			state_forget(s);
			free(s);
		}
	}
	return 1;
}

static struct conn_state *conn_state(PGconn *conn, bool create)
{
	struct conn_state *s;

	if (!conn)
		return NULL;
	s = PQinstanceData(conn, state_proc);
	if (!s && create && PQregisterEventProc(conn, state_proc, "svccomm", NULL))
		s = PQinstanceData(conn, state_proc);
	return s;
}

int svc_pg_set_prelude(PGconn *conn, const char *const *stmts, int n)
{
	struct conn_state *s;

	if (n < 0 || n > SVC_PG_MAX_PRELUDE)
		return SVC_EINVAL;
	s = conn_state(conn, n > 0);
	if (!s)
		return n > 0 ? SVC_ENOMEM : 0;
	for (int i = 0; i < n; i++)
		s->prelude[i] = stmts[i];
	s->n_prelude = n;
	return 0;
}

bool svc_pg_prelude_pending(PGconn *conn)
{
	struct conn_state *s = conn_state(conn, false);

	return s && s->n_prelude > 0;
}

void svc_pg_clear_prelude(PGconn *conn)
{
	struct conn_state *s = conn_state(conn, false);

	if (s)
		s->n_prelude = 0;
}

/* The cached statement for sql, or NULL. */
static struct prepared *find_prepared(struct conn_state *s, const char *sql)
{
	for (int i = 0; i < s->n_prep; i++) {
		if (strcmp(s->prep[i].sql, sql) == 0)
			return &s->prep[i];
	}
	return NULL;
}

/* Reads results up to the pipeline's PGRES_PIPELINE_SYNC (at most `queued` query results and
 * their terminating NULLs before it), or until the connection fails. */
static void drain_to_sync(PGconn *conn, int queued)
{
	int nulls = 0;
	PGresult *r;

	while (nulls <= queued) {
		r = PQgetResult(conn);
		if (!r) {
			if (PQstatus(conn) != CONNECTION_OK)
				return;
			nulls++;
			continue;
		}
		if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
			PQclear(r);
			return;
		}
		PQclear(r);
	}
}

/* One round trip: the prelude, an optional Parse and the statement. Returns the statement's
 * result, or the first error of the pipeline. */
static PGresult *run_pipeline(PGconn *conn, struct conn_state *s, const char *sql, int nparams,
                              const char *const *params, struct prepared *stmt, bool parse)
{
	PGresult *keep = NULL, *err = NULL, *r;
	int total = 0, n_prelude = s->n_prelude;
	bool sent;

	s->n_prelude = 0; /* sent now, or failed with the statement */
	if (PQenterPipelineMode(conn) != 1) {
		/* not possible now (e.g. a COPY in progress): one statement after the other */
		for (int i = 0; i < n_prelude; i++) {
			r = PQexec(conn, s->prelude[i]);
			if (PQresultStatus(r) != PGRES_COMMAND_OK)
				return r;
			PQclear(r);
		}
		return PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
	}
	sent = true;
	for (int i = 0; sent && i < n_prelude; i++, total++)
		sent = PQsendQueryParams(conn, s->prelude[i], 0, NULL, NULL, NULL, NULL, 0) == 1;
	if (sent && parse) {
		sent = PQsendPrepare(conn, stmt->name, sql, nparams, NULL) == 1;
		total++;
	}
	if (sent) {
		sent = stmt ? PQsendQueryPrepared(conn, stmt->name, nparams, params, NULL, NULL, 0)
		            : PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
		total++;
	}
	if (sent)
		sent = PQpipelineSync(conn) == 1;
	if (!sent) {
		/* out of memory or the connection is gone: settle what was queued */
		err = PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
		if (PQpipelineSync(conn) == 1)
			drain_to_sync(conn, total);
		PQexitPipelineMode(conn);
		return err;
	}
	for (int k = 0; k < total; k++) {
		ExecStatusType st;

		r = PQgetResult(conn);
		if (!r)
			break; /* the connection failed: libpq already gave the error */
		st = PQresultStatus(r);
		if (parse && k == n_prelude && st == PGRES_COMMAND_OK && !err) {
			stmt->sql = strdup(sql);
			if (stmt->sql)
				s->n_prep++;
		}
		if ((st == PGRES_FATAL_ERROR || st == PGRES_PIPELINE_ABORTED) && !err)
			err = r;
		else if (k == total - 1 && !err)
			keep = r;
		else
			PQclear(r);
		while ((r = PQgetResult(conn)) != NULL) /* the NULL that ends each query */
			PQclear(r);
	}
	drain_to_sync(conn, 0);
	PQexitPipelineMode(conn);
	if (err) {
		PQclear(keep);
		return err;
	}
	return keep ? keep : PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
}

/* A cached statement whose execution failed is forgotten (prepared again, under a new name, at
 * its next use: e.g. "cached plan must not change result type" after the table changed). When
 * the server no longer knows a statement this session prepared (26000, as behind a pooler that
 * hands out other server sessions), the connection stops preparing statements. */
static void forget_failed(struct conn_state *s, const char *sql, const PGresult *r)
{
	const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	struct prepared *stmt = find_prepared(s, sql);

	if (code && strcmp(code, "26000") == 0) {
		for (int i = 0; i < s->n_prep; i++)
			free(s->prep[i].sql);
		s->n_prep = 0;
		s->no_prepare = true;
	} else if (stmt) {
		free(stmt->sql);
		*stmt = s->prep[--s->n_prep];
	}
}

PGresult *svc_pg_query(PGconn *conn, const char *sql, int nparams, const char *const *params,
                       bool prepare)
{
	struct conn_state *s = conn_state(conn, prepare);
	struct prepared *stmt = NULL;
	bool parse = false;
	PGresult *r;

	if (s && prepare && !s->no_prepare) {
		stmt = find_prepared(s, sql);
		if (!stmt && s->n_prep < MAX_PREPARED) {
			stmt = &s->prep[s->n_prep];
			snprintf(stmt->name, sizeof(stmt->name), "svccomm_%u", s->next_name++);
			stmt->sql = NULL; /* recorded once the Parse succeeded */
			parse = true;
		}
	}
	if (s && (s->n_prelude > 0 || parse))
		r = run_pipeline(conn, s, sql, nparams, params, stmt, parse);
	else if (stmt)
		r = PQexecPrepared(conn, stmt->name, nparams, params, NULL, NULL, 0);
	else
		return PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
	if (stmt && PQresultStatus(r) == PGRES_FATAL_ERROR)
		forget_failed(s, sql, r);
	return r;
}

PGresult *svc_pg_query_text(PGconn *conn, const char *sql)
{
	struct conn_state *s = conn_state(conn, false);
	PGresult *r;
	size_t len;
	char *text;

	if (!s || s->n_prelude == 0)
		return PQexec(conn, sql);
	len = strlen(sql) + 1;
	for (int i = 0; i < s->n_prelude; i++)
		len += strlen(s->prelude[i]) + 2;
	text = malloc(len);
	if (!text)
		return NULL;
	text[0] = '\0';
	for (int i = 0; i < s->n_prelude; i++) {
		strcat(text, s->prelude[i]);
		strcat(text, "; ");
	}
	strcat(text, sql);
	s->n_prelude = 0;
	r = PQexec(conn, text);
	free(text);
	return r;
}

/* ---- deferred rows ------------------------------------------------------------------------ */

void svc_pg_set_deferral(PGconn *conn, bool on)
{
	struct conn_state *s = conn_state(conn, on);

	if (s)
		s->deferral = on;
}

bool svc_pg_deferral(PGconn *conn)
{
	struct conn_state *s = conn_state(conn, false);

	return s && s->deferral;
}

int svc_pg_flush(PGconn *conn, char *err, size_t errsz, char *sqlstate)
{
	struct conn_state *s = conn_state(conn, false);
	const char *param[1];
	PGresult *r;
	int rc, n_prelude;

	if (sqlstate)
		sqlstate[0] = '\0';
	if (!s || s->n_rows == 0)
		return 0;
	s->rows[s->rows_len] = ']'; /* room is kept for it */
	s->rows[s->rows_len + 1] = '\0';
	param[0] = s->rows;
	/* The rows belong before any pending prelude (the next message's savepoint). */
	n_prelude = s->n_prelude;
	s->n_prelude = 0;
	r = svc_pg_query(conn, s->rows_sql, 1, param, true);
	s->n_prelude = n_prelude;
	s->flushes++;
	truncate_rows(s, 0);
	rc = svc_pg_result_error(conn, r, PGRES_COMMAND_OK, err, errsz, sqlstate);
	if (rc < 0 && !s->poisoned) {
		s->poisoned = true;
		snprintf(s->poison, sizeof(s->poison), "%s", err && *err ? err : "failed");
	}
	PQclear(r);
	return rc;
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
	size_t n = *cap ? *cap : 16;
	void *q;

	if (need <= *cap)
		return true;
	while (n < need)
		n *= 2;
	q = realloc(*p, n * elem);
	if (!q)
		return false;
	*p = q;
	*cap = n;
	return true;
}

int svc_pg_defer_row(PGconn *conn, const char *sql, const char *json_object, char *err,
                     size_t errsz, char *sqlstate)
{
	struct conn_state *s = conn_state(conn, true);
	size_t len = strlen(json_object);
	int rc;

	if (sqlstate)
		sqlstate[0] = '\0';
	if (!s)
		goto nomem;
	if (s->n_rows > 0 && (strcmp(s->rows_sql, sql) != 0 || s->rows_len + len > MAX_ROW_BYTES)) {
		/* another statement (another outbox table), or enough for one statement */
		if ((rc = svc_pg_flush(conn, err, errsz, sqlstate)) < 0)
			return rc;
	}
	if (!s->rows_sql || strcmp(s->rows_sql, sql) != 0) {
		char *copy = strdup(sql);

		if (!copy)
			goto nomem;
		free(s->rows_sql);
		s->rows_sql = copy;
	}
	/* "[" or "," + the object + room for "]" and the terminator */
	if (!grow((void **)&s->rows, &s->rows_cap, s->rows_len + len + 3, 1) ||
	    !grow((void **)&s->row_end, &s->row_cap, s->n_rows + 1, sizeof(size_t)))
		goto nomem;
	s->rows[s->rows_len++] = s->n_rows ? ',' : '[';
	memcpy(s->rows + s->rows_len, json_object, len);
	s->rows_len += len;
	s->row_end[s->n_rows++] = s->rows_len;
	return 0;
nomem:
	set_err(err, errsz, "out of memory");
	return SVC_ENOMEM;
}

size_t svc_pg_deferred_mark(PGconn *conn)
{
	struct conn_state *s = conn_state(conn, false);

	return s ? s->n_rows : 0;
}

void svc_pg_deferred_truncate(PGconn *conn, size_t mark)
{
	struct conn_state *s = conn_state(conn, false);

	if (s)
		truncate_rows(s, mark);
}

unsigned long svc_pg_flush_count(PGconn *conn)
{
	struct conn_state *s = conn_state(conn, false);

	return s ? s->flushes : 0;
}

void svc_pg_poison(PGconn *conn, const char *reason)
{
	struct conn_state *s = conn_state(conn, true);

	if (s && !s->poisoned) {
		s->poisoned = true;
		snprintf(s->poison, sizeof(s->poison), "%s", reason);
	}
}

const char *svc_pg_poisoned(PGconn *conn)
{
	struct conn_state *s = conn_state(conn, false);

	return s && s->poisoned ? s->poison : NULL;
}

void svc_pg_transaction_reset(PGconn *conn)
{
	struct conn_state *s = conn_state(conn, false);

	if (s)
		transaction_reset(s);
}

int svc_pg_reserve_id(PGconn *conn, const char *sequence, long long *id, char *err, size_t errsz,
                      char *sqlstate)
{
	struct conn_state *s = conn_state(conn, true);
	char block[16];
	const char *params[2] = {sequence, block};
	PGresult *r;
	int rc, n;

	if (!s) {
		set_err(err, errsz, "out of memory");
		return SVC_ENOMEM;
	}
	if (!s->id_seq || strcmp(s->id_seq, sequence) != 0) {
		free(s->id_seq);
		s->id_seq = strdup(sequence);
		s->ids_n = s->ids_next = 0;
		if (!s->id_seq) {
			set_err(err, errsz, "out of memory");
			return SVC_ENOMEM;
		}
	}
	s->ids_used++;
	if (s->ids_next < s->ids_n) {
		*id = s->ids[s->ids_next++];
		return 0;
	}
	s->id_block = s->id_block         ? s->id_block * 2
	              : s->id_first_block ? s->id_first_block
	                                  : ID_BLOCK_MIN;
	if (s->id_block > ID_BLOCK_MAX)
		s->id_block = ID_BLOCK_MAX;
	snprintf(block, sizeof(block), "%d", s->id_block);
	r = svc_pg_query(
	    conn, "SELECT nextval($1::regclass) FROM generate_series(1, $2::int4) ORDER BY 1", 2,
	    params, true);
	rc = svc_pg_result_error(conn, r, PGRES_TUPLES_OK, err, errsz, sqlstate);
	if (rc < 0) {
		PQclear(r);
		return rc;
	}
	n = PQntuples(r);
	for (int i = 0; i < n && i < ID_BLOCK_MAX; i++)
		s->ids[i] = strtoll(PQgetvalue(r, i, 0), NULL, 10);
	PQclear(r);
	s->ids_n = n < ID_BLOCK_MAX ? n : ID_BLOCK_MAX;
	s->ids_next = 0;
	if (s->ids_n == 0) {
		set_err(err, errsz, "reserving outbox ids returned no row");
		return SVC_EDB;
	}
	*id = s->ids[s->ids_next++];
	return 0;
}

static int exec_checked(PGconn *conn, const char *sql, int nparams, const char *const *params,
                        bool prepare, PGresult **res, char *err, size_t errsz, char *sqlstate)
{
	PGresult *r;
	int rc;

	if (res)
		*res = NULL;
	if (!conn) {
		set_err(err, errsz, "not connected");
		if (sqlstate)
			strcpy(sqlstate, "08003");
		return SVC_ECONN;
	}
	r = svc_pg_query(conn, sql, nparams, params, prepare);
	if (r && PQresultStatus(r) == PGRES_TUPLES_OK)
		rc = svc_pg_result_error(conn, r, PGRES_TUPLES_OK, err, errsz, sqlstate);
	else
		rc = svc_pg_result_error(conn, r, PGRES_COMMAND_OK, err, errsz, sqlstate);
	if (rc < 0 || !res)
		PQclear(r);
	else
		*res = r;
	return rc;
}

int svc_pg_exec_params(PGconn *conn, const char *sql, int nparams, const char *const *params,
                       PGresult **res, char *err, size_t errsz, char *sqlstate)
{
	return exec_checked(conn, sql, nparams, params, false, res, err, errsz, sqlstate);
}

int svc_pg_exec_simple(PGconn *conn, const char *sql, char *err, size_t errsz, char *sqlstate)
{
	PGresult *r;
	int rc;

	if (!conn) {
		set_err(err, errsz, "not connected");
		if (sqlstate)
			strcpy(sqlstate, "08003");
		return SVC_ECONN;
	}
	r = svc_pg_query_text(conn, sql);
	if (r && PQresultStatus(r) == PGRES_TUPLES_OK)
		rc = 0;
	else
		rc = svc_pg_result_error(conn, r, PGRES_COMMAND_OK, err, errsz, sqlstate);
	PQclear(r);
	return rc;
}

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
		set_err(pg->error, sizeof(pg->error), "no connection string");
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
		set_err(pg->error, sizeof(pg->error), "out of memory");
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

static int simple(struct svc_pg *pg, const char *sql)
{
	return svc_pg_exec_simple(pg->conn, sql, pg->error, sizeof(pg->error), pg->sqlstate);
}

static bool plain_ident(const char *s)
{
	if (!s || !*s || strlen(s) > 63)
		return false;
	if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_'))
		return false;
	for (s++; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_'))
			return false;
	return true;
}

static int savepoint_cmd(struct svc_pg *pg, const char *verb, const char *name)
{
	char sql[128];

	if (!plain_ident(name)) {
		set_err(pg->error, sizeof(pg->error), "invalid savepoint name");
		pg->sqlstate[0] = '\0';
		return SVC_EINVAL;
	}
	snprintf(sql, sizeof(sql), "%s\"%s\"", verb, name);
	return simple(pg, sql);
}

int svc_pg_begin(struct svc_pg *pg)
{
	return simple(pg, "BEGIN");
}

int svc_pg_commit(struct svc_pg *pg)
{
	/* COMMIT of a failed transaction "succeeds" with ROLLBACK: report it as the failure it is.
	 */
	if (pg->conn && PQtransactionStatus(pg->conn) == PQTRANS_INERROR) {
		simple(pg, "ROLLBACK");
		set_err(pg->error, sizeof(pg->error),
		        "transaction aborted by an earlier error: rolled back");
		strcpy(pg->sqlstate, "25P02");
		return SVC_EDB;
	}
	return simple(pg, "COMMIT");
}

int svc_pg_rollback(struct svc_pg *pg)
{
	return simple(pg, "ROLLBACK");
}

int svc_pg_savepoint(struct svc_pg *pg, const char *name)
{
	return savepoint_cmd(pg, "SAVEPOINT ", name);
}

int svc_pg_release_savepoint(struct svc_pg *pg, const char *name)
{
	return savepoint_cmd(pg, "RELEASE SAVEPOINT ", name);
}

int svc_pg_rollback_to(struct svc_pg *pg, const char *name)
{
	return savepoint_cmd(pg, "ROLLBACK TO SAVEPOINT ", name);
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
