/* db: the consumer's PostgreSQL connection (a struct svc_pg, one per session), lent to the
 * handlers through svccomm.db, and the two statement helpers the batch code needs. Errors
 * keep libpq's whole message (DETAIL lines included, on one line: pg/conn.h) behind the
 * statement that failed: that text is what a dead-lettered message carries when its COMMIT
 * failed. */
#include "consumer/internal.h"

#include <stdio.h>
#include <string.h>

#include "config/config.h"
#include "util/error.h"

int svc_consumer_db_connect(struct svc_consumer *c)
{
	/* svc_pg_open underneath: UTC/ISO session (as svccomm.db documents), keepalives, masked
	 * errors */
	int rc = svc_pg_connect(&c->pg, c->cfg->database_url, "svccomm runconsumer");
	if (rc)
		return rc;
	/* outbox rows written by handlers wait for the next statement or the COMMIT */
	svc_outbox_set_deferral(c->pg.conn, true);
	rc = svc_consumer_lua_lend(c);
	if (rc)
		svc_pg_close(&c->pg);
	else
		c->pg_cancel = PQgetCancel(c->pg.conn); /* NULL: HANDLER_TIMEOUT cannot cancel */
	return rc;
}

void svc_consumer_db_disconnect(struct svc_consumer *c)
{
	svc_consumer_lua_unlend(c);
	if (c->pg_cancel)
		PQfreeCancel(c->pg_cancel);
	c->pg_cancel = NULL;
	svc_pg_close(&c->pg);
	c->in_tx = false;
	c->sp_open = false;
}

int svc_consumer_db_fail(struct svc_consumer *c, PGresult *r, const char *what)
{
	const char *msg = r ? PQresultErrorMessage(r) : PQerrorMessage(c->pg.conn);
	const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;

	int n = snprintf(c->pg.error, sizeof(c->pg.error), "%s: ", what);
	if (n > 0 && (size_t)n < sizeof(c->pg.error))
		svc_pg_set_error(c->pg.error + n, sizeof(c->pg.error) - (size_t)n,
		                 msg && *msg ? msg : "failed");
	snprintf(c->pg.sqlstate, sizeof(c->pg.sqlstate), "%s",
	         state && strlen(state) == 5 ? state : "");
	if (r)
		PQclear(r);
	return PQstatus(c->pg.conn) == CONNECTION_OK ? SVC_EDB : SVC_ECONN;
}

int svc_consumer_db_cmd(struct svc_consumer *c, const char *sql)
{
	int rc = svc_consumer_pipeline_sync(c); /* PQexec cannot run while results wait */
	if (rc)
		return rc;
	PGresult *r = PQexec(c->pg.conn, sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		return svc_consumer_db_fail(c, r, sql);
	PQclear(r);
	return 0;
}
