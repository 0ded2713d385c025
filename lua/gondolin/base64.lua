-- gondolin.base64: standard alphabet, with padding.
--   base64.encode(s) -> string
--   base64.decode(s) -> string | nil, err
--   base64.url_decode(s) -> string | nil, err   (URL-safe alphabet, padding optional)
local g = gondolin
local M = {}
function M.encode(s)
  return g.b64_encode(s)
end
function M.decode(s)
  return g.b64_decode(s)
end
function M.url_decode(s)
  s = s:gsub("-", "+"):gsub("_", "/")
  local pad = #s % 4
  if pad == 2 then s = s .. "==" elseif pad == 3 then s = s .. "=" elseif pad == 1 then
    return nil, "not base64"
  end
  return g.b64_decode(s)
end
return M
