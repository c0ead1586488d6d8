/* nodes: the list of broker nodes and the choice of the next one. See amqp/nodes.h. */
#include "amqp/nodes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp/internal.h"
#include "util/error.h"
#include "util/log.h"
#include "util/secret.h"

#define LOG "broker"

bool svc_amqp_url_node(const char *url, char *out, size_t outsz, bool *ssl)
{
	struct amqp_connection_info info;
	size_t len = strlen(url);
	char *copy = malloc(len + 1);
	bool ok;

	if (!copy)
		return false;
	memcpy(copy, url, len + 1);
	amqp_default_connection_info(&info);
	ok = amqp_parse_url(copy, &info) == AMQP_STATUS_OK;
	if (ok) {
		snprintf(out, outsz, strchr(info.host, ':') ? "[%s]:%d" : "%s:%d", info.host,
		         info.port);
		if (ssl)
			*ssl = info.ssl != 0;
	}
	explicit_bzero(copy, len);
	free(copy);
	return ok;
}

int svc_amqp_nodes_init(struct svc_amqp_nodes *ns, const char *const *urls, size_t n, char *err,
                        size_t errsz)
{
	char node[280], masked[512];
	bool first_ssl = false;

	memset(ns, 0, sizeof(*ns));
	if (n == 0) {
		snprintf(err, errsz,
		         "BROKER_CONNECTION_URL: expected at least one amqp:// or "
		         "amqps:// URL, got an empty list");
		return SVC_EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		bool ssl = false;

		if (!urls[i] || !svc_amqp_url_node(urls[i], node, sizeof(node), &ssl)) {
			snprintf(
			    err, errsz,
			    "BROKER_CONNECTION_URL[%zu]: expected an amqp:// or amqps:// URL, got "
			    "\"%s\"",
			    i + 1, svc_secret_mask(urls[i] ? urls[i] : "", masked, sizeof(masked)));
			return SVC_EINVAL;
		}
		if (i == 0)
			first_ssl = ssl;
		else if (ssl != first_ssl) {
			snprintf(
			    err, errsz,
			    "BROKER_CONNECTION_URL[%zu]: expected %s like the first entry (amqp:// "
			    "and amqps:// do not mix), got \"%s\"",
			    i + 1, first_ssl ? "an amqps:// URL" : "an amqp:// URL",
			    svc_secret_mask(urls[i], masked, sizeof(masked)));
			return SVC_EINVAL;
		}
	}
	ns->urls = calloc(n, sizeof(*ns->urls));
	if (!ns->urls)
		goto nomem;
	for (size_t i = 0; i < n; i++) {
		if (!(ns->urls[i] = strdup(urls[i])))
			goto nomem;
		ns->n = i + 1;
	}
	return 0;
nomem:
	svc_amqp_nodes_release(ns);
	snprintf(err, errsz, "out of memory");
	return SVC_ENOMEM;
}

void svc_amqp_nodes_release(struct svc_amqp_nodes *ns)
{
	for (size_t i = 0; ns->urls && i < ns->n; i++) {
		explicit_bzero(ns->urls[i], strlen(ns->urls[i]));
		free(ns->urls[i]);
	}
	free(ns->urls);
	memset(ns, 0, sizeof(*ns));
}

void svc_amqp_nodes_shuffle(struct svc_amqp_nodes *ns, unsigned seed)
{
	for (size_t i = ns->n; i > 1; i--) {
		size_t j = (size_t)rand_r(&seed) % i;
		char *t = ns->urls[i - 1];

		ns->urls[i - 1] = ns->urls[j];
		ns->urls[j] = t;
	}
}

const char *svc_amqp_nodes_url(const struct svc_amqp_nodes *ns, size_t i)
{
	return i < ns->n ? ns->urls[i] : NULL;
}

void svc_amqp_nodes_lost(struct svc_amqp_nodes *ns)
{
	if (!ns->connected || ns->n == 0)
		return;
	ns->connected = false;
	ns->start = (ns->cur + 1) % ns->n;
}

int svc_amqp_nodes_connect(struct svc_amqp_nodes *ns, struct svc_amqp *c, int heartbeat,
                           const char *conn_name)
{
	char errs[sizeof(c->err)] = "";
	size_t used = 0;
	int rc = SVC_EINVAL;

	if (ns->n == 0) {
		snprintf(c->err, sizeof(c->err), "no broker URL");
		return SVC_EINVAL;
	}
	for (size_t k = 0; k < ns->n; k++) {
		size_t i = (ns->start + k) % ns->n;

		rc = svc_amqp_connect(c, ns->urls[i], heartbeat, conn_name);
		if (rc == 0) {
			bool changed = !ns->any || i != ns->cur;

			ns->cur = ns->start = i;
			ns->connected = ns->any = true;
			if (changed)
				svc_info(LOG, "using broker node %s (%zu of %zu%s)",
				         svc_amqp_node(c), i + 1, ns->n,
				         k > 0 ? ", the ones before it did not answer" : "");
			return 0;
		}
		if (ns->n > 1 && used < sizeof(errs)) /* every node's reason, not only the last */
			used += (size_t)snprintf(errs + used, sizeof(errs) - used, "%s%s",
			                         used ? "; " : "", c->err);
	}
	if (ns->n > 1)
		snprintf(c->err, sizeof(c->err), "no broker node answered: %.*s",
		         (int)(sizeof(c->err) - sizeof("no broker node answered: ")), errs);
	return rc;
}
