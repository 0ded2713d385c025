-- github.lua: the GitHub API and git over HTTPS and SSH (clone, fetch, push), with the host's
-- GITHUB_TOKEN scoped to GitHub's hosts. The guest sees a placeholder in $GITHUB_TOKEN;
-- `git` and `gh` work with it because the proxy substitutes the real token, including
-- inside Authorization: Basic (git's credential form).
--
-- Set PUSH = false below (or copy this file) to make the sandbox read-only on GitHub.
local PUSH = true

return {
  name = "github",
  allow = {
    "api.github.com",
    "github.com",
    "codeload.github.com",
    "objects.githubusercontent.com",
    "raw.githubusercontent.com",
    "uploads.github.com",
  },
  secrets = {
    GITHUB_TOKEN = {
      hosts = { "api.github.com", "github.com", "uploads.github.com" },
      from = "env",
    },
  },
  -- git over SSH (git@github.com:o/r.git): the guest's ssh ends at gondolin's proxy; the
  -- host authenticates with its own agent ($SSH_AUTH_SOCK) and checks github.com's host
  -- key in ~/.ssh/known_hosts. No key material enters the guest.
  ssh = {
    ["github.com"] = {
      user = "git",
      agent = true,
      commands = PUSH and { "git-upload-pack", "git-receive-pack" } or { "git-upload-pack" },
    },
  },
  on_request = function(req)
    if not PUSH and req:host() == "github.com" and
       (req:path():match("/git%-receive%-pack$") or req:query() == "service=git-receive-pack") then
      return req:deny(403, "git push is disabled by github.lua")
    end
  end,
}
