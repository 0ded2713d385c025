-- vfs-task.lua: files for the guest from the policy itself.
--
--   /workspace        the directory of this policy file, read-write, without secrets
--   /run/task         a Lua provider: task.json, generated when read, and notes.txt
--                     (the guest may write notes.txt; it lives in this policy's memory)
--   on_fs             lock files stay as they are; nothing under .git/hooks is written
--
-- Try it without a VM:
--   gondolin policy check examples/vfs-task.lua
--   gondolin policy test examples/vfs-task.lua
--   gondolin policy explain examples/vfs-task.lua fs open /workspace/Cargo.lock w
local json = require "gondolin.json"

local task = { id = 42, title = "fix the flaky test", deadline = "2026-12-31" }
local notes = ""

local function task_json()
  return json.encode(task) .. "\n"
end

local files = {
  ["/task.json"] = task_json,
  ["/notes.txt"] = function() return notes end,
}

return {
  name = "vfs-task",
  mounts = {
    ["/workspace"] = { hostfs = ".", hide = { ".env", "*.pem", ".git/config" } },
    ["/run/task"] = { provider = {
      getattr = function(path)
        if path == "/" then return { type = "dir", mode = 493 } end -- 0755
        local f = files[path]
        if not f then return nil end -- ENOENT
        return { type = "file", mode = path == "/notes.txt" and 420 or 292, size = #f() }
      end,
      readdir = function(path)
        if path ~= "/" then return nil, "ENOTDIR" end
        return { "task.json", "notes.txt" }
      end,
      read = function(path, off, n)
        return files[path]():sub(off + 1, off + n)
      end,
      write = function(path, off, data)
        if path ~= "/notes.txt" then return nil, "EACCES" end
        if off > #notes then return nil, "EINVAL" end
        notes = notes:sub(1, off) .. data .. notes:sub(off + #data + 1)
        return #data
      end,
      truncate = function(path, size)
        if path ~= "/notes.txt" then return nil, "EACCES" end
        notes = notes:sub(1, size)
      end,
    } },
  },
  on_fs = function(op, ctx)
    if (ctx.path:match("%.lock$") or (ctx.path2 or ""):match("%.lock$")) and ctx:writing() then
      return ctx:deny("EACCES", "lock files are read-only")
    end
    if ctx.path:match("^/workspace/%.git/hooks/") and ctx:writing() then
      return ctx:deny("EPERM", "git hooks are not writable from the sandbox")
    end
  end,
}
