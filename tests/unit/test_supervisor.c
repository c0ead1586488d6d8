/* Unit tests for consumer/supervisor.c: exit status 2 is a configuration error (stop all) only
 * before the worker said it consumes; after that it is a crash (restart). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "consumer/supervisor.h"
#include "util/error.h"

struct plan {
	char starts[64]; /* a file that gets one byte per worker start */
	bool ready;      /* the worker calls svc_supervisor_ready() before exiting 2 */
};

/* Counts the start, then: on the second start stops the supervisor (exit 0), else exits 2. */
static int worker(int n, void *arg)
{
	const struct plan *p = arg;
	struct stat st;
	FILE *f = fopen(p->starts, "a");

	(void)n;
	if (!f)
		return 1;
	fputc('s', f);
	fclose(f);
	if (stat(p->starts, &st) == 0 && st.st_size >= 2) {
		signal(SIGTERM, SIG_IGN); /* the supervisor forwards it: exit 0 all the same */
		kill(getppid(), SIGTERM);
		return SVC_EXIT_OK;
	}
	if (p->ready)
		svc_supervisor_ready();
	return SVC_EXIT_USAGE;
}

static long starts(const struct plan *p)
{
	struct stat st;

	return stat(p->starts, &st) == 0 ? (long)st.st_size : 0;
}

static void exit_2_before_consuming_stops_all(void **state)
{
	struct plan p = {.ready = false};
	(void)state;

	snprintf(p.starts, sizeof(p.starts), "/tmp/svc-supervisor-%d-a", (int)getpid());
	unlink(p.starts);
	assert_int_equal(svc_supervisor_run(1, worker, &p), SVC_EXIT_USAGE);
	assert_int_equal(starts(&p), 1);
	unlink(p.starts);
}

static void exit_2_after_consuming_is_a_crash_and_the_worker_restarts(void **state)
{
	struct plan p = {.ready = true};
	(void)state;

	snprintf(p.starts, sizeof(p.starts), "/tmp/svc-supervisor-%d-b", (int)getpid());
	unlink(p.starts);
	assert_int_equal(svc_supervisor_run(1, worker, &p), SVC_EXIT_OK);
	assert_int_equal(starts(&p), 2);
	unlink(p.starts);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(exit_2_before_consuming_stops_all),
	    cmocka_unit_test(exit_2_after_consuming_is_a_crash_and_the_worker_restarts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
