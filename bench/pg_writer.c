/* pg_writer: the latency section's event writers. C connections, one thread each, commit one
 * event per transaction (autocommit, one prepared statement that returns the event's id) on a
 * common schedule: event i is due at start + i / RATE, so the writers together offer RATE
 * events a second for SECONDS seconds, and a writer that falls behind catches up without
 * sleeping (the summary says how late the writers were).
 *
 *   pg_writer --rate R --seconds S --connections C --sql SQL [--param V]...
 *
 * SQL is the statement ($1, $2, ... bound to the --param values in order) and must return one
 * row whose first column is the event id. The connection string comes from
 * SVCCOMM_DATABASE_URL (never the process list). Each event is printed on stdout as
 * "id<TAB>epoch seconds", the wall clock (CLOCK_REALTIME) read when its COMMIT returned; one
 * JSON summary line goes to stderr. Python writers (one process, one GIL) fell to about 1,500
 * events/s here and took their clock late under load; this keeps both honest. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "bench_common.h"

#define MAX_PARAMS      8
#define MAX_CONNECTIONS 64

struct event {
	char id[24];
	double at;
};

struct writer {
	pthread_t thread;
	int index;
	long count; /* events of this writer */
	struct event *events;
	double late_max; /* seconds a statement started after it was due */
	char err[256];
};

static struct {
	const char *url, *sql;
	const char *params[MAX_PARAMS];
	int nparams, connections;
	double rate, seconds;
	struct bench_schedule sched;
} o;

static void *run(void *arg)
{
	struct writer *w = arg;
	PGconn *c = PQconnectdb(o.url);
	if (PQstatus(c) != CONNECTION_OK) {
		snprintf(w->err, sizeof(w->err), "connect: %s", PQerrorMessage(c));
		PQfinish(c);
		return NULL;
	}
	PGresult *r = PQprepare(c, "event", o.sql, o.nparams, NULL);
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		snprintf(w->err, sizeof(w->err), "prepare: %s", PQresultErrorMessage(r));
		PQclear(r);
		PQfinish(c);
		return NULL;
	}
	PQclear(r);
	for (long k = 0; k < w->count; k++) {
		double late = bench_wait_due(&o.sched, k * o.connections + w->index);
		if (late > w->late_max)
			w->late_max = late;
		r = PQexecPrepared(c, "event", o.nparams, o.params, NULL, NULL, 0);
		double at = bench_wall();
		if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
			snprintf(w->err, sizeof(w->err), "insert: %s", PQresultErrorMessage(r));
			PQclear(r);
			w->count = k;
			break;
		}
		snprintf(w->events[k].id, sizeof(w->events[k].id), "%s", PQgetvalue(r, 0, 0));
		w->events[k].at = at;
		PQclear(r);
	}
	PQfinish(c);
	return NULL;
}

int main(int argc, char **argv)
{
	o.url = getenv("SVCCOMM_DATABASE_URL");
	o.connections = 1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v) {
			fprintf(stderr, "pg_writer: %s needs a value\n", a);
			return 2;
		}
		if (!strcmp(a, "--rate"))
			o.rate = (double)bench_parse_long(a, v);
		else if (!strcmp(a, "--seconds"))
			o.seconds = strtod(v, NULL);
		else if (!strcmp(a, "--connections"))
			o.connections = (int)bench_parse_long(a, v);
		else if (!strcmp(a, "--sql"))
			o.sql = v;
		else if (!strcmp(a, "--param") && o.nparams < MAX_PARAMS)
			o.params[o.nparams++] = v;
		else {
			fprintf(stderr, "pg_writer: unknown or repeated option %s\n", a);
			return 2;
		}
		i++;
	}
	if (!o.url || !o.sql || o.rate <= 0 || o.seconds <= 0 || o.connections > MAX_CONNECTIONS) {
		fprintf(stderr,
		        "usage: SVCCOMM_DATABASE_URL=... pg_writer --rate R --seconds S "
		        "[--connections C (<= %d)] --sql SQL [--param V]...\n",
		        MAX_CONNECTIONS);
		return 2;
	}
	long total = (long)(o.rate * o.seconds);
	struct writer w[MAX_CONNECTIONS] = {0};
	o.sched = bench_schedule(o.rate, 0.2); /* connect before the first event is due */
	for (int j = 0; j < o.connections; j++) {
		w[j].index = j;
		w[j].count = total / o.connections + (j < total % o.connections ? 1 : 0);
		w[j].events = calloc((size_t)w[j].count + 1, sizeof(struct event));
		if (!w[j].events || pthread_create(&w[j].thread, NULL, run, &w[j]) != 0) {
			fprintf(stderr, "pg_writer: cannot start writer %d\n", j);
			return 1;
		}
	}
	double late_max = 0, first = 0, last = 0;
	long written = 0;
	int rc = 0;
	for (int j = 0; j < o.connections; j++) {
		pthread_join(w[j].thread, NULL);
		if (w[j].err[0]) {
			fprintf(stderr, "pg_writer: writer %d: %s\n", j, w[j].err);
			rc = 1;
		}
		for (long k = 0; k < w[j].count; k++) {
			printf("%s\t%.6f\n", w[j].events[k].id, w[j].events[k].at);
			if (!first || w[j].events[k].at < first)
				first = w[j].events[k].at;
			if (w[j].events[k].at > last)
				last = w[j].events[k].at;
		}
		written += w[j].count;
		if (w[j].late_max > late_max)
			late_max = w[j].late_max;
		free(w[j].events);
	}
	fprintf(stderr,
	        "{\"events\": %ld, \"planned\": %ld, \"first_to_last_s\": %.3f, "
	        "\"late_max_ms\": %.2f, \"connections\": %d}\n",
	        written, total, last - first, late_max * 1000, o.connections);
	return rc;
}
