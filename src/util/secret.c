/* secret: password masking for URLs, conninfo strings and the error texts that echo them.
 * See secret.h. */
#include "util/secret.h"

#include <amqp.h>
#include <ctype.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_SECRETS 16
#define SHORT       4

/* A growing output string; on allocation failure it stays NULL and every append is a no-op. */
struct buf {
	char *s;
	size_t len, cap;
	bool failed;
};

static void put(struct buf *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = (b->len + n + 1) * 2;
		char *p = realloc(b->s, cap);
		if (!p) {
			b->failed = true;
			return;
		}
		b->s = p;
		b->cap = cap;
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void finish(struct buf *b, char *out, size_t outsz)
{
	size_t n;

	if (outsz == 0) {
		free(b->s);
		return;
	}
	if (b->failed || !b->s) {
		/* Never fall back to the input: it may hold the password. */
		snprintf(out, outsz, "%s", b->failed ? "(out of memory)" : "");
	} else {
		n = b->len < outsz - 1 ? b->len : outsz - 1;
		memcpy(out, b->s, n);
		out[n] = '\0';
	}
	free(b->s);
}

/* Length of "scheme://" at the start of s, or 0. */
static size_t scheme_len(const char *s)
{
	size_t i = 0;

	if (!isalpha((unsigned char)s[0]))
		return 0;
	while (isalnum((unsigned char)s[i]) || s[i] == '+' || s[i] == '.' || s[i] == '-')
		i++;
	return strncmp(s + i, "://", 3) == 0 ? i + 3 : 0;
}

/* The span of the password in the userinfo of a URL: [*start, *end), or false. */
static bool url_password_span(const char *url, size_t *start, size_t *end)
{
	size_t a = scheme_len(url), q, at = 0;
	const char *colon;

	if (!a)
		return false;
	q = a + strcspn(url + a, "?#");
	for (size_t i = a; i < q; i++)
		if (url[i] == '@')
			at = i;
	if (!at)
		return false;
	colon = memchr(url + a, ':', at - a);
	if (!colon)
		return false;
	*start = (size_t)(colon + 1 - url);
	*end = at;
	return true;
}

static bool is_password_key(const char *s, size_t n)
{
	return n == 8 && strncasecmp(s, "password", 8) == 0;
}

/* Calls fn for every password value in url (userinfo, query parameters) or conninfo
 * (password=...), with the span it occupies in the text. */
typedef void (*span_fn)(void *arg, size_t start, size_t end);

static void each_password_span(const char *s, span_fn fn, void *arg)
{
	size_t start, end, i;

	if (scheme_len(s)) {
		if (url_password_span(s, &start, &end))
			fn(arg, start, end);
		for (i = 0; s[i]; i++) {
			if ((s[i] == '?' || s[i] == '&') &&
			    strncasecmp(s + i + 1, "password=", 9) == 0) {
				start = i + 10;
				end = start + strcspn(s + start, "&#");
				fn(arg, start, end);
			}
		}
		return;
	}
	/* libpq key=value: key ws* '=' ws* (value | 'quoted \' value') */
	i = 0;
	while (s[i]) {
		size_t k0, k1;

		while (isspace((unsigned char)s[i]))
			i++;
		k0 = i;
		while (s[i] && s[i] != '=' && !isspace((unsigned char)s[i]))
			i++;
		k1 = i;
		while (isspace((unsigned char)s[i]))
			i++;
		if (s[i] != '=') {
			if (k1 == k0)
				break;
			continue;
		}
		i++;
		while (isspace((unsigned char)s[i]))
			i++;
		start = i;
		if (s[i] == '\'') {
			for (i++; s[i] && s[i] != '\''; i++)
				if (s[i] == '\\' && s[i + 1])
					i++;
			if (s[i])
				i++;
		} else {
			while (s[i] && !isspace((unsigned char)s[i]))
				i++;
		}
		if (is_password_key(s + k0, k1 - k0))
			fn(arg, start, i);
	}
}

struct masker {
	const char *src;
	struct buf *b;
	size_t pos;
};

static void mask_span(void *arg, size_t start, size_t end)
{
	struct masker *m = arg;

	if (start < m->pos)
		return;
	put(m->b, m->src + m->pos, start - m->pos);
	put(m->b, "****", 4);
	m->pos = end;
}

static void mask_into(const char *url, struct buf *b)
{
	struct masker m = {url, b, 0};

	each_password_span(url, mask_span, &m);
	put(b, url + m.pos, strlen(url + m.pos));
}

char *svc_secret_mask(const char *url, char *out, size_t outsz)
{
	struct buf b = {0};

	if (!url)
		url = "";
	put(&b, "", 0);
	mask_into(url, &b);
	finish(&b, out, outsz);
	return out;
}

/* ---- scrubbing error texts ------------------------------------------------------------ */

struct secrets {
	char *v[MAX_SECRETS];
	int n;
};

/* whole: a whole password, kept however short (a short one found in the text hides it);
 * a piece of one is kept only from SHORT bytes on. */
static void add_secret(struct secrets *s, const char *p, size_t n, bool whole)
{
	if (n == 0 || s->n >= MAX_SECRETS || (!whole && n < SHORT))
		return;
	for (int i = 0; i < s->n; i++)
		if (strlen(s->v[i]) == n && memcmp(s->v[i], p, n) == 0)
			return;
	s->v[s->n] = strndup(p, n);
	if (s->v[s->n])
		s->n++;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)tolower((unsigned char)c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static void add_with_pieces(struct secrets *s, const char *p, size_t n)
{
	char *dec = malloc(n + 1);
	size_t d = 0;
	const char *piece = p;

	add_secret(s, p, n, true);
	for (size_t i = 0; i <= n; i++) {
		if (i == n || p[i] == '@') {
			if (piece != p || i != n)
				add_secret(s, piece, (size_t)(p + i - piece), false);
			piece = p + i + 1;
		}
	}
	if (!dec)
		return;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '%' && i + 2 < n && hexval(p[i + 1]) >= 0 && hexval(p[i + 2]) >= 0) {
			dec[d++] = (char)(hexval(p[i + 1]) * 16 + hexval(p[i + 2]));
			i += 2;
		} else {
			dec[d++] = p[i];
		}
	}
	if (d != n)
		add_secret(s, dec, d, true);
	free(dec);
}

struct collector {
	const char *src;
	struct secrets *s;
};

static void collect_span(void *arg, size_t start, size_t end)
{
	struct collector *c = arg;
	const char *p = c->src + start;
	size_t n = end - start;

	if (n >= 2 && p[0] == '\'' && p[n - 1] == '\'') {
		p++;
		n -= 2;
	}
	add_with_pieces(c->s, p, n);
}

/* True when p is a substring of a password already collected (a parser read only part). */
static bool part_of_known(const struct secrets *s, const char *p)
{
	for (int i = 0; i < s->n; i++)
		if (strstr(s->v[i], p))
			return true;
	return false;
}

static void collect_parsed(const char *source, struct secrets *s)
{
	size_t a = scheme_len(source);

	if (a && (strncmp(source, "amqp://", 7) == 0 || strncmp(source, "amqps://", 8) == 0)) {
		struct amqp_connection_info ci;
		char *copy = strdup(source);

		amqp_default_connection_info(&ci);
		if (copy && amqp_parse_url(copy, &ci) == AMQP_STATUS_OK && ci.password &&
		    !part_of_known(s, ci.password) && strcmp(ci.password, "guest") != 0)
			add_secret(s, ci.password, strlen(ci.password), true);
		free(copy);
		return;
	}
	PQconninfoOption *opts = PQconninfoParse(source, NULL);
	if (!opts)
		return;
	for (PQconninfoOption *o = opts; o->keyword; o++)
		if (strcmp(o->keyword, "password") == 0 && o->val && !part_of_known(s, o->val))
			add_secret(s, o->val, strlen(o->val), true);
	PQconninfoFree(opts);
}

/* Replaces every occurrence of what in b's text by with. */
static void replace_all(struct buf *b, const char *what, const char *with)
{
	struct buf r = {0};
	size_t wn = strlen(what);
	const char *p, *q;

	if (!b->s || !wn)
		return;
	put(&r, "", 0);
	for (p = b->s; (q = strstr(p, what)) != NULL; p = q + wn) {
		put(&r, p, (size_t)(q - p));
		put(&r, with, strlen(with));
	}
	put(&r, p, strlen(p));
	if (r.failed) {
		free(r.s);
		b->failed = true;
		return;
	}
	free(b->s);
	*b = r;
}

static int by_length_desc(const void *a, const void *b)
{
	size_t la = strlen(*(char *const *)a), lb = strlen(*(char *const *)b);

	return la < lb ? 1 : la > lb ? -1 : 0;
}

char *svc_secret_scrub(const char *msg, const char *source, char *out, size_t outsz)
{
	struct buf b = {0}, masked = {0};
	struct secrets s = {0};
	struct collector c = {source, &s};
	bool hide = false;

	if (!msg)
		msg = "";
	put(&b, msg, strlen(msg));
	if (source && *source) {
		each_password_span(source, collect_span, &c);
		collect_parsed(source, &s);
		put(&masked, "", 0);
		mask_into(source, &masked);
		if (masked.s && strcmp(masked.s, source) != 0)
			replace_all(&b, source, masked.s);
		free(masked.s);
		/* Longest first, so a piece never leaves the rest of its password behind. */
		qsort(s.v, (size_t)s.n, sizeof(s.v[0]), by_length_desc);
		for (int i = 0; i < s.n; i++) {
			if (strlen(s.v[i]) >= SHORT)
				replace_all(&b, s.v[i], "****");
			else if (b.s && strstr(b.s, s.v[i]))
				hide = true;
			free(s.v[i]);
		}
	}
	if (hide) {
		free(b.s);
		b = (struct buf){0};
		put(&b, SVC_SECRET_HIDDEN, strlen(SVC_SECRET_HIDDEN));
	}
	finish(&b, out, outsz);
	return out;
}
