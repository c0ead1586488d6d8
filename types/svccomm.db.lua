---@meta svccomm.db
---@type svccomm.db
return require("svccomm").db
