-- npm-registry.lua: installing packages from the public npm registry, read-only.
-- An optional NPM_TOKEN (for private packages) is scoped to the registry.
return {
  name = "npm-registry",
  allow = {
    { host = "registry.npmjs.org", methods = { "GET", "HEAD" } },
    { host = "registry.yarnpkg.com", methods = { "GET", "HEAD" } },
  },
  on_request = function(req)
    -- npm audit and publish are POST/PUT: already refused by the method rule above;
    -- the registry's login endpoints are refused here so a token cannot be minted.
    if req:path():match("^/%-/v1/login") or req:path():match("^/%-/user/") then
      return req:deny(403, "npm login is not allowed in the sandbox")
    end
  end,
}
