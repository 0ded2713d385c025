-- gondolin.url: percent-encoding and query strings.
--   url.decode(s) -> string            ("+" is a space, %XX decoded)
--   url.encode(s) -> string            (everything but A-Z a-z 0-9 - _ . ~ escaped)
--   url.parse_query(q) -> table        (name -> value; a repeated name -> list)
--   url.build_query(t) -> string       (keys sorted, so the result is stable)
local M = {}
function M.decode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
function M.encode(s)
  return (s:gsub("[^%w%-_%.~]", function(c) return string.format("%%%02X", c:byte()) end))
end
function M.parse_query(q)
  local t = {}
  if not q or q == "" then return t end
  for pair in q:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k, v = M.decode(k), M.decode(v)
    local old = t[k]
    if old == nil then t[k] = v
    elseif type(old) == "table" then old[#old + 1] = v
    else t[k] = { old, v } end
  end
  return t
end
function M.build_query(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    if type(v) == "table" then
      for _, x in ipairs(v) do out[#out + 1] = M.encode(k) .. "=" .. M.encode(tostring(x)) end
    else
      out[#out + 1] = M.encode(k) .. "=" .. M.encode(tostring(v))
    end
  end
  return table.concat(out, "&")
end
return M
