/* pg/errclass: whose fault a PostgreSQL error is. See errclass.h. */
#include "pg/errclass.h"

#include <string.h>

/* Exact codes first, then whole classes (a prefix). */
static const struct {
	const char *code;
	const char *reason;
} infra[] = {
    {"25006", "read-only"},          {"40001", "serialization failure"},
    {"40P01", "deadlock"},           {"08", "connection failure"},
    {"57P", "server shutting down"}, {"53", "insufficient resources"},
    {"58", "system error"},
};

const char *svc_pg_infra_reason(const char *sqlstate)
{
	if (!sqlstate || strlen(sqlstate) != 5)
		return NULL;
	for (size_t i = 0; i < sizeof(infra) / sizeof(infra[0]); i++)
		if (strncmp(sqlstate, infra[i].code, strlen(infra[i].code)) == 0)
			return infra[i].reason;
	return NULL;
}

bool svc_pg_sqlstate_is_infra(const char *sqlstate)
{
	return svc_pg_infra_reason(sqlstate) != NULL;
}
