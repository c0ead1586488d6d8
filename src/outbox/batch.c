/* outbox/batch: deferred rows and poison of a transaction. See batch.h. */
#include "outbox/batch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg/conn.h"
#include "util/error.h"

#define MAX_ROW_BYTES (1 << 20) /* deferred rows are written early past this much JSON */

/* The per-connection state (libpq instance data of batch_proc). */
struct batch {
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
};

static void truncate_rows(struct batch *s, size_t mark)
{
	if (mark >= s->n_rows)
		return;
	s->n_rows = mark;
	s->rows_len = mark ? s->row_end[mark - 1] : 0;
}

static void transaction_reset(struct batch *s)
{
	truncate_rows(s, 0);
	s->poisoned = false;
	s->poison[0] = '\0';
}

/* A new server session, or the connection is finished: the transaction is gone. */
static void forget(void *state)
{
	struct batch *s = state;

	transaction_reset(s);
	free(s->rows_sql);
	free(s->rows);
	free(s->row_end);
	s->rows_sql = s->rows = NULL;
	s->row_end = NULL;
	s->rows_cap = s->row_cap = 0;
}

static int batch_proc(PGEventId id, void *info, void *pass)
{
	(void)pass;
	return svc_pg_state_event(id, info, batch_proc, sizeof(struct batch), forget);
}

static struct batch *batch_of(PGconn *conn, bool create)
{
	return svc_pg_state(conn, batch_proc, "svccomm-batch", create);
}

void svc_outbox_set_deferral(PGconn *conn, bool on)
{
	struct batch *s = batch_of(conn, on);

	if (s)
		s->deferral = on;
}

bool svc_outbox_deferral(PGconn *conn)
{
	struct batch *s = batch_of(conn, false);

	return s && s->deferral;
}

int svc_outbox_flush(PGconn *conn, char *err, size_t errsz, char *sqlstate)
{
	struct batch *s = batch_of(conn, false);
	const char *param[1];
	PGresult *r;
	int rc;

	if (sqlstate)
		sqlstate[0] = '\0';
	if (!s || s->n_rows == 0)
		return 0;
	s->rows[s->rows_len] = ']'; /* room is kept for it */
	s->rows[s->rows_len + 1] = '\0';
	param[0] = s->rows;
	/* The rows belong before any pending prelude (the next message's savepoint). */
	r = svc_pg_query_before_prelude(conn, s->rows_sql, 1, param, true);
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

int svc_outbox_defer_row(PGconn *conn, const char *sql, const char *json_object, char *err,
                         size_t errsz, char *sqlstate)
{
	struct batch *s = batch_of(conn, true);
	size_t len = strlen(json_object);
	int rc;

	if (sqlstate)
		sqlstate[0] = '\0';
	if (!s)
		goto nomem;
	if (s->n_rows > 0 && (strcmp(s->rows_sql, sql) != 0 || s->rows_len + len > MAX_ROW_BYTES)) {
		/* another statement (another outbox table), or enough for one statement */
		if ((rc = svc_outbox_flush(conn, err, errsz, sqlstate)) < 0)
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
	svc_pg_set_error(err, errsz, "out of memory");
	return SVC_ENOMEM;
}

size_t svc_outbox_deferred_mark(PGconn *conn)
{
	struct batch *s = batch_of(conn, false);

	return s ? s->n_rows : 0;
}

void svc_outbox_deferred_truncate(PGconn *conn, size_t mark)
{
	struct batch *s = batch_of(conn, false);

	if (s)
		truncate_rows(s, mark);
}

unsigned long svc_outbox_flush_count(PGconn *conn)
{
	struct batch *s = batch_of(conn, false);

	return s ? s->flushes : 0;
}

void svc_outbox_poison(PGconn *conn, const char *reason)
{
	struct batch *s = batch_of(conn, true);

	if (s && !s->poisoned) {
		s->poisoned = true;
		snprintf(s->poison, sizeof(s->poison), "%s", reason);
	}
}

const char *svc_outbox_poisoned(PGconn *conn)
{
	struct batch *s = batch_of(conn, false);

	return s && s->poisoned ? s->poison : NULL;
}

void svc_outbox_transaction_reset(PGconn *conn)
{
	struct batch *s = batch_of(conn, false);

	if (s)
		transaction_reset(s);
}
