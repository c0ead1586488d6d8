/* retry: the failure policy of the consumer (retry or dead letter, which delay, which queue) and
 * what a republished copy carries. Pure functions; see consumer.h. */
#include "consumer/consumer.h"

#include <amqp.h>
#include <errno.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

/* The x-svccomm-* headers a copy gets, at most: room is kept for them. */
#define OWN_HEADERS 8
/* Longest exchange or routing key (an AMQP short string): a longer value is not copied. */
#define NAME_MAX_LEN 255

enum svc_failure_action svc_consumer_failure_action(long attempt, long max_attempts,
                                                    size_t n_delays, bool permanent,
                                                    size_t *delay_index)
{
	if (permanent || n_delays == 0 || attempt >= max_attempts)
		return SVC_FAIL_DEAD_LETTER;
	if (attempt < 1)
		attempt = 1;
	size_t i = (size_t)(attempt - 1);
	*delay_index = i < n_delays ? i : n_delays - 1;
	return SVC_FAIL_RETRY;
}

long svc_consumer_delay_ms(double seconds)
{
	double ms = floor(seconds * 1000.0 + 0.5);
	if (!(ms >= 1.0))
		return 1;
	if (ms > 2147483647.0)
		return 2147483647L;
	return (long)ms;
}

int svc_consumer_retry_queue(const char *queue, long delay_ms, char *out, size_t outsz)
{
	int n = snprintf(out, outsz, "%s.retry.%ld", queue, delay_ms);
	return n < 0 || (size_t)n >= outsz || n > 255 ? SVC_EINVAL : 0;
}

int svc_consumer_dlq_name(const char *queue, char *out, size_t outsz)
{
	int n = snprintf(out, outsz, "%s.dlq", queue);
	return n < 0 || (size_t)n >= outsz || n > 255 ? SVC_EINVAL : 0;
}

long svc_consumer_attempt(const struct svc_delivery *d)
{
	const struct svc_delivery_header *h = svc_delivery_header(d, "x-svccomm-attempt");
	long n = 1;
	if (!h)
		return 1;
	if (h->kind == 'i') {
		n = (long)h->i;
	} else if (h->kind == 's') {
		char *end;
		errno = 0;
		n = strtol(h->str, &end, 10);
		if (errno || end == h->str || *end)
			return 1;
	}
	return n >= 1 ? n : 1;
}

void svc_consumer_origin(const struct svc_delivery *d, const char **exchange,
                         const char **routing_key)
{
	const struct svc_delivery_header *hx = svc_delivery_header(d, "x-svccomm-exchange");
	const struct svc_delivery_header *hr = svc_delivery_header(d, "x-svccomm-routing-key");
	/* every header has a string form; only true strings are names (a table's form is "") */
	bool copied = hx && hr && hx->kind == 's' && hr->kind == 's';

	*exchange = copied ? hx->str : d->exchange;
	*routing_key = copied ? hr->str : d->routing_key;
}

void svc_consumer_error_excerpt(const char *text, int max_lines, char *out, size_t outsz)
{
	size_t n = 0;
	int lines = 0;
	if (outsz == 0)
		return;
	while (text[n] && n < outsz - 1) {
		if (text[n] == '\n' && ++lines >= max_lines)
			break;
		n++;
	}
	/* do not cut a UTF-8 sequence in two */
	if (text[n] && text[n] != '\n')
		while (n > 0 && ((unsigned char)text[n] & 0xC0) == 0x80)
			n--;
	memcpy(out, text, n);
	out[n] = '\0';
}

bool svc_consumer_bookkeeping_header(const char *key)
{
	return strncmp(key, "x-death", 7) == 0 || strncmp(key, "x-first-death", 13) == 0 ||
	       strncmp(key, "x-last-death", 12) == 0 || strncmp(key, "x-svccomm-", 10) == 0;
}

static bool copied_header(const struct svc_delivery_header *h)
{
	return h->kind != 'n' && !svc_consumer_bookkeeping_header(h->key);
}

size_t svc_consumer_headers_size(const struct svc_delivery *d)
{
	size_t sz = 0;
	for (size_t i = 0; i < d->n_headers; i++) {
		const struct svc_delivery_header *h = &d->headers[i];
		/* as encoded in a field table: key length byte, key, type byte, long string */
		if (copied_header(h))
			sz += 1 + strlen(h->key) + 1 + 4 + h->len;
	}
	return sz;
}

bool svc_consumer_headers_too_large(const struct svc_delivery *d)
{
	return svc_consumer_headers_size(d) > SVC_COPY_HEADERS_MAX;
}

static void add_header(struct svc_amqp_header *out, size_t *n, size_t max, const char *key,
                       const char *value)
{
	if (value && *n < max) {
		out[*n].key = key;
		out[*n].value = value;
		(*n)++;
	}
}

size_t svc_consumer_build_headers(const struct svc_delivery *d, const struct svc_failure_info *info,
                                  struct svc_amqp_header *out, size_t max, char *numbuf)
{
	size_t n = 0;
	/* Too large, the headers are not copied at all: the copy plus the x-death the broker adds
	 * must stay far below the frame size, or the copy could not be read back. */
	size_t nd = svc_consumer_headers_too_large(d) ? 0 : d->n_headers;
	for (size_t i = 0; i < nd && n + OWN_HEADERS < max; i++) {
		const struct svc_delivery_header *h = &d->headers[i];
		if (!copied_header(h))
			continue;
		out[n].key = h->key;
		out[n].value = h->str;
		n++;
	}
	if (info->dead_letter) {
		snprintf(numbuf, 24, "%ld", info->attempts);
		add_header(out, &n, max, "x-svccomm-reason", info->reason);
		add_header(out, &n, max, "x-svccomm-handler", info->handler);
		add_header(out, &n, max, "x-svccomm-error", info->error);
		add_header(out, &n, max, "x-svccomm-attempts", numbuf);
	} else {
		snprintf(numbuf, 24, "%ld", info->next_attempt);
		add_header(out, &n, max, "x-svccomm-attempt", numbuf);
		add_header(out, &n, max, "x-svccomm-error", info->error);
	}
	if (info->exchange && strlen(info->exchange) <= NAME_MAX_LEN)
		add_header(out, &n, max, "x-svccomm-exchange", info->exchange);
	if (info->routing_key && strlen(info->routing_key) <= NAME_MAX_LEN)
		add_header(out, &n, max, "x-svccomm-routing-key", info->routing_key);
	add_header(out, &n, max, SVC_COPY_SIGNATURE_HEADER, info->signature);
	if (d->oversize) {
		snprintf(numbuf + 24, 24, "%llu", (unsigned long long)d->body_size);
		add_header(out, &n, max, "x-svccomm-body-truncated", numbuf + 24);
	}
	return n;
}

void svc_consumer_copy_key(const char *broker_url, unsigned char key[SVC_COPY_KEY_LEN])
{
	static const char label[] = "svccomm copy key v1";
	unsigned char buf[1024];
	size_t n;
	struct amqp_connection_info ci;
	char *url = broker_url ? strdup(broker_url) : NULL;

	memcpy(buf, label, sizeof(label));
	n = sizeof(label);
	/* the account and vhost, not the host: every worker and process of the deployment reaches
	 * the broker with them, whichever address it uses; the whole URL when it does not parse */
	if (url && amqp_parse_url(url, &ci) == AMQP_STATUS_OK) {
		const char *parts[3] = {ci.user, ci.password, ci.vhost};
		for (int i = 0; i < 3 && n < sizeof(buf); i++) {
			size_t len = parts[i] ? strlen(parts[i]) : 0;
			if (n + len + 1 > sizeof(buf))
				len = sizeof(buf) - n - 1;
			memcpy(buf + n, parts[i] ? parts[i] : "", len);
			n += len;
			buf[n++] = '\0';
		}
	} else if (broker_url) {
		size_t len = strlen(broker_url);
		if (n + len > sizeof(buf))
			len = sizeof(buf) - n;
		memcpy(buf + n, broker_url, len);
		n += len;
	}
	SHA256(buf, n, key);
	OPENSSL_cleanse(buf, sizeof(buf));
	if (url) {
		OPENSSL_cleanse(url, strlen(broker_url));
		free(url);
	}
}

/* Appends "<len>:<bytes>" to buf (so no two field lists encode alike); false when it does not
 * fit or the field is longer than an AMQP name. */
static bool put_field(unsigned char *buf, size_t bufsz, size_t *n, const char *s, size_t len)
{
	if (len > 255 || *n + 4 + len > bufsz)
		return false;
	*n += (size_t)snprintf((char *)buf + *n, 5, "%zu:", len);
	memcpy(buf + *n, s, len);
	*n += len;
	return true;
}

int svc_consumer_sign_copy(const unsigned char key[SVC_COPY_KEY_LEN], const char *queue,
                           const char *exchange, const char *routing_key, long attempt,
                           const void *body, size_t len, char out[SVC_COPY_SIGNATURE_LEN + 1])
{
	unsigned char buf[4 * 260 + SHA256_DIGEST_LENGTH];
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	char num[24];
	size_t n = 0;

	out[0] = '\0';
	snprintf(num, sizeof(num), "%ld", attempt);
	if (!queue || !exchange || !routing_key ||
	    !put_field(buf, sizeof(buf), &n, queue, strlen(queue)) ||
	    !put_field(buf, sizeof(buf), &n, exchange, strlen(exchange)) ||
	    !put_field(buf, sizeof(buf), &n, routing_key, strlen(routing_key)) ||
	    !put_field(buf, sizeof(buf), &n, num, strlen(num)))
		return SVC_EINVAL;
	SHA256(body ? body : "", body ? len : 0, buf + n);
	n += SHA256_DIGEST_LENGTH;
	if (!HMAC(EVP_sha256(), key, SVC_COPY_KEY_LEN, buf, n, mac, &maclen) ||
	    maclen * 2 != SVC_COPY_SIGNATURE_LEN)
		return SVC_EINVAL;
	for (unsigned int i = 0; i < maclen; i++)
		snprintf(out + 2 * i, 3, "%02x", mac[i]);
	return 0;
}

bool svc_consumer_copy_trusted(const struct svc_delivery *d, const char *queue,
                               const unsigned char key[SVC_COPY_KEY_LEN])
{
	const struct svc_delivery_header *hs = svc_delivery_header(d, SVC_COPY_SIGNATURE_HEADER);
	const char *exchange, *routing_key;
	char want[SVC_COPY_SIGNATURE_LEN + 1];

	if (!hs || hs->kind != 's' || hs->len != SVC_COPY_SIGNATURE_LEN)
		return false;
	svc_consumer_origin(d, &exchange, &routing_key);
	if (exchange == d->exchange) /* no origin headers: nothing to trust */
		return false;
	if (svc_consumer_sign_copy(key, queue, exchange, routing_key, svc_consumer_attempt(d),
	                           d->body, d->body_len, want) != 0)
		return false;
	return CRYPTO_memcmp(want, hs->str, SVC_COPY_SIGNATURE_LEN) == 0;
}
