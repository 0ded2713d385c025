-- llm-apis.lua: the Anthropic and OpenAI APIs, each key scoped to its own API host.
-- The guest sees placeholders in $ANTHROPIC_API_KEY and $OPENAI_API_KEY; SDKs send them
-- as x-api-key / Authorization: Bearer and the proxy puts the real key in.
return {
  name = "llm-apis",
  allow = {
    { host = "api.anthropic.com", methods = { "GET", "POST" }, path = "/v1/" },
    { host = "api.openai.com", methods = { "GET", "POST", "DELETE" }, path = "/v1/" },
  },
  secrets = {
    ANTHROPIC_API_KEY = { hosts = { "api.anthropic.com" }, from = "env" },
    OPENAI_API_KEY = { hosts = { "api.openai.com" }, from = "env" },
  },
  on_request = function(req)
    -- admin endpoints manage keys and billing: never from a sandbox
    if req:path():match("^/v1/organizations") then
      return req:deny(403, "organization admin endpoints are not allowed")
    end
  end,
}
