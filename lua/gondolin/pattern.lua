-- gondolin.pattern: host patterns as --allow-host uses them.
--   pattern.match(p, host)     -> bool   ("api.x.com" exact, "*.x.com" subdomains only, "*")
--   pattern.match_any(list, host) -> bool, the matching pattern
local g = gondolin
local M = {}
function M.match(p, host)
  return g.host_match(p, host)
end
function M.match_any(list, host)
  for _, p in ipairs(list) do
    if g.host_match(p, host) then return true, p end
  end
  return false
end
return M
