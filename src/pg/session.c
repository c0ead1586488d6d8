/* pg/session: statements on a session: prelude, prepared-statement cache, pipeline. See
 * session.h. */
#include "pg/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pg/conn.h"
#include "util/error.h"

#define MAX_PREPARED 16
/* Deferred statements take at most half of the cache: a handler's many texts must not keep
 * the outbox and inbox statements from being prepared. */
#define MAX_PREPARED_DEFERRED (MAX_PREPARED / 2)

struct prepared {
	char *sql;
	char name[24];
};

/* The per-connection state (libpq instance data of session_proc). */
struct session {
	const char *prelude[SVC_PG_MAX_PRELUDE];
	int n_prelude;
	struct prepared prep[MAX_PREPARED];
	int n_prep;
	unsigned next_name;
	bool no_prepare; /* the session lost a prepared statement: unnamed ones only */
	/* deferred statements (svc_pg_send) */
	bool allow;
	int pending;          /* queued statements whose results were not read */
	size_t pending_bytes; /* their parameters' bytes */
	PGresult *late;       /* the first failure a sync read, until svc_pg_pipeline_reset */
	/* statements prepared in the queued pipeline, not known to exist yet: the queue
	 * position of each Parse and its name */
	struct {
		int pos;
		char name[24];
	} parses[MAX_PREPARED_DEFERRED];
	int n_parses;
};

int svc_pg_state_event(PGEventId id, void *info, PGEventProc proc, size_t size,
                       void (*forget)(void *state))
{
	if (id == PGEVT_REGISTER) {
		void *s = calloc(1, size);
		PGEventRegister *e = info;

		return s && PQsetInstanceData(e->conn, proc, s) ? 1 : (free(s), 0);
	}
	if (id == PGEVT_CONNRESET) {
		void *s = PQinstanceData(((PGEventConnReset *)info)->conn, proc);

		if (s)
			forget(s);
	} else if (id == PGEVT_CONNDESTROY) {
		void *s = PQinstanceData(((PGEventConnDestroy *)info)->conn, proc);

		if (s) {
			forget(s);
			free(s);
		}
	}
	return 1;
}

void *svc_pg_state(PGconn *conn, PGEventProc proc, const char *name, bool create)
{
	void *s;

	if (!conn)
		return NULL;
	s = PQinstanceData(conn, proc);
	if (!s && create && PQregisterEventProc(conn, proc, name, NULL))
		s = PQinstanceData(conn, proc);
	return s;
}

/* A new server session: its prepared statements are gone. */
static void forget(void *state)
{
	struct session *s = state;

	for (int i = 0; i < s->n_prep; i++)
		free(s->prep[i].sql);
	s->n_prep = 0;
	s->n_prelude = 0;
	s->pending = 0;
	s->pending_bytes = 0;
	s->n_parses = 0;
	PQclear(s->late);
	s->late = NULL;
}

static int session_proc(PGEventId id, void *info, void *pass)
{
	(void)pass;
	return svc_pg_state_event(id, info, session_proc, sizeof(struct session), forget);
}

static struct session *session_of(PGconn *conn, bool create)
{
	return svc_pg_state(conn, session_proc, "svccomm-session", create);
}

int svc_pg_set_prelude(PGconn *conn, const char *const *stmts, int n)
{
	struct session *s;

	if (n < 0 || n > SVC_PG_MAX_PRELUDE)
		return SVC_EINVAL;
	s = session_of(conn, n > 0);
	if (!s)
		return n > 0 ? SVC_ENOMEM : 0;
	for (int i = 0; i < n; i++)
		s->prelude[i] = stmts[i];
	s->n_prelude = n;
	return 0;
}

bool svc_pg_prelude_pending(PGconn *conn)
{
	struct session *s = session_of(conn, false);

	return s && s->n_prelude > 0;
}

void svc_pg_clear_prelude(PGconn *conn)
{
	struct session *s = session_of(conn, false);

	if (s)
		s->n_prelude = 0;
}

/* The cached statement for sql, or NULL. */
static struct prepared *find_prepared(struct session *s, const char *sql)
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
static PGresult *run_pipeline(PGconn *conn, struct session *s, const char *sql, int nparams,
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
static void forget_failed(struct session *s, const char *sql, const PGresult *r)
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

/* Statements are queued on conn: read their results before the next one runs. True when a
 * failure was read now (the caller returns an error result in place of its statement). */
static bool sync_first(PGconn *conn, struct session *s)
{
	return s && s->pending > 0 && svc_pg_sync(conn) != 0;
}

/* The result of a statement that did not run because a queued one failed (the connection's
 * error text: the failure just read). */
static PGresult *late_result(PGconn *conn)
{
	return PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
}

PGresult *svc_pg_query(PGconn *conn, const char *sql, int nparams, const char *const *params,
                       bool prepare)
{
	struct session *s = session_of(conn, prepare);
	struct prepared *stmt = NULL;
	bool parse = false;
	PGresult *r;

	if (sync_first(conn, s))
		return late_result(conn);
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
	struct session *s = session_of(conn, false);
	PGresult *r;
	size_t len;
	char *text;

	if (sync_first(conn, s))
		return late_result(conn);
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

PGresult *svc_pg_query_before_prelude(PGconn *conn, const char *sql, int nparams,
                                      const char *const *params, bool prepare)
{
	struct session *s = session_of(conn, false);
	int n_prelude = s ? s->n_prelude : 0;
	PGresult *r;

	if (s)
		s->n_prelude = 0;
	r = svc_pg_query(conn, sql, nparams, params, prepare);
	if (s)
		s->n_prelude = n_prelude;
	return r;
}

/* ---- deferred statements --------------------------------------------------------------- */

int svc_pg_pipeline_allow(PGconn *conn, bool on)
{
	struct session *s = session_of(conn, on);

	if (!s)
		return on ? SVC_ENOMEM : 0;
	s->allow = on;
	return 0;
}

int svc_pg_pipeline_pending(PGconn *conn)
{
	struct session *s = session_of(conn, false);

	return s ? s->pending : 0;
}

const PGresult *svc_pg_late_error(PGconn *conn)
{
	struct session *s = session_of(conn, false);

	return s ? s->late : NULL;
}

/* Forgets the cached statement called name (its Parse failed or was skipped). */
static void forget_named(struct session *s, const char *name)
{
	for (int i = 0; i < s->n_prep; i++) {
		if (strcmp(s->prep[i].name, name) == 0) {
			free(s->prep[i].sql);
			s->prep[i] = s->prep[--s->n_prep];
			return;
		}
	}
}

/* The result r of queue position pos was read: a Parse queued there that did not succeed
 * created nothing on the server. */
static void check_parse(struct session *s, int pos, const PGresult *r)
{
	for (int i = 0; i < s->n_parses; i++) {
		if (s->parses[i].pos == pos) {
			if (!r || PQresultStatus(r) != PGRES_COMMAND_OK)
				forget_named(s, s->parses[i].name);
			s->parses[i] = s->parses[--s->n_parses];
			return;
		}
	}
}

/* A queued statement failed (s->late). Which cached statement it executed is not known: when
 * the failure says a cached statement is stale (0A000, "cached plan must not change result
 * type") or gone (26000), all are forgotten, as forget_failed() does for one. */
static void forget_after_late(struct session *s)
{
	const char *code = s->late ? PQresultErrorField(s->late, PG_DIAG_SQLSTATE) : NULL;

	if (!code || (strcmp(code, "0A000") != 0 && strcmp(code, "26000") != 0))
		return;
	for (int i = 0; i < s->n_prep; i++)
		free(s->prep[i].sql);
	s->n_prep = 0;
	if (strcmp(code, "26000") == 0)
		s->no_prepare = true;
}

/* Keeps r as the late error when none is kept yet (else clears it). */
static void keep_late(struct session *s, PGresult *r)
{
	if (!s->late)
		s->late = r;
	else
		PQclear(r);
}

int svc_pg_sync(PGconn *conn)
{
	struct session *s = session_of(conn, false);
	int nulls = 0, queued;
	bool failed = false;
	PGresult *r;

	if (!s || s->pending == 0)
		return 0;
	queued = s->pending;
	s->pending = 0;
	s->pending_bytes = 0;
	if (PQpipelineSync(conn) != 1) {
		keep_late(s, PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR));
		PQexitPipelineMode(conn);
		return PQstatus(conn) == CONNECTION_OK ? SVC_EDB : SVC_ECONN;
	}
	/* each queued statement's results end with a NULL; the sync's own result comes last */
	while (nulls <= queued) {
		r = PQgetResult(conn);
		if (!r) {
			if (PQstatus(conn) != CONNECTION_OK)
				break;
			nulls++;
			continue;
		}
		ExecStatusType st = PQresultStatus(r);
		if (st == PGRES_PIPELINE_SYNC) {
			PQclear(r);
			break;
		}
		if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
			/* not queued by svc_pg_send (is_copy); ended so the loop cannot spin */
			char *buf;
			if (st == PGRES_COPY_IN)
				PQputCopyEnd(conn, "COPY is not supported in a pipeline");
			else
				while (PQgetCopyData(conn, &buf, 0) > 0)
					PQfreemem(buf);
			PQclear(r);
			continue;
		}
		if (s->n_parses)
			check_parse(s, nulls, r);
		if (st == PGRES_FATAL_ERROR && !failed) {
			failed = true;
			keep_late(s, r);
		} else {
			PQclear(r);
		}
	}
	PQexitPipelineMode(conn);
	while (s->n_parses) /* not read (the connection failed): unknown, so forgotten */
		check_parse(s, s->parses[0].pos, NULL);
	if (failed)
		forget_after_late(s);
	if (PQstatus(conn) != CONNECTION_OK) {
		if (!failed)
			keep_late(s, PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR));
		return SVC_ECONN;
	}
	return failed ? SVC_EDB : 0;
}

void svc_pg_pipeline_reset(PGconn *conn)
{
	struct session *s = session_of(conn, false);

	if (!s)
		return;
	if (s->pending)
		svc_pg_sync(conn);
	PQclear(s->late);
	s->late = NULL;
}

/* True when the first keyword of sql, after blanks and comments (nested as PostgreSQL's), is
 * COPY: a COPY FROM STDIN in a pipeline breaks the protocol (the server ends the session). */
static bool is_copy(const char *p)
{
	for (;;) {
		while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\f' ||
		       *p == '\v')
			p++;
		if (p[0] == '-' && p[1] == '-') {
			while (*p && *p != '\n')
				p++;
		} else if (p[0] == '/' && p[1] == '*') {
			int depth = 0;
			do {
				if (p[0] == '/' && p[1] == '*')
					depth++, p += 2;
				else if (p[0] == '*' && p[1] == '/')
					depth--, p += 2;
				else
					p++;
			} while (*p && depth > 0);
		} else {
			break;
		}
	}
	if (strncasecmp(p, "copy", 4) != 0)
		return false;
	unsigned char next = (unsigned char)p[4]; /* "copy" matched: p[4] exists */
	return !(next == '_' || next == '$' || (next >= '0' && next <= '9') ||
	         ((next | 0x20) >= 'a' && (next | 0x20) <= 'z') || next >= 0x80);
}

int svc_pg_send(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
	struct session *s = session_of(conn, false);
	size_t bytes = strlen(sql);
	struct prepared *stmt = NULL;
	bool sent = true;

	if (!s || !s->allow || !conn || is_copy(sql))
		return SVC_EINVAL;
	if (s->late)
		return SVC_EDB;
	for (int i = 0; i < nparams; i++)
		bytes += params[i] ? strlen(params[i]) : 0;
	if (s->pending > 0 && (s->pending + s->n_prelude + 1 > SVC_PG_PIPELINE_MAX ||
	                       s->pending_bytes + bytes > SVC_PG_PIPELINE_BYTES)) {
		int rc = svc_pg_sync(conn);
		if (rc)
			return rc;
	}
	if (s->pending == 0 && PQpipelineStatus(conn) == PQ_PIPELINE_OFF &&
	    PQenterPipelineMode(conn) != 1)
		return SVC_EINVAL; /* not idle (a COPY?): run it at once instead */
	for (int i = 0; sent && i < s->n_prelude; i++) {
		sent = PQsendQueryParams(conn, s->prelude[i], 0, NULL, NULL, NULL, NULL, 0) == 1;
		s->pending += sent;
	}
	s->n_prelude = 0; /* queued, or failed with the statement */
	/* a prepared statement saves the server the parse and plan of each execution; its Parse
	 * is queued too, so it is cached before it is known to exist (check_parse) */
	if (sent && !s->no_prepare) {
		stmt = find_prepared(s, sql);
		if (!stmt && s->n_prep < MAX_PREPARED_DEFERRED &&
		    s->n_parses < MAX_PREPARED_DEFERRED) {
			stmt = &s->prep[s->n_prep];
			snprintf(stmt->name, sizeof(stmt->name), "svccomm_%u", s->next_name++);
			stmt->sql = strdup(sql);
			sent =
			    stmt->sql && PQsendPrepare(conn, stmt->name, sql, nparams, NULL) == 1;
			if (sent) {
				s->parses[s->n_parses].pos = s->pending;
				memcpy(s->parses[s->n_parses].name, stmt->name, sizeof(stmt->name));
				s->n_parses++;
				s->n_prep++;
				s->pending++;
			} else {
				free(stmt->sql);
				stmt = NULL;
			}
		}
	}
	if (sent) {
		sent = (stmt ? PQsendQueryPrepared(conn, stmt->name, nparams, params, NULL, NULL, 0)
		             : PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL,
		                                 0)) == 1;
		s->pending += sent;
		s->pending_bytes += bytes;
	}
	/* Queued, not sent: libpq writes its buffer once it holds 8 KiB, and the batch's sync or
	 * the next statement whose result is needed sends the rest, so a run of pipelined
	 * statements costs the worker and the server one write and one wake-up per 8 KiB rather
	 * than per statement. */
	if (sent)
		return 0;
	/* out of memory or the connection failed: what was queued is settled now */
	int rc = svc_pg_sync(conn);
	if (!s->late)
		keep_late(s, PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR));
	if (s->pending == 0 && PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
		PQexitPipelineMode(conn);
	return rc == SVC_ECONN || PQstatus(conn) != CONNECTION_OK ? SVC_ECONN : SVC_EDB;
}

/* ---- checked statements ---------------------------------------------------------------- */

static int not_connected(char *err, size_t errsz, char *sqlstate)
{
	svc_pg_set_error(err, errsz, "not connected");
	if (sqlstate)
		strcpy(sqlstate, "08003");
	return SVC_ECONN;
}

int svc_pg_exec_params(PGconn *conn, const char *sql, int nparams, const char *const *params,
                       PGresult **res, char *err, size_t errsz, char *sqlstate)
{
	PGresult *r;
	int rc;

	if (res)
		*res = NULL;
	if (!conn)
		return not_connected(err, errsz, sqlstate);
	r = svc_pg_query(conn, sql, nparams, params, false);
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

int svc_pg_exec_simple(PGconn *conn, const char *sql, char *err, size_t errsz, char *sqlstate)
{
	PGresult *r;
	int rc;

	if (!conn)
		return not_connected(err, errsz, sqlstate);
	r = svc_pg_query_text(conn, sql);
	if (r && PQresultStatus(r) == PGRES_TUPLES_OK)
		rc = 0;
	else
		rc = svc_pg_result_error(conn, r, PGRES_COMMAND_OK, err, errsz, sqlstate);
	PQclear(r);
	return rc;
}
