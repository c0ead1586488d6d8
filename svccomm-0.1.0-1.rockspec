rockspec_format = "3.0"
package = "svccomm"
version = "0.1.0-1"
source = {
   url = "git+file:///dev/null",
}
description = {
   summary = "RabbitMQ consumers in Lua and a PostgreSQL transactional outbox",
   detailed = [[
svccomm lets Lua services talk through RabbitMQ. Handlers consume JSON messages inside a
PostgreSQL transaction, and events are written to an outbox table in the caller's transaction
and relayed to RabbitMQ with publisher confirms, so an event goes out if and only if its
transaction committed. This rock installs the `svccomm` Lua modules, the native module
`svccomm.core` and the `svccomm` executable.
]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
external_dependencies = {
   RABBITMQ = { header = "amqp.h" },
   PQ = { library = "pq" },
}
build = {
   type = "cmake",
   variables = {
      CMAKE_BUILD_TYPE = "Release",
      CMAKE_INSTALL_PREFIX = "$(PREFIX)",
      SVCCOMM_TESTS = "OFF",
      SVCCOMM_WERROR = "OFF",
      SVCCOMM_LUA_INSTALL_DIR = "$(LUADIR)",
      SVCCOMM_LIB_INSTALL_DIR = "$(LIBDIR)",
   },
}
