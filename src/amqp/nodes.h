/* amqp_nodes: the RabbitMQ nodes of BROKER_CONNECTION_URL (one URL, or one per node of a
 * cluster) and which one to try next.
 *
 * A process keeps one struct svc_amqp_nodes for all its connections (the relay has one, each
 * consumer worker has one). svc_amqp_nodes_connect() tries the nodes from the preferred one
 * on, in order and wrapping around, until one answers; the connections opened after that go
 * to the same node until svc_amqp_nodes_lost() reports that a connection to it was lost: the
 * next connect then starts with the node after it. The struct owns copies of the URLs (they
 * hold passwords: wiped on release); it knows AMQP only. */
#ifndef SVC_AMQP_NODES_H
#define SVC_AMQP_NODES_H

#include <stdbool.h>
#include <stddef.h>

#include "amqp/conn.h"

struct svc_amqp_nodes {
	char **urls; /* in the order they are tried */
	size_t n;
	size_t start;   /* the node tried first by the next connect */
	size_t cur;     /* the node of the last successful connect (valid when connected) */
	bool connected; /* a connect succeeded and no loss was reported since */
	bool any;       /* a connect ever succeeded (for the log line of a change of node) */
};

/* Copies urls[0..n) after checking them: at least one, each parsed by amqp_parse_url, all
 * amqp:// or all amqps://. On error returns SVC_EINVAL with a text naming the entry
 * ("BROKER_CONNECTION_URL[2]: ...", its password masked) in err. */
int svc_amqp_nodes_init(struct svc_amqp_nodes *ns, const char *const *urls, size_t n, char *err,
                        size_t errsz);
/* Wipes and frees the URLs; the struct is zeroed. */
void svc_amqp_nodes_release(struct svc_amqp_nodes *ns);
/* Shuffles the order the nodes are tried in (Fisher-Yates with rand_r(seed)); call once, in
 * the process that connects (after fork, so workers draw different orders). */
void svc_amqp_nodes_shuffle(struct svc_amqp_nodes *ns, unsigned seed);
/* svc_amqp_connect() to the preferred node, then to the following ones until one answers.
 * Logs the node in use when it changes. Returns 0, or the code of the last attempt with
 * every node's failure in svc_amqp_error(c). */
int svc_amqp_nodes_connect(struct svc_amqp_nodes *ns, struct svc_amqp *c, int heartbeat,
                           const char *conn_name);
/* A connection to the node in use was lost: the next connect starts with the node after
 * it. Calling it again before the next successful connect changes nothing. */
void svc_amqp_nodes_lost(struct svc_amqp_nodes *ns);
/* The URL tried at position i (0 = first), or NULL. */
const char *svc_amqp_nodes_url(const struct svc_amqp_nodes *ns, size_t i);

/* "host:port" of a URL (an IPv6 host in brackets) into out; false when it does not parse. */
bool svc_amqp_url_node(const char *url, char *out, size_t outsz, bool *ssl);

#endif
