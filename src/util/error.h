/* Error codes shared by every module. Functions return 0 on success or one of
 * these negative codes; the object involved keeps a human-readable text of the
 * last error (see svc_amqp_error(), svc_pg_error()). */
#ifndef SVC_ERROR_H
#define SVC_ERROR_H

enum {
	SVC_OK = 0,
	SVC_ENOMEM = -1,     /* allocation failed */
	SVC_EINVAL = -2,     /* bad argument or bad input (JSON, identifier, URL, ...) */
	SVC_ECONFIG = -3,    /* settings are wrong */
	SVC_ECONN = -4,      /* connection lost or could not be made: retry after reconnecting */
	SVC_ETIMEOUT = -5,   /* a deadline passed */
	SVC_EPROTO = -6,     /* the peer answered something unexpected or refused (channel error) */
	SVC_EDB = -7,        /* a database statement failed (not a connection problem) */
	SVC_ELUA = -8,       /* Lua code raised an error */
	SVC_ENACK = -9,      /* the broker refused a message (basic.nack) */
	SVC_ERETURNED = -10, /* the broker returned a mandatory message as unroutable */
	SVC_ESTOP = -11,     /* a stop was requested (signal) */
};

/* Short constant name of an error code ("ECONN"), for logs. */
const char *svc_strerror(int code);

/* Process exit codes, documented in --help and the README. */
enum {
	SVC_EXIT_OK = 0,
	SVC_EXIT_FAILURE = 1,     /* runtime failure */
	SVC_EXIT_USAGE = 2,       /* usage or configuration error */
	SVC_EXIT_UNREACHABLE = 3, /* checks: a server cannot be reached, nothing was checked */
};

#endif
