-- examples/agent.lua: a policy for a coding agent.
--   gondolin run --policy examples/agent.lua -- CMD
-- The agent may read GitHub and the package registries, call the Anthropic API with
-- the host's key (the guest sees only a placeholder), and nothing else.
local pattern = require "gondolin.pattern"

local readonly = { "GET", "HEAD" }

return {
  name = "agent",
  allow = {
    "api.github.com",
    "github.com",
    "codeload.github.com",
    "objects.githubusercontent.com",
    { host = "registry.npmjs.org", methods = readonly },
    { host = "pypi.org", methods = readonly },
    { host = "files.pythonhosted.org", methods = readonly },
    { host = "api.anthropic.com", methods = { "POST" }, path = "/v1/" },
  },
  secrets = {
    GITHUB_TOKEN = { hosts = { "api.github.com", "github.com" }, from = "env" },
    ANTHROPIC_API_KEY = { hosts = { "api.anthropic.com" }, from = "env" },
  },
  vm = { memory = 1024, env = { GIT_TERMINAL_PROMPT = "0" } },

  on_request = function(req, ctx)
    -- pushes need a human: the agent may clone and fetch, never push
    if req:host() == "github.com" and req:path():match("/git%-receive%-pack$") then
      return req:deny(403, "git push is not allowed for agents")
    end
    if pattern.match("*.github.com", req:host()) or req:host() == "github.com" then
      req:set_header("X-Gondolin-Agent", "1")
    end
    ctx.started = req:method() .. " " .. req:host()
  end,

  on_response = function(res, req, ctx)
    if res:status() >= 500 then
      gondolin.log(ctx.started .. " -> " .. res:status())
    end
  end,
}
