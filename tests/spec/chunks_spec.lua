-- svccomm.chunks: error messages about the project's Lua files.
local chunks = require("svccomm.chunks")

describe("chunks", function()
	describe("unshorten", function()
		it("puts back the full path Lua shortened", function()
			local path = "/srv/a/very/long/project/directory/apps/users/consumers.lua"
			assert.are.equal(path .. ":3: boom", chunks.unshorten("...ory/apps/users/consumers.lua:3: boom", path))
		end)

		it("leaves other messages as they are", function()
			local path = "/srv/p/settings.lua"
			assert.are.equal("/srv/p/settings.lua:3: boom", chunks.unshorten("/srv/p/settings.lua:3: boom", path))
			-- the shown tail is not the tail of path
			assert.are.equal("...other.lua:3: boom", chunks.unshorten("...other.lua:3: boom", path))
			assert.are.equal("...no position", chunks.unshorten("...no position", path))
			assert.are.equal(42, chunks.unshorten(42, path))
		end)
	end)

	it("has_position: a file:line: prefix on the first line", function()
		assert.is_true(chunks.has_position("settings.lua:3: boom"))
		assert.is_true(chunks.has_position("/a b/c.lua:12: x\nmore"))
		assert.is_false(chunks.has_position("boom"))
		assert.is_false(chunks.has_position("boom\nfile.lua:3: later"))
		assert.is_false(chunks.has_position("file.lua:x: no line"))
	end)
end)
