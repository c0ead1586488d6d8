/* http: the metrics and probe listener on libmicrohttpd; see http.h.
 *
 * libmicrohttpd is loaded with dlopen when a listener starts, not linked: Debian's build pulls
 * in GnuTLS, p11-kit, nettle and gmp, about 2.4 MiB of resident pages in every process, and
 * most processes never set METRICS_ADDRESS. */
#include "metrics/http.h"

#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "metrics/metrics.h"
#include "util/error.h"

#ifndef SVC_MHD_SONAME
#define SVC_MHD_SONAME "libmicrohttpd.so.12"
#endif

/* The six calls svccomm makes, resolved once; the process keeps the library to its end. */
static struct {
	struct MHD_Daemon *(*start_daemon)(unsigned int, uint16_t, MHD_AcceptPolicyCallback, void *,
	                                   MHD_AccessHandlerCallback, void *, ...);
	void (*stop_daemon)(struct MHD_Daemon *);
	struct MHD_Response *(*create_response_from_buffer)(size_t, void *,
	                                                    enum MHD_ResponseMemoryMode);
	enum MHD_Result (*add_response_header)(struct MHD_Response *, const char *, const char *);
	enum MHD_Result (*queue_response)(struct MHD_Connection *, unsigned int,
	                                  struct MHD_Response *);
	void (*destroy_response)(struct MHD_Response *);
} mhd;

static bool load_mhd(char *err, size_t errsz)
{
	static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	static bool loaded;
	pthread_mutex_lock(&mu);
	if (!loaded) {
		void *lib = dlopen(SVC_MHD_SONAME, RTLD_NOW | RTLD_LOCAL);
		const char *missing = NULL;
		if (lib) {
#define SVC_MHD_SYM(field, name)                                                                   \
	do {                                                                                       \
		*(void **)&mhd.field = dlsym(lib, name);                                           \
		if (!mhd.field && !missing)                                                        \
			missing = name;                                                            \
	} while (0)
			SVC_MHD_SYM(start_daemon, "MHD_start_daemon");
			SVC_MHD_SYM(stop_daemon, "MHD_stop_daemon");
			SVC_MHD_SYM(create_response_from_buffer, "MHD_create_response_from_buffer");
			SVC_MHD_SYM(add_response_header, "MHD_add_response_header");
			SVC_MHD_SYM(queue_response, "MHD_queue_response");
			SVC_MHD_SYM(destroy_response, "MHD_destroy_response");
#undef SVC_MHD_SYM
		}
		if (!lib)
			snprintf(err, errsz, "METRICS_ADDRESS needs %s: %s", SVC_MHD_SONAME,
			         dlerror());
		else if (missing)
			snprintf(err, errsz, "METRICS_ADDRESS: %s has no %s", SVC_MHD_SONAME,
			         missing);
		else
			loaded = true;
		if (lib && !loaded)
			dlclose(lib);
	}
	bool ok = loaded;
	pthread_mutex_unlock(&mu);
	return ok;
}

struct svc_metrics_http {
	struct MHD_Daemon *d;
	int fd;
	pthread_mutex_t mu;
	struct svc_metrics_region *const *regions;
	size_t n;
	double bound;
};

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned code, char *body, size_t len,
                             const char *type)
{
	struct MHD_Response *r = mhd.create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(body);
		return MHD_NO;
	}
	mhd.add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	enum MHD_Result rc = mhd.queue_response(conn, code, r);
	mhd.destroy_response(r);
	return rc;
}

static enum MHD_Result text(struct MHD_Connection *conn, unsigned code, const char *msg)
{
	char *body = strdup(msg);
	return body ? reply(conn, code, body, strlen(body), "text/plain; charset=utf-8") : MHD_NO;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
	struct svc_metrics_http *h = cls;
	char why[256];
	(void)version, (void)upload_data, (void)upload_data_size, (void)con_cls;

	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "GET only\n");
	if (strcmp(url, "/metrics") == 0) {
		size_t len = 0;
		pthread_mutex_lock(&h->mu);
		char *body = svc_metrics_render(h->regions, h->n, &len);
		pthread_mutex_unlock(&h->mu);
		if (!body)
			return text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
		return reply(conn, MHD_HTTP_OK, body, len,
		             "text/plain; version=0.0.4; charset=utf-8");
	}
	if (strcmp(url, "/healthz") == 0 || strcmp(url, "/readyz") == 0) {
		bool ok;
		pthread_mutex_lock(&h->mu);
		if (url[1] == 'h')
			ok = svc_metrics_healthy(h->regions, h->n, h->bound, why, sizeof(why));
		else
			ok = svc_metrics_ready(h->regions, h->n, why, sizeof(why));
		pthread_mutex_unlock(&h->mu);
		return text(conn, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, why);
	}
	return text(conn, MHD_HTTP_NOT_FOUND, "not found: /metrics, /healthz, /readyz\n");
}

/* Splits "host:port" / "[v6]:port" into host and port; false when malformed. */
static bool split(const char *address, char *host, size_t hostsz, char *port, size_t portsz)
{
	const char *colon, *hs = address, *he;
	if (address[0] == '[') {
		he = strchr(address, ']');
		if (!he || he[1] != ':')
			return false;
		hs = address + 1;
		colon = he + 1;
	} else {
		colon = strrchr(address, ':');
		if (!colon || memchr(address, ':', (size_t)(colon - address)))
			return false;
		he = colon;
	}
	size_t hl = (size_t)(he - hs), pl = strlen(colon + 1);
	if (hl == 0 || hl >= hostsz || pl == 0 || pl > 5 || pl >= portsz)
		return false;
	for (const char *p = colon + 1; *p; p++)
		if (*p < '0' || *p > '9')
			return false;
	long pn = strtol(colon + 1, NULL, 10);
	if (pn < 1 || pn > 65535)
		return false;
	memcpy(host, hs, hl);
	host[hl] = '\0';
	memcpy(port, colon + 1, pl + 1);
	return true;
}

/* A listening socket on address; the fd, or -1 with the reason in err. */
static int listen_on(const char *address, char *err, size_t errsz)
{
	char host[256], port[8];
	struct addrinfo hints = {0}, *ai = NULL;
	int fd = -1, one = 1;

	if (!split(address, host, sizeof(host), port, sizeof(port))) {
		snprintf(err, errsz,
		         "METRICS_ADDRESS: expected \"host:port\" (port 1-65535), got \"%.100s\"",
		         address);
		return -1;
	}
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	int g = getaddrinfo(host, port, &hints, &ai);
	if (g != 0) {
		snprintf(err, errsz, "METRICS_ADDRESS \"%.100s\": %s", address, gai_strerror(g));
		return -1;
	}
	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0) {
		snprintf(err, errsz, "METRICS_ADDRESS \"%.100s\": cannot listen: %s", address,
		         strerror(errno));
		if (fd >= 0)
			close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

int svc_metrics_http_start(const char *address, struct svc_metrics_region *const *regions, size_t n,
                           double health_bound_s, struct svc_metrics_http **out, char *err,
                           size_t errsz)
{
	if (!load_mhd(err, errsz))
		return SVC_ECONFIG;
	struct svc_metrics_http *h = calloc(1, sizeof(*h));
	if (!h) {
		snprintf(err, errsz, "out of memory");
		return SVC_ECONFIG;
	}
	h->fd = listen_on(address, err, errsz);
	if (h->fd < 0) {
		free(h);
		return SVC_ECONFIG;
	}
	pthread_mutex_init(&h->mu, NULL);
	h->regions = regions;
	h->n = n;
	h->bound = health_bound_s;
	h->d = mhd.start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL, NULL,
	                        on_request, h, MHD_OPTION_LISTEN_SOCKET, h->fd,
	                        MHD_OPTION_CONNECTION_LIMIT, (unsigned)32,
	                        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
	if (!h->d) {
		snprintf(err, errsz, "METRICS_ADDRESS \"%.100s\": the HTTP server did not start",
		         address);
		close(h->fd);
		pthread_mutex_destroy(&h->mu);
		free(h);
		return SVC_ECONFIG;
	}
	*out = h;
	return 0;
}

void svc_metrics_http_stop(struct svc_metrics_http *h)
{
	if (!h)
		return;
	mhd.stop_daemon(h->d); /* closes the listening socket it was given */
	pthread_mutex_destroy(&h->mu);
	free(h);
}

void svc_metrics_http_lock(struct svc_metrics_http *h)
{
	if (h)
		pthread_mutex_lock(&h->mu);
}

void svc_metrics_http_unlock(struct svc_metrics_http *h)
{
	if (h)
		pthread_mutex_unlock(&h->mu);
}

void svc_metrics_http_forget(struct svc_metrics_http *h)
{
	if (h && h->fd >= 0) {
		close(h->fd);
		h->fd = -1;
	}
}
