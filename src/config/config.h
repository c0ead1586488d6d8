/* config: the validated settings as a C struct.
 *
 * The schema (keys, types, defaults, checks, env overrides) lives in one place,
 * lua/svccomm/settings.lua, which validates and normalizes settings.lua; config.c copies the
 * normalized table into this struct through a table-driven field list so the C loops never
 * touch Lua for a setting. Strings are owned by the struct (freed by svc_config_release). */
#ifndef SVC_CONFIG_H
#define SVC_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "amqp/conn.h"

struct lua_State;

struct svc_exchange_decl {
	char *name;
	char *type;
};

struct svc_bind_decl {
	char *exchange;
	char *routing_key;
};

/* One queue argument (QUEUE_ARGUMENTS, RETRY_QUEUE_ARGUMENTS...): kind is 's' (string), 'i'
 * (integer) or 'b' (boolean). */
struct svc_queue_arg {
	char *key;
	char kind;
	char *str;
	long long num;
};

struct svc_config {
	char *path; /* the settings file */
	char *dir;  /* its directory: the project dir (apps are in dir/apps) */
	char *app_id;
	char *broker_url;   /* the first of broker_urls */
	char **broker_urls; /* BROKER_CONNECTION_URL: one URL per node (amqp/nodes.h) */
	size_t n_broker_urls;
	bool broker_shuffle;       /* BROKER_SHUFFLE */
	char *database_url;        /* NULL when not set */
	char *database_url_source; /* where it came from ("settings file", "env ..."), or NULL */
	bool log_level_default;    /* LOG_LEVEL set neither in the file nor by env */
	bool retry_delays_default; /* RETRY_DELAYS not set in the file */
	char *queue;               /* NULL when not set */
	struct svc_queue_arg *queue_args;
	size_t n_queue_args;
	/* RETRY_QUEUE_ARGUMENTS / DEAD_LETTER_QUEUE_ARGUMENTS as declared (settings.lua fills
	 * them from QUEUE_ARGUMENTS when unset) */
	struct svc_queue_arg *retry_queue_args;
	size_t n_retry_queue_args;
	struct svc_queue_arg *dlq_args;
	size_t n_dlq_args;
	bool retry_queue_args_default; /* RETRY_QUEUE_ARGUMENTS not set: derived */
	bool dlq_args_default;         /* DEAD_LETTER_QUEUE_ARGUMENTS not set: derived */
	struct svc_exchange_decl *exchanges;
	size_t n_exchanges;
	struct svc_bind_decl *binds;
	size_t n_binds;
	bool do_not_declare;
	long prefetch_count;
	long max_attempts;
	double *retry_delays; /* seconds */
	size_t n_retry_delays;
	double handler_timeout;
	long lua_memory_limit_mb;
	char *unrouted;    /* "ack" | "dead-letter" */
	char *key_style;   /* "preserve" | "snake" */
	char *wire_format; /* "svccomm" | "django" (outbox/envelope.h) */
	long max_json_depth;
	long max_message_bytes;
	bool inbox;
	char *inbox_table;
	double inbox_retention;
	long heartbeat;
	double shutdown_timeout;
	double consumer_commit_interval;
	bool consumer_pipeline;
	double reconnect_max_delay;
	char *outbox_table;
	char *publisher_mode; /* "listen" | "poll" */
	double publisher_poll_interval;
	long publisher_batch_size;
	long publisher_window;
	char *publisher_unroutable; /* "drop" | "keep" */
	double stats_interval;
	char *log_level;
	char *metrics_address;          /* METRICS_ADDRESS "host:port", NULL when not set */
	char *log_format;               /* "text" | "json" */
	struct svc_amqp_tls broker_tls; /* BROKER_TLS; its strings are owned by the struct */
};

/* Loads and validates path with lua/svccomm/settings.lua in the given state (made by
 * svc_runtime_new(): the call goes through svc_lua_pcall()) and fills cfg. On error returns
 * SVC_ECONFIG with the message (naming the key) in err. */
int svc_config_load(struct lua_State *L, const char *path, struct svc_config *cfg, char *err,
                    size_t errsz);
/* Frees every string and array of cfg and zeroes it. */
void svc_config_release(struct svc_config *cfg);

#endif
