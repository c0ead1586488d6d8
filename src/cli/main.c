/* svccomm: RabbitMQ consumers in Lua and a PostgreSQL transactional outbox. */
#include "cli/cli.h"

int main(int argc, char **argv)
{
	return svc_cli_run(argc, argv);
}
