-- gondolin.json: JSON through cJSON.
--   json.encode(value) -> string        (tables with 1..n keys become arrays)
--   json.decode(text)  -> value | nil, err
--   json.null                            (JSON null, distinct from nil)
local g = gondolin
local M = {}
M.null = g.null
function M.encode(v)
  return g.json_encode(v)
end
function M.decode(s)
  return g.json_decode(s)
end
return M
