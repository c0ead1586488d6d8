#include "outbox/migrate.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/embedded.h"
#include "outbox/envelope.h"
#include "pg/conn.h"
#include "util/error.h"
#include "util/ident.h"
#include "util/log.h"

struct names {
	char quoted[SVC_IDENT_QUOTED_MAX];
	char schema[SVC_IDENT_MAX + 1];
	char table[SVC_IDENT_MAX + 1];
	char prefix[SVC_IDENT_MAX + 4]; /* "schema". or "" */
};

static int names_of(const char *name, struct names *n)
{
	if (svc_ident_quote(name, n->quoted, sizeof(n->quoted)) < 0 ||
	    svc_ident_split(name, n->schema, n->table) < 0)
		return SVC_EINVAL;
	if (n->schema[0])
		snprintf(n->prefix, sizeof(n->prefix), "\"%s\".", n->schema);
	else
		n->prefix[0] = '\0';
	return 0;
}

/* The envelope in the outbox functions (sql/004_outbox_functions.sql): the same expression as
 * every statement of outbox/write.c, over the functions' variables. */
#define FUNCTIONS_ENVELOPE                                                                         \
	SVC_ENVELOPE_SQL("fmt", "new_id", "NULL", "NULL", "send_at",                               \
	                 "(" SVC_ENVELOPE_MEMBERS_SQL("fmt", "to_json(event_type)::text",          \
	                                              "to_json(aggregate)::text",                  \
	                                              "coalesce(payload, '{}')::text") ")")

/* Value of placeholder key (length len), or NULL when unknown or its name is absent. */
static const char *lookup(const char *key, size_t len, const struct names *o, const struct names *i)
{
	static const char *const kinds[] = {"outbox", "inbox"};

	if (len == 8 && strncmp(key, "envelope", 8) == 0)
		return FUNCTIONS_ENVELOPE;

	for (int k = 0; k < 2; k++) {
		const struct names *n = k == 0 ? o : i;
		size_t kl = strlen(kinds[k]);

		if (len < kl || strncmp(key, kinds[k], kl) != 0)
			continue;
		if (!n)
			return NULL;
		if (len == kl)
			return n->quoted;
		if (len == kl + 5 && strncmp(key + kl, "_name", 5) == 0)
			return n->table;
		if (len == kl + 7 && strncmp(key + kl, "_prefix", 7) == 0)
			return n->prefix;
	}
	return NULL;
}

char *svc_migrate_render(const char *sql, const char *outbox_table, const char *inbox_table)
{
	struct names o, i;
	const struct names *po = NULL, *pi = NULL;
	size_t cap, len = 0;
	char *out, *grown;
	const char *p = sql;

	if (outbox_table) {
		if (names_of(outbox_table, &o) < 0)
			return NULL;
		po = &o;
	}
	if (inbox_table) {
		if (names_of(inbox_table, &i) < 0)
			return NULL;
		pi = &i;
	}
	cap = strlen(sql) + 256;
	out = malloc(cap);
	if (!out)
		return NULL;
	while (*p) {
		const char *open = strstr(p, "{{"), *close = NULL, *val;
		size_t chunk = open ? (size_t)(open - p) : strlen(p), vl = 0;

		val = NULL;
		if (open) {
			close = strstr(open + 2, "}}");
			if (!close)
				goto fail;
			val = lookup(open + 2, (size_t)(close - open - 2), po, pi);
			if (!val)
				goto fail;
			vl = strlen(val);
		}
		if (len + chunk + vl + 1 > cap) {
			cap = (len + chunk + vl + 1) * 2;
			grown = realloc(out, cap);
			if (!grown)
				goto fail;
			out = grown;
		}
		memcpy(out + len, p, chunk);
		len += chunk;
		if (!open)
			break;
		memcpy(out + len, val, vl);
		len += vl;
		p = close + 2;
	}
	out[len] = '\0';
	return out;
fail:
	free(out);
	return NULL;
}

static bool is_inbox_migration(const char *name)
{
	return strstr(name, "_inbox") != NULL;
}

/* Runs inside the migration transaction, after the lock: creates the outbox schema when
 * missing and the bookkeeping table. */
static int prepare(PGconn *conn, const struct names *o, char *err, size_t errsz)
{
	char sql[512];
	PGresult *res = NULL;
	int rc;

	if (o->schema[0]) {
		const char *params[1] = {o->schema};

		rc = svc_pg_exec_params(conn, "SELECT 1 FROM pg_namespace WHERE nspname = $1", 1,
		                        params, &res, err, errsz, NULL);
		if (rc < 0)
			return rc;
		if (PQntuples(res) == 0) {
			snprintf(sql, sizeof(sql), "CREATE SCHEMA IF NOT EXISTS \"%s\"", o->schema);
			rc = svc_pg_exec_simple(conn, sql, err, errsz, NULL);
		}
		PQclear(res);
		if (rc < 0)
			return rc;
	}
	snprintf(sql, sizeof(sql),
	         "CREATE TABLE IF NOT EXISTS %ssvccomm_migrations ("
	         "table_name text NOT NULL, version text NOT NULL, "
	         "applied_at timestamptz NOT NULL DEFAULT now(), "
	         "PRIMARY KEY (table_name, version))",
	         o->prefix);
	return svc_pg_exec_simple(conn, sql, err, errsz, NULL);
}

/* One migration in its own transaction. Returns 1 applied, 0 already there, or < 0. */
static int apply_one(PGconn *conn, const struct svc_embedded *m, const struct names *o,
                     const char *outbox_table, const char *inbox_table, char *err, size_t errsz)
{
	const char *target = is_inbox_migration(m->name) ? inbox_table : outbox_table;
	const char *params[2] = {target, m->name};
	char sql[256], msg[SVC_PG_ERRSZ];
	char *body = NULL;
	PGresult *res = NULL;
	int rc, applied = 0;

	body = svc_migrate_render(m->data, outbox_table, inbox_table);
	if (!body) {
		snprintf(err, errsz, "%s: cannot substitute the table names", m->path);
		return SVC_EINVAL;
	}
	rc = svc_pg_exec_simple(conn, "BEGIN", err, errsz, NULL);
	if (rc < 0)
		goto out;
	/* "already exists, skipping" notices are expected here: keep them off stderr. */
	rc = svc_pg_exec_simple(conn,
	                        "SET LOCAL client_min_messages = warning; "
	                        "SELECT pg_advisory_xact_lock(" SVC_MIGRATE_LOCK_KEY ")",
	                        err, errsz, NULL);
	if (rc < 0)
		goto rollback;
	rc = prepare(conn, o, err, errsz);
	if (rc < 0)
		goto rollback;
	snprintf(sql, sizeof(sql),
	         "SELECT 1 FROM %ssvccomm_migrations WHERE table_name = $1 AND version = $2",
	         o->prefix);
	rc = svc_pg_exec_params(conn, sql, 2, params, &res, err, errsz, NULL);
	if (rc < 0)
		goto rollback;
	if (PQntuples(res) == 0) {
		rc = svc_pg_exec_simple(conn, body, msg, sizeof(msg), NULL);
		if (rc < 0) {
			snprintf(err, errsz, "%s: %s", m->path, msg);
			goto rollback;
		}
		snprintf(sql, sizeof(sql),
		         "INSERT INTO %ssvccomm_migrations (table_name, version) VALUES ($1, $2)",
		         o->prefix);
		rc = svc_pg_exec_params(conn, sql, 2, params, NULL, err, errsz, NULL);
		if (rc < 0)
			goto rollback;
		applied = 1;
	}
	rc = svc_pg_exec_simple(conn, "COMMIT", err, errsz, NULL);
	if (rc < 0)
		goto out;
	if (applied)
		svc_info("migrate", "applied %s to %s", m->name, target);
	rc = applied;
	goto out;
rollback:
	svc_pg_exec_simple(conn, "ROLLBACK", NULL, 0, NULL);
out:
	PQclear(res);
	free(body);
	return rc;
}

int svc_migrate(PGconn *conn, const char *outbox_table, const char *inbox_table, char *err,
                size_t errsz)
{
	struct names o, i;
	int n = 0, rc;

	if (svc_ident_check(outbox_table, err, errsz) < 0 || names_of(outbox_table, &o) < 0)
		return SVC_EINVAL;
	if (inbox_table &&
	    (svc_ident_check(inbox_table, err, errsz) < 0 || names_of(inbox_table, &i) < 0))
		return SVC_EINVAL;
	if (PQtransactionStatus(conn) != PQTRANS_IDLE) {
		snprintf(err, errsz, "migrate needs a connection without an open transaction");
		return SVC_EINVAL;
	}
	for (const struct svc_embedded *m = svc_embedded_sql; m->name; m++) {
		if (is_inbox_migration(m->name) && !inbox_table)
			continue;
		rc = apply_one(conn, m, &o, outbox_table, inbox_table, err, errsz);
		if (rc < 0)
			return rc;
		n += rc;
	}
	/* The caller says how many were applied, in words of its own (cmd_migrate.c). */
	return n;
}

int svc_migrate_pending(PGconn *conn, const char *outbox_table, const char *inbox_table, char *list,
                        size_t listsz, char *err, size_t errsz)
{
	struct names o;
	char sql[256], reg[SVC_IDENT_MAX + 32];
	const char *params[2];
	PGresult *res = NULL;
	size_t len = 0;
	int n = 0, rc;
	bool book;

	list[0] = '\0';
	if (names_of(outbox_table, &o) < 0 ||
	    (inbox_table && svc_ident_check(inbox_table, err, errsz) < 0)) {
		snprintf(err, errsz, "not a valid table name");
		return SVC_EINVAL;
	}
	/* no bookkeeping table yet: nothing was ever migrated there */
	snprintf(reg, sizeof(reg), "%ssvccomm_migrations", o.prefix);
	params[0] = reg;
	rc = svc_pg_exec_params(conn, "SELECT to_regclass($1) IS NOT NULL", 1, params, &res, err,
	                        errsz, NULL);
	if (rc < 0)
		return rc;
	book = PQgetvalue(res, 0, 0)[0] == 't';
	PQclear(res);
	snprintf(sql, sizeof(sql),
	         "SELECT 1 FROM %ssvccomm_migrations WHERE table_name = $1 AND version = $2",
	         o.prefix);
	for (const struct svc_embedded *m = svc_embedded_sql; m->name; m++) {
		bool inbox = is_inbox_migration(m->name);
		bool applied = false;

		if (inbox && !inbox_table)
			continue;
		if (book) {
			params[0] = inbox ? inbox_table : outbox_table;
			params[1] = m->name;
			rc = svc_pg_exec_params(conn, sql, 2, params, &res, err, errsz, NULL);
			if (rc < 0)
				return rc;
			applied = PQntuples(res) > 0;
			PQclear(res);
		}
		if (applied)
			continue;
		n++;
		if (len < listsz)
			len += (size_t)snprintf(list + len, listsz - len, "%s%s", len ? ", " : "",
			                        m->name);
	}
	return n;
}
