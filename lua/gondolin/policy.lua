-- gondolin.policy: combining policy tables (one policy split over files).
--   policy.merge(a, b, ...) -> table
-- Lists (allow, allow_internal, tcp_map) are concatenated; maps (secrets, resolve,
-- plugins, vm, limits) are merged key by key, later wins; hooks are chained: every
-- on_request runs in order until one decides (denies or responds).
local M = {}
local lists = { allow = true, allow_internal = true }
local hooks = { on_request = true, on_response = true, on_request_body = true,
                on_response_body = true, on_connect = true }

local function chain(f, g)
  if not f then return g end
  return function(obj, ...)
    f(obj, ...)
    if not obj:decided() then return g(obj, ...) end
  end
end

function M.merge(...)
  local out = {}
  for i = 1, select("#", ...) do
    local p = select(i, ...)
    for k, v in pairs(p) do
      if lists[k] then
        out[k] = out[k] or {}
        if type(v) == "string" then v = { v } end
        for _, x in ipairs(v) do out[k][#out[k] + 1] = x end
      elseif hooks[k] then
        out[k] = chain(out[k], v)
      elseif type(v) == "table" and type(out[k]) == "table" then
        for kk, vv in pairs(v) do out[k][kk] = vv end
      else
        out[k] = v
      end
    end
  end
  return out
end
return M
