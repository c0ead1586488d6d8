/* Internal to src/amqp/: the connection object shared by conn.c (connection, channel,
 * declarations) and publish.c (publishing, confirms, returns). */
#ifndef SVC_AMQP_INTERNAL_H
#define SVC_AMQP_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "amqp/conn.h"

#define SEQ_HEADER      "x-svccomm-seq"
#define FRAME_MAX       131072
#define CONNECT_TIMEOUT 10
#define RPC_TIMEOUT     30

struct svc_amqp {
	amqp_connection_state_t st;
	amqp_socket_t *sock;
	amqp_channel_t ch;
	bool open;         /* false after any error: no call that reads from it (close) */
	bool confirm;      /* channel in confirm mode */
	bool reopening;    /* reopening the channel: a close now means it cannot be reopened */
	uint64_t next_seq; /* last publish sequence number handed out */
	int reply_code;    /* code of the last channel/connection close from the broker */
	char err[512];
	char node[280];              /* "host:port" while connected, else "" */
	amqp_table_entry_t *entries; /* reusable header entries for publish */
	size_t entries_cap;
	struct svc_amqp_tls tls; /* options of amqps:// connects (svc_amqp_set_tls) */
	bool tls_set;            /* tls holds options; else the defaults */
	char tls_why[160];       /* why the broker's certificate failed verification */
	/* Frames svccomm encodes itself (plain TCP only: publish.c). A message's frames leave in
	 * one send(); while corked, consecutive publishes collect here first. */
	bool raw;           /* plain TCP: publishes may go through out */
	bool corked;        /* svc_amqp_cork(): flush only when full or uncorked */
	unsigned char *out; /* encoded frames not sent yet */
	size_t out_len, out_cap;
};

/* Sends what c->out holds, if anything (every call that sends or reads on c->st does this
 * first, so frames keep their order). Returns 0, or SVC_ECONN (connection marked unusable). */
int svc_amqp_flush_out(struct svc_amqp *c);

/* Configures the TLS socket c->sock (made by amqp_ssl_socket_new) for host: trust store,
 * client certificate, TLS 1.2 or later, verification of the chain and of host (a DNS name or
 * an IP address). Returns 0, or SVC_ECONN with the text (naming the file) in c->err: a file
 * that cannot be loaded now may be fixed before the next attempt. Logs a warning when
 * verification is off. */
int svc_amqp_tls_setup(struct svc_amqp *c, const char *host);

/* After a failed TLS open: rewrites c->err with why verification failed, when known. */
void svc_amqp_tls_explain(struct svc_amqp *c, const char *host, int port, int status);

/* After a failed read or write on a TLS connection: appends OpenSSL's reason to c->err. */
void svc_amqp_tls_explain_io(struct svc_amqp *c);

/* Records a rabbitmq-c status as the error and marks the connection unusable; SVC_ECONN. */
int svc_amqp_lib_error(struct svc_amqp *c, const char *what, int status);

/* The broker closed the channel: answer close-ok, reopen it (confirm mode again if it was on);
 * SVC_EPROTO, or SVC_ECONN when it cannot be reopened. */
int svc_amqp_on_channel_close(struct svc_amqp *c, const amqp_channel_close_t *m);

/* The broker closed the connection: answer close-ok; SVC_ECONN. */
int svc_amqp_on_connection_close(struct svc_amqp *c, const amqp_connection_close_t *m);

#endif
