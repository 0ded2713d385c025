-- The differential test of the string matcher (test_policy.py string_matcher_differential):
-- runs every case through find/match/gmatch/gsub and returns one line per case, the
-- results hex-encoded. The same file runs inside a policy (our matcher) and in a plain
-- LuaJIT state (the stock functions); the two outputs must be identical.
-- A case: { fn, subject, pattern, a, b } (a, b: init/plain, replacement/max).
local byte, format, concat, select, pcall, type, tostring =
  string.byte, string.format, table.concat, select, pcall, type, tostring

local function hex(s)
  local out = {}
  for i = 1, #s do out[i] = format("%02x", byte(s, i)) end
  return concat(out)
end

-- Values as text without the functions under test: type letter, then the value.
local function ser(...)
  local out = {}
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) == "string" then
      out[i] = "s" .. #v .. ":" .. v
    else
      out[i] = type(v):sub(1, 1) .. tostring(v)
    end
  end
  return concat(out, "|")
end

local repls = {
  t1 = { a = "A", b = false, ["1"] = "one", x = 7 },
  f1 = function(a, b) if a == "b" then return nil end return "<" .. tostring(a) .. tostring(b) .. ">" end,
  f2 = function() return false end,
}

local function run(c)
  local fn, s, p, a, b = c[1], c[2], c[3], c[4], c[5]
  if fn == "find" then
    return ser(pcall(string.find, s, p, a, b))
  elseif fn == "match" then
    return ser(pcall(string.match, s, p, a))
  elseif fn == "gmatch" then
    local ok, it = pcall(string.gmatch, s, p)
    if not ok then return ser(ok, it) end
    local out = {}
    for _ = 1, 40 do
      local r = { pcall(it) }
      out[#out + 1] = ser(unpack(r))
      if not r[1] or r[2] == nil then break end
    end
    return concat(out, ";")
  else
    local repl = repls[a] or a
    return ser(pcall(string.gsub, s, p, repl, b))
  end
end

-- The other functions the budget wraps or replaces (the last line of the output).
local function others()
  local out, x = {}, 7
  local function rnd() x = (x * 1103515245 + 12345) % 2147483648 return x end
  for n = 0, 60, 4 do
    local a, b, c = {}, {}, {}
    for i = 1, n do
      local v = rnd() % 50
      a[i], b[i], c[i] = v, tostring(v % 13) .. "x", v
    end
    table.sort(a)
    table.sort(b)
    table.sort(c, function(p, q) return p > q end)
    out[#out + 1] = concat(a, ",") .. "/" .. concat(b, ",") .. "/" .. concat(c, ",")
  end
  out[#out + 1] = ser(("ab"):rep(3, ","), ("x"):rep(0), ("x"):rep(-1), ("ab"):rep(2),
    ("%5.2f|%d|%s|%q|%-4s|%x"):format(1.5, 42, "s", "a\nb\0", "l", 255),
    ("aBc1"):upper(), ("aBc1"):lower(), ("abc"):reverse(), ("hello"):sub(2, -2),
    ("hello"):sub(-3), ("hello"):sub(4, 2), tonumber("0x10"), tonumber("z", 36),
    tonumber(" 1e2 "), tonumber("1x"), tonumber(5), table.concat({ 1, 2, 3 }, "-", 2, 3),
    table.concat({}), table.concat({ "a", "b" }, ", "))
  return concat(out, ";")
end

return function(cases)
  local out = {}
  for i = 1, #cases do out[i] = hex(run(cases[i])) end
  out[#out + 1] = hex(others())
  return concat(out, "\n")
end
