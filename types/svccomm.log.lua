---@meta svccomm.log
---@type svccomm.log
return require("svccomm").log
