/* tls: the TLS side of an amqps:// connection on rabbitmq-c 0.11. See amqp/internal.h.
 *
 * rabbitmq-c 0.11 verifies the peer by default but loads no trust store and ignores
 * SSL_CERT_FILE, and its own host name check reads DNS names only (an IP address SAN never
 * matches, so a URL with an IP address could not connect). svccomm therefore loads the CA
 * file itself and gives the host check to OpenSSL's chain verification (X509_VERIFY_PARAM: a
 * DNS name with RFC 6125 wildcard rules, or an IP address), whose result rabbitmq-c checks
 * after the handshake when verify_peer is on. rabbitmq-c sends the URL's host as SNI. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <amqp_ssl_socket.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "amqp/internal.h"
#include "util/error.h"
#include "util/log.h"

#define LOG "amqp"

static const struct svc_amqp_tls tls_defaults = {.verify_peer = true, .verify_hostname = true};

void svc_amqp_set_tls(struct svc_amqp *c, const struct svc_amqp_tls *tls)
{
	c->tls = tls ? *tls : tls_defaults;
	c->tls_set = tls != NULL;
}

/* Records the first reason the broker's chain failed verification. The handshake goes on
 * (verify mode NONE, as rabbitmq-c sets it); rabbitmq-c reads the result afterwards. */
static int on_verify(int ok, X509_STORE_CTX *x)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
	struct svc_amqp *c = ssl ? SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)) : NULL;

	if (!ok && c && !c->tls_why[0])
		snprintf(c->tls_why, sizeof(c->tls_why), "%s",
		         X509_verify_cert_error_string(X509_STORE_CTX_get_error(x)));
	return ok;
}

/* An encrypted key would make OpenSSL prompt on the terminal: refuse it instead. */
static int no_password(char *buf, int size, int rwflag, void *u)
{
	(void)buf, (void)size, (void)rwflag, (void)u;
	return -1;
}

/* "BROKER_TLS.<what> <path>: <why>" in c->err, with OpenSSL's reason when it has one. */
static int file_error(struct svc_amqp *c, const char *what, const char *path)
{
	unsigned long e = ERR_peek_error(); /* the first: the cause ("no start line") */
	const char *why = e ? ERR_reason_error_string(e) : NULL;

	snprintf(c->err, sizeof(c->err), "BROKER_TLS.%s %s: cannot load it (%s)", what, path,
	         why ? why : "not a PEM file of the expected kind");
	ERR_clear_error();
	return SVC_ECONN;
}

/* Fails with the system's reason when path cannot be opened for reading. */
static int readable(struct svc_amqp *c, const char *what, const char *path)
{
	FILE *f = fopen(path, "r");

	if (!f) {
		snprintf(c->err, sizeof(c->err), "BROKER_TLS.%s %s: cannot read it (%s)", what,
		         path, strerror(errno));
		return SVC_ECONN;
	}
	fclose(f);
	return 0;
}

static int load_files(struct svc_amqp *c, SSL_CTX *ctx, const struct svc_amqp_tls *t)
{
	const char *ca = t->ca_file ? t->ca_file : SVC_AMQP_SYSTEM_CA;

	if (readable(c, "ca_file", ca) != 0)
		return SVC_ECONN;
	if (amqp_ssl_socket_set_cacert(c->sock, ca) != AMQP_STATUS_OK)
		return file_error(c, "ca_file", ca);
	if (!t->cert_file)
		return 0;
	if (readable(c, "cert_file", t->cert_file) != 0 ||
	    readable(c, "key_file", t->key_file ? t->key_file : t->cert_file) != 0)
		return SVC_ECONN;
	SSL_CTX_set_default_passwd_cb(ctx, no_password);
	if (SSL_CTX_use_certificate_chain_file(ctx, t->cert_file) != 1)
		return file_error(c, "cert_file", t->cert_file);
	if (SSL_CTX_use_PrivateKey_file(ctx, t->key_file ? t->key_file : t->cert_file,
	                                SSL_FILETYPE_PEM) != 1)
		return file_error(c, "key_file", t->key_file ? t->key_file : t->cert_file);
	return 0;
}

/* Makes OpenSSL's chain verification also check that the certificate names host: an IP
 * address SAN for an address, a DNS name SAN (or CN without SANs) for a name. */
static int expect_host(struct svc_amqp *c, SSL_CTX *ctx, const char *host)
{
	X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);
	unsigned char addr[16];
	int ok;

	if (inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1) {
		ok = X509_VERIFY_PARAM_set1_ip_asc(param, host);
	} else {
		X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		ok = X509_VERIFY_PARAM_set1_host(param, host, 0);
	}
	if (ok != 1) {
		snprintf(c->err, sizeof(c->err), "TLS: cannot check the host name '%s'", host);
		ERR_clear_error();
		return SVC_ECONN;
	}
	return 0;
}

int svc_amqp_tls_setup(struct svc_amqp *c, const char *host)
{
	const struct svc_amqp_tls *t = c->tls_set ? &c->tls : &tls_defaults;
	SSL_CTX *ctx = amqp_ssl_socket_get_context(c->sock);
	int rc;

	c->tls_why[0] = '\0';
	ERR_clear_error();
	if (amqp_ssl_socket_set_ssl_versions(c->sock, AMQP_TLSv1_2, AMQP_TLSvLATEST) !=
	        AMQP_STATUS_OK ||
	    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
		snprintf(c->err, sizeof(c->err), "TLS: cannot require TLS 1.2 or later");
		return SVC_ECONN;
	}
	if ((rc = load_files(c, ctx, t)) != 0)
		return rc;
	SSL_CTX_set_app_data(ctx, c);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, on_verify);
	amqp_ssl_socket_set_verify_peer(c->sock, t->verify_peer);
	/* With verify_peer, the host is checked inside the chain verification (DNS names and IP
	 * addresses); without it, only rabbitmq-c's own check (DNS names) is left. */
	amqp_ssl_socket_set_verify_hostname(c->sock, t->verify_hostname && !t->verify_peer);
	if (t->verify_peer && t->verify_hostname && (rc = expect_host(c, ctx, host)) != 0)
		return rc;
	if (!t->verify_peer || !t->verify_hostname)
		svc_warn(LOG,
		         "TLS to %s: %s verification is off (BROKER_TLS): a man in the middle "
		         "can read and change this connection",
		         host, !t->verify_peer ? "certificate" : "host name");
	return 0;
}

void svc_amqp_tls_explain(struct svc_amqp *c, const char *host, int port, int status)
{
	const char *ca = c->tls_set && c->tls.ca_file ? c->tls.ca_file : SVC_AMQP_SYSTEM_CA;

	if (status == AMQP_STATUS_SSL_PEER_VERIFY_FAILED)
		snprintf(
		    c->err, sizeof(c->err),
		    "cannot connect to %s:%d: TLS: the broker's certificate failed verification "
		    "for '%s': %s (trusted CAs from %s)",
		    host, port, host, c->tls_why[0] ? c->tls_why : "no certificate", ca);
	else if (status == AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED)
		snprintf(
		    c->err, sizeof(c->err),
		    "cannot connect to %s:%d: TLS: the broker's certificate does not name '%s'",
		    host, port, host);
}

void svc_amqp_tls_explain_io(struct svc_amqp *c)
{
	unsigned long e = ERR_peek_last_error();
	const char *why = e ? ERR_reason_error_string(e) : NULL;
	size_t n = strlen(c->err);

	/* e.g. a broker that wants a client certificate says so in an alert after the TLS 1.3
	 * handshake, so the first read (the login) fails */
	if (why && n < sizeof(c->err))
		snprintf(c->err + n, sizeof(c->err) - n, " (TLS: %s)", why);
	ERR_clear_error();
}
