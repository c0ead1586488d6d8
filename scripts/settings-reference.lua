-- Prints the settings reference of the README as a markdown table, from the one schema in
-- lua/svccomm/settings_schema.lua, so the README never drifts from the code
-- (tests/spec/settings_schema_spec.lua checks that it does not):
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/lua/?.so;;" \
--     lua5.4 scripts/settings-reference.lua > /tmp/settings.md
--
-- Columns: key, type, default (Lua source text), environment variable that overrides it,
-- description.
local schema = require "svccomm.settings_schema"

-- A markdown table cell: pipes escaped, newlines folded, inline code where asked, HTML
-- characters escaped elsewhere.
local function cell(text, code)
	text = tostring(text):gsub("\r?\n", " "):gsub("|", "\\|")
	if text == "" then
		return ""
	end
	if code then
		-- a backtick inside inline code needs a longer fence
		local fence = text:find("`", 1, true) and "``" or "`"
		local pad = fence == "``" and " " or ""
		return fence .. pad .. text .. pad .. fence
	end
	-- outside code spans "<name>" would be taken for an HTML tag
	return (text:gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"))
end

-- The reference as a markdown table (rows of schema.reference()).
local function render(rows)
	local out = {
		"| Key | Type | Default | Env override | Description |",
		"|-----|------|---------|--------------|-------------|",
	}
	for _, r in ipairs(rows) do
		out[#out + 1] = string.format("| %s | %s | %s | %s | %s |", cell(r.key, true), cell(r.type),
			r.default == "nil" and "unset" or cell(r.default, true), r.env and cell(r.env, true) or "",
			cell(r.doc))
	end
	return table.concat(out, "\n") .. "\n"
end

io.write(render(schema.reference()))
