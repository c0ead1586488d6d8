#include "cli/suggest.h"

#include <ctype.h>
#include <limits.h>
#include <string.h>

static int min3(int a, int b, int c)
{
	int m = a < b ? a : b;
	return m < c ? m : c;
}

int svc_suggest_distance(const char *a, size_t la, const char *b, size_t lb)
{
	/* Three rows of the dynamic-programming table: the swap looks two rows back. */
	int rows[3][SVC_SUGGEST_MAX_LEN + 1];
	int *prev2 = rows[0], *prev = rows[1], *cur = rows[2];

	if (la > SVC_SUGGEST_MAX_LEN || lb > SVC_SUGGEST_MAX_LEN)
		return INT_MAX;
	for (size_t j = 0; j <= lb; j++)
		prev[j] = (int)j;
	for (size_t i = 1; i <= la; i++) {
		int ai = tolower((unsigned char)a[i - 1]);
		cur[0] = (int)i;
		for (size_t j = 1; j <= lb; j++) {
			int bj = tolower((unsigned char)b[j - 1]);
			cur[j] = min3(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ai != bj));
			if (i > 1 && j > 1 && ai == tolower((unsigned char)b[j - 2]) &&
			    tolower((unsigned char)a[i - 2]) == bj && prev2[j - 2] + 1 < cur[j])
				cur[j] = prev2[j - 2] + 1;
		}
		int *t = prev2;
		prev2 = prev;
		prev = cur;
		cur = t;
	}
	return prev[lb];
}

void svc_suggest_init(struct svc_suggest *s, const char *word, size_t len)
{
	memset(s, 0, sizeof(*s));
	s->best_dist = INT_MAX;
	if (len == 0 || len > SVC_SUGGEST_MAX_LEN)
		return;
	for (size_t i = 0; i < len; i++)
		s->word[i] = (char)tolower((unsigned char)word[i]);
	s->len = len;
}

void svc_suggest_add(struct svc_suggest *s, const char *name)
{
	size_t n = strlen(name);
	int d;

	if (s->len == 0 || n > SVC_SUGGEST_MAX_LEN)
		return;
	d = svc_suggest_distance(s->word, s->len, name, n);
	if (d < s->best_dist) {
		s->best = name;
		s->best_dist = d;
	}
}

const char *svc_suggest_best(const struct svc_suggest *s)
{
	int limit = (int)(s->len / 3);

	if (limit < 1)
		limit = 1;
	if (limit > 3)
		limit = 3;
	if (!s->best || s->best_dist > limit || (size_t)s->best_dist >= strlen(s->best))
		return NULL;
	return s->best;
}
