/* trace: the relay's stage times, debug-only. With LOG_LEVEL = "debug" the relay writes one
 * line per claimed batch ("batch times": when the claim returned and when the batch's last row
 * was published) and one per set of rows its confirms settled ("confirm times": when it read
 * them), each naming its rows as id ranges ("5-9,12"), times in seconds since the epoch with
 * microseconds (wall clock). bench/run.py's latency section reads them to split the end-to-end
 * latency into stages. At other levels nothing is measured or formatted.
 *
 * The id-range writer is pure text (unit tested); it writes into the caller's buffer. */
#ifndef SVC_RELAY_TRACE_H
#define SVC_RELAY_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Ids written as ranges of consecutive values: "3-5,9,11-12". Ids that do not fit in cap end
 * the text with "..." (cut set) and are left out. */
struct svc_id_ranges {
	char *buf;
	size_t cap, len;
	int64_t first, last;
	bool open; /* first..last not written yet */
	bool cut;
};

/* Starts an empty text in buf (cap >= 8 bytes). */
void svc_id_ranges_init(struct svc_id_ranges *ir, char *buf, size_t cap);
/* Adds id: it extends the open range when it is the next value, else starts a new one. */
void svc_id_ranges_add(struct svc_id_ranges *ir, int64_t id);
/* Writes the open range; returns the text ("" when no id was added). */
const char *svc_id_ranges_end(struct svc_id_ranges *ir);

#endif
