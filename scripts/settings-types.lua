-- Prints types/svccomm.settings.lua (the LuaLS class of the settings keys) from the one
-- schema in lua/svccomm/settings_schema.lua; tests/spec/scaffold_spec.lua checks it is current:
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/lua/?.so;;" \
--     lua5.4 scripts/settings-types.lua > types/svccomm.settings.lua
io.write(require("svccomm.scaffold").settings_types())
