/* suggest: the known name closest to a mistyped one ("runconsumr" -> "runconsumer"), for the
 * "did you mean" of unknown commands and options.
 *
 * Distance is the optimal string alignment distance (Levenshtein plus the swap of two adjacent
 * letters), ignoring case. A name is suggested only when it is at most a third of the typed
 * word's length away (at least 1, at most 3) and shares something with it, so "frobnicate"
 * gets no suggestion. */
#ifndef SVC_CLI_SUGGEST_H
#define SVC_CLI_SUGGEST_H

#include <stddef.h>

#define SVC_SUGGEST_MAX_LEN 64 /* longer words and names are never suggested or matched */

struct svc_suggest {
	char word[SVC_SUGGEST_MAX_LEN + 1]; /* what was typed, lower case */
	size_t len;                         /* 0 when too long to compare */
	const char *best;                   /* the closest name so far */
	int best_dist;
};

/* Starts a search for the name closest to the first len bytes of word. */
void svc_suggest_init(struct svc_suggest *s, const char *word, size_t len);

/* Offers one known name (kept by pointer: it must outlive the search). */
void svc_suggest_add(struct svc_suggest *s, const char *name);

/* The closest name offered when it is close enough, else NULL; the first offered wins a tie. */
const char *svc_suggest_best(const struct svc_suggest *s);

/* The distance between a and b (lengths la, lb <= SVC_SUGGEST_MAX_LEN), ignoring case. */
int svc_suggest_distance(const char *a, size_t la, const char *b, size_t lb);

#endif
