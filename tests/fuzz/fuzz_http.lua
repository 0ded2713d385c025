-- The policy fuzz_http runs every input through: hooks in all four phases that read
-- headers, path, query and bodies and take every kind of decision, so guest and upstream
-- bytes reach the Lua bindings, the plugin (tests/plugins/hdr.c) and the secrets hook
-- as in production. The seeds in seeds-http/ name the paths that steer it.
local json = require "gondolin.json"
local url = require "gondolin.url"

return {
  name = "fuzz",
  plugins = { testhdr = { value = "fuzz" } },
  on_request = function(req, ctx)
    local n = 0
    for k, v in pairs(req:headers()) do
      n = n + #k + #v
    end
    ctx.n = n
    local path, query = req:path(), req:query()
    if path:find("/deny", 1, true) then
      return req:deny(403, "fuzz deny " .. req:method())
    end
    if path:find("/respond", 1, true) then
      return req:respond(200, { ["Content-Type"] = "application/json", ["X-Fuzz"] = req:host() },
        json.encode({ url = req:url(), n = n }))
    end
    if query then
      local q = url.parse_query(query)
      req:set_header("X-Query-Keys", tostring(#json.encode(q)))
    end
    if path:find("/rewrite", 1, true) then
      req:set_target("/rewritten" .. req:target())
    end
    req:del_header("X-Drop")
    if req:method() == "POST" or req:header("X-Body") then
      req:want_body()
    end
  end,
  on_request_body = function(req, ctx)
    local b = req:body()
    if b:find("deny", 1, true) then
      return req:deny(400, "body says deny")
    end
    local v = json.decode(b)
    if type(v) == "table" then
      req:set_body(json.encode(v))
    elseif #b > 0 then
      req:set_body(b:upper())
    end
  end,
  on_response = function(res, req, ctx)
    if res:status() >= 500 then
      return res:deny(502, "upstream said " .. res:status())
    end
    res:set_header("X-Seen", tostring(ctx.n))
    res:del_header("Set-Cookie")
    if req:path():find("/buf", 1, true) or res:header("Content-Type") == "application/json" then
      res:want_body()
    end
  end,
  on_response_body = function(res, req, ctx)
    local b = res:body()
    if b:find("secret", 1, true) then
      return res:respond(200, nil, "redacted")
    end
    local v = json.decode(b)
    res:set_body(v ~= nil and json.encode(v) or b:reverse())
  end,
}
