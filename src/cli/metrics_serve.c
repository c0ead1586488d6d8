/* metrics_serve: starts and stops the METRICS_ADDRESS listener of runconsumer and runpublisher
 * (src/metrics/). Here because a listener that cannot start ends the command with exit 2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cli/cli.h"
#include "metrics/http.h"
#include "metrics/metrics.h"
#include "util/error.h"
#include "util/log.h"

int svc_cli_metrics_start(const struct svc_config *cfg, int workers, double health_bound_s,
                          struct svc_cli_metrics *m)
{
	char err[512];
	memset(m, 0, sizeof(*m));
	if (!cfg->metrics_address)
		return SVC_EXIT_OK;
	/* one region per process writing metrics: this one, then (with workers) the retired counts
	 * of dead workers and one per worker slot, shared with the forked workers */
	m->n = workers > 1 ? (size_t)workers + 2 : 1;
	m->bytes = m->n * sizeof(struct svc_metrics_region);
	void *mem = mmap(NULL, m->bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	m->regions = calloc(m->n, sizeof(*m->regions));
	if (mem == MAP_FAILED || !m->regions) {
		fprintf(stderr, "svccomm: METRICS_ADDRESS: out of memory\n");
		if (mem != MAP_FAILED)
			munmap(mem, m->bytes);
		free(m->regions);
		m->regions = NULL;
		return SVC_EXIT_FAILURE;
	}
	for (size_t i = 0; i < m->n; i++)
		m->regions[i] = (struct svc_metrics_region *)mem + i;
	svc_metrics_use(m->regions[0]);
	svc_metrics_process_info();
	if (m->n > 1) /* the supervisor's own region: no loop, no connections */
		atomic_store(&m->regions[0]->in_use, 0);
	if (svc_metrics_http_start(cfg->metrics_address, m->regions, m->n, health_bound_s, &m->http,
	                           err, sizeof(err)) != 0) {
		fprintf(stderr, "svccomm: %s\n", err);
		svc_cli_metrics_stop(m);
		return SVC_EXIT_USAGE;
	}
	svc_info("cli", "metrics on http://%s/metrics (also /healthz, /readyz)",
	         cfg->metrics_address);
	return SVC_EXIT_OK;
}

void svc_cli_metrics_stop(struct svc_cli_metrics *m)
{
	svc_metrics_http_stop(m->http);
	m->http = NULL;
	svc_metrics_use(NULL);
	if (m->regions) {
		munmap(m->regions[0], m->bytes);
		free(m->regions);
	}
	memset(m, 0, sizeof(*m));
}
