/* backoff: capped exponential backoff with jitter. See backoff.h. */
#include "util/backoff.h"

double svc_backoff(int attempt, double base, double cap, double rnd)
{
	double d = base;

	if (attempt < 0)
		attempt = 0;
	for (int i = 0; i < attempt && d < cap; i++)
		d *= 2;
	if (d > cap)
		d = cap;
	if (!(rnd >= 0)) /* also NaN */
		rnd = 0;
	if (rnd > 1)
		rnd = 1;
	return d * (0.5 + 0.5 * rnd);
}
