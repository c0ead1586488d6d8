/* Unit tests for consumer/committed.c: the ids of committed messages whose ack may be lost. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "consumer/internal.h"

static void add(struct svc_consumer *c, const char *id, bool settled)
{
	struct svc_delivery d = {.tag = c->batch_n + 1, .message_id = id};
	svc_consumer_batch_add(c, &d);
	c->settled[c->batch_n - 1] = settled;
}

static void setup_consumer(struct svc_consumer *c, bool tags[], uint64_t tagv[], size_t limit)
{
	memset(c, 0, sizeof(*c));
	c->limit = limit;
	c->settled = tags;
	c->tags = tagv;
	assert_int_equal(svc_consumer_committed_init(c), 0);
}

static void test_committed_ids_are_recognised(void **state)
{
	struct svc_consumer c;
	bool settled[5];
	uint64_t tags[5];
	(void)state;
	setup_consumer(&c, settled, tags, 4);
	add(&c, "a", false);
	add(&c, NULL, false);     /* no id: cannot be recognised */
	add(&c, "retried", true); /* settled by a copy: its work did not commit */
	add(&c, "a-much-longer-message-id-than-the-first-one", false);
	svc_consumer_committed_record(&c);
	assert_true(svc_consumer_committed_seen(&c, "a"));
	assert_true(svc_consumer_committed_seen(&c, "a-much-longer-message-id-than-the-first-one"));
	assert_false(svc_consumer_committed_seen(&c, "retried"));
	assert_false(svc_consumer_committed_seen(&c, ""));
	assert_false(svc_consumer_committed_seen(&c, NULL));
	assert_false(svc_consumer_committed_seen(&c, "b"));
	svc_consumer_committed_free(&c);
}

static void test_only_the_latest_batches_are_kept(void **state)
{
	struct svc_consumer c;
	bool settled[3];
	uint64_t tags[3];
	char id[32];
	(void)state;
	setup_consumer(&c, settled, tags, 2); /* ring of 2 batches x 3 slots */
	for (int b = 0; b < 4; b++) {
		c.batch_n = 0;
		for (int i = 0; i < 3; i++) {
			snprintf(id, sizeof(id), "m-%d-%d", b, i);
			add(&c, id, false);
		}
		svc_consumer_committed_record(&c);
	}
	assert_false(svc_consumer_committed_seen(&c, "m-0-0"));
	assert_false(svc_consumer_committed_seen(&c, "m-1-2"));
	assert_true(svc_consumer_committed_seen(&c, "m-2-0"));
	assert_true(svc_consumer_committed_seen(&c, "m-3-2"));
	svc_consumer_committed_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_committed_ids_are_recognised),
	    cmocka_unit_test(test_only_the_latest_batches_are_kept),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
