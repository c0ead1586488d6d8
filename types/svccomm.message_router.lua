---@meta svccomm.message_router
---@type svccomm.message_router
return require("svccomm").message_router
