-- The rockspec of a checkout: `luarocks --lua-version 5.4 make svccomm-scm-1.rockspec`.
-- scripts/release.sh derives the release rockspec from this file (version from VERSION,
-- source = the release tarball), so there is one rockspec to maintain and no version here.
rockspec_format = "3.0"
package = "svccomm"
version = "scm-1"
source = {
   url = "file://.", -- a checkout is built in place (luarocks make)
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
   -- the svccomm executable loads cjson.so at run time (from this tree's lib/lua/5.4 or the
   -- system's package.cpath); svccomm.json needs it in a plain lua5.4 too
   "lua-cjson >= 2.1",
}
external_dependencies = {
   RABBITMQ = { header = "amqp.h" },
   PQ = { library = "pq" },
   OPENSSL = { header = "openssl/ssl.h" },
   MHD = { header = "microhttpd.h" },
}
build = {
   type = "cmake",
   variables = {
      CMAKE_BUILD_TYPE = "Release",
      CMAKE_INSTALL_PREFIX = "$(PREFIX)",
      SVCCOMM_TESTS = "OFF",
      SVCCOMM_WERROR = "OFF",
      SVCCOMM_DOCS = "OFF",
      SVCCOMM_LUA_INSTALL_DIR = "$(LUADIR)",
      SVCCOMM_LIB_INSTALL_DIR = "$(LIBDIR)",
   },
}
