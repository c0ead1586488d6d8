-- Settings of the example service. Every key is documented in the README ("Settings").
-- SVCCOMM_BROKER_URL and SVCCOMM_DATABASE_URL override the URLs below, so secrets can stay
-- out of this file. The URLs point at the local servers of scripts/servers.sh, whose generated
-- passwords come with eval "$(scripts/servers.sh env)".
return {
  APP_ID = "example-service",
  BROKER_CONNECTION_URL = "amqp://svccomm:svccomm@localhost:5673/svccomm",
  DATABASE_URL = "postgresql://svccomm@localhost:5433/svccomm",
  QUEUE = "example_service",
  QUEUE_ARGUMENTS = { ["x-queue-type"] = "quorum" },
  EXCHANGES = { "user", { "billing", "topic" } },
  BINDS = { { "user", "update.*" }, "billing" },
  RETRY_DELAYS = { 1, 10, 60 },
  MAX_ATTEMPTS = 4,
}
