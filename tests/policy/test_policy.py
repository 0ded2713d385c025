#!/usr/bin/env python3
"""The policy engine without a VM: gd-proxyd runs a Lua policy (and plugins) in front of
real upstream servers on loopback. Lua bindings, the sandbox, CPU and memory limits,
fail-closed errors, hot reload under load, plugins and their loader's refusals, and the
authoring tools (gondolin policy check/test/explain).

Usage: test_policy.py BUILD_DIR [NAME_FILTER]"""
import json, os, re, signal, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "proxy"))
from fixture import Upstreams  # noqa: E402
from test_proxy import expect, read_response  # noqa: E402

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
PROXYD = os.path.join(BUILD, "tests", "gd-proxyd")
GONDOLIN = os.path.join(BUILD, "gondolin")
PLUGINS = os.path.join(BUILD, "tests", "plugins")
FIRST_PARTY = os.path.join(BUILD, "plugins")
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


class Proxy:
    """gd-proxyd with a policy; collects RELOAD lines."""

    def __init__(self, up, policy=None, extra=(), env=None):
        e = dict(os.environ)
        e.update(env or {})
        args = [PROXYD, "--quiet", "--ca-dir", up.mitm_dir] + up.flags() + list(extra)
        if policy:
            args += ["--policy", policy]
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=e)
        self.secrets, self.reloads = {}, []
        while True:
            line = self.p.stdout.readline().split()
            if not line:
                raise RuntimeError("gd-proxyd did not start: " + self.p.stderr.read())
            if line[0] == "SECRET":
                k, v = line[1].split("=", 1)
                self.secrets[k] = v
            if line[0] == "REVISION":
                self.revision = line[1]
            if line[0] == "READY":
                self.port = int(line[1])
                break
        self.t = threading.Thread(target=self._lines, daemon=True)
        self.t.start()

    def _lines(self):
        for line in self.p.stdout:
            if line.startswith("RELOAD"):
                self.reloads.append(line.strip())

    def req(self, method, path, host, headers=(), body=b""):
        import socket
        s = socket.create_connection(("127.0.0.1", self.port), timeout=15)
        h = "".join(f"{k}: {v}\r\n" for k, v in headers)
        if body or method in ("POST", "PUT"):
            h += f"Content-Length: {len(body)}\r\n"
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{h}\r\n".encode() + body)
        st, head, b = read_response(s)
        s.close()
        return st, head, b

    def close(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError("gd-proxyd did not stop on SIGTERM")
        err = self.p.stderr.read()
        if self.p.returncode not in (0, -15):
            raise AssertionError(f"gd-proxyd exited {self.p.returncode}: {err[-2000:]}")
        return err


def request_once(up, policy_path, path, host):
    """Starts gd-proxyd with the policy, sends one GET, stops it: (status, head, body)."""
    px = Proxy(up, policy_path)
    try:
        return px.req("GET", path, host)
    finally:
        px.close()


def write(d, name, text):
    path = os.path.join(d, name)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)
    return path


def policy(up, d, body, name="p.lua"):
    """A policy allowing good.test and other.test on the test ports, plus body."""
    H, S = up.http_port, up.https_port
    text = (f'local H, S = {H}, {S}\n'
            'local base = { "good.test:" .. H, "good.test:" .. S, "other.test:" .. H }\n' + body)
    return write(d, name, text)


def header(head, name):
    m = re.search(r"(?im)^" + re.escape(name) + r":\s*(.*)$", head)
    return m.group(1).strip() if m else None


# ---- Lua bindings ----

@test
def bindings(up, d, **_):
    """on_request reads and sets headers, ctx carries to on_response, which sets a response header"""
    H = up.http_port
    p = policy(up, d, '''
return {
  allow = base,
  on_request = function(req, ctx)
    ctx.seen = req:method() .. " " .. req:host() .. ":" .. req:port() .. " " .. req:path()
           .. " q=" .. tostring(req:query()) .. " ua=" .. tostring(req:header("User-Agent"))
    req:set_header("X-Seen", ctx.seen)
    req:del_header("X-Drop")
    local n = 0
    for k, v in pairs(req:headers()) do n = n + 1 end
    req:set_header("X-Count", tostring(n))
  end,
  on_response = function(res, req, ctx)
    res:set_header("X-Ctx", ctx.seen .. " status=" .. res:status())
    res:set_header("X-Url", req:url())
  end,
}''')
    px = Proxy(up, p)
    try:
        st, head, body = px.req("GET", "/echo?a=1", f"good.test:{H}",
                                [("User-Agent", "t/1"), ("X-Drop", "x")])
        expect(st == 200, f"status {st}: {head}")
        doc = json.loads(body)
        want = f"GET good.test:{H} /echo q=a=1 ua=t/1"
        expect(doc["headers"].get("x-seen") == want, doc["headers"])
        expect("x-drop" not in doc["headers"], "X-Drop reached the upstream")
        expect(doc["headers"].get("x-count") == "3", doc["headers"])
        expect(header(head, "X-Ctx") == want + " status=200", head)
        expect(header(head, "X-Url") == f"http://good.test:{H}/echo?a=1", head)
    finally:
        px.close()


@test
def decisions(up, d, **_):
    """req:deny names file:line as the rule; req:respond sends status, headers and body"""
    H = up.http_port
    p = policy(up, d, '''
return {
  allow = base,
  on_request = function(req)
    if req:path() == "/deny" then
      req:deny(451, "not for agents")
    elseif req:path() == "/mock" then
      req:respond(201, { ["Content-Type"] = "application/json", ["X-Mock"] = "yes" }, '{"ok":true}')
    end
  end,
}''')
    px = Proxy(up, p)
    try:
        st, head, body = px.req("GET", "/deny", f"good.test:{H}")
        expect(st == 451, f"status {st}")
        expect(header(head, "X-Gondolin-Rule") == "p.lua:8", head)
        expect(b"not for agents" in body, body)
        st, head, body = px.req("GET", "/mock", f"good.test:{H}")
        expect(st == 201 and body == b'{"ok":true}', f"{st} {body}")
        expect(header(head, "X-Mock") == "yes", head)
        expect(header(head, "Content-Type") == "application/json", head)
        st, _, _ = px.req("GET", "/echo", f"good.test:{H}")
        expect(st == 200, f"plain request {st}")
    finally:
        px.close()


@test
def bodies(up, d, **_):
    """want_body + on_request_body sees and rewrites the body; on_response_body too"""
    H = up.http_port
    p = policy(up, d, '''
local json = require "gondolin.json"
return {
  allow = base,
  on_request = function(req) if req:method() == "POST" then req:want_body() end end,
  on_request_body = function(req)
    local doc = json.decode(req:body())
    if doc.secret then return req:deny(403, "body carries a secret field") end
    doc.checked = true
    req:set_body(json.encode(doc))
  end,
  on_response = function(res) res:want_body() end,
  on_response_body = function(res) res:set_body(res:body():upper()) end,
}''')
    px = Proxy(up, p)
    try:
        st, _, body = px.req("POST", "/echo", f"good.test:{H}", body=b'{"a":1}')
        expect(st == 200, f"status {st} {body[:200]}")
        expect(b'"BODY_LEN": 22' in body and b'"METHOD": "POST"' in body, body)  # {"a":1,"checked":true}
        st, _, body = px.req("POST", "/echo", f"good.test:{H}", body=b'{"secret":"x"}')
        expect(st == 403 and b"secret field" in body, f"{st} {body}")
    finally:
        px.close()



@test
def on_connect_on_pooled(up, d, **_):
    """a pooled upstream connection is a dial too: on_connect decides on every request"""
    H = up.http_port
    p = policy(up, d, '''
local dials = 0
return {
  allow = { "good.test:" .. H },
  allow_internal = { "good.test" },
  on_connect = function(req, ctx)
    dials = dials + 1
    if dials > 1 then return req:deny(403, "one dial only (" .. dials .. ")") end
  end,
}''')
    px = Proxy(up, p)
    try:
        st, _, body = px.req("GET", "/echo", f"good.test:{H}")
        expect(st == 200, f"first request: {st} {body[:200]}")
        time.sleep(0.2)  # its upstream connection is idle in the pool now
        st, _, body = px.req("GET", "/echo", f"good.test:{H}")
        expect(st == 403 and b"one dial only" in body, f"pooled reuse skipped on_connect: {st} {body[:200]}")
    finally:
        px.close()

@test
def on_connect(up, d, **_):
    """on_connect sees host, port and the address about to be dialled; it denies one address and allows another (403 + audit)"""
    H = up.http_port
    p = policy(up, d, '''
return {
  allow = { "good.test:" .. H, "blocked.test:" .. H },
  allow_internal = { "good.test", "blocked.test" },
  resolve = { ["blocked.test"] = "127.0.0.2" },
  on_request = function(req, ctx)
    ctx.early = select(2, pcall(req.addr, req))
  end,
  on_connect = function(req, ctx)
    ctx.dial = req:scheme() .. " " .. req:host() .. ":" .. req:port() .. " @" .. req:addr()
    if req:addr() == "127.0.0.2" then
      return req:deny(403, "no dial to " .. req:addr())
    end
    ctx.late = select(2, pcall(req.path, req))
  end,
  on_response = function(res, req, ctx)
    res:set_header("X-Dial", ctx.dial)
    res:set_header("X-Addr", res:addr() .. " " .. req:addr())
    res:set_header("X-Phases", tostring(ctx.early) .. " | " .. tostring(ctx.late))
  end,
}''')
    audit = os.path.join(d, "connect-audit.jsonl")
    px = Proxy(up, p, extra=["--audit", audit])
    try:
        st, head, body = px.req("GET", "/echo", f"good.test:{H}")
        expect(st == 200, f"allowed address: {st} {body[:200]}")
        expect(header(head, "X-Dial") == f"http good.test:{H} @127.0.0.1", head)
        expect(header(head, "X-Addr") == "127.0.0.1 127.0.0.1", head)
        expect(header(head, "X-Phases") == "addr: API disabled in phase request | "
               "path: API disabled in phase connect", head)
        st, head, body = px.req("GET", "/echo", f"blocked.test:{H}")
        expect(st == 403 and b"no dial to 127.0.0.2" in body, f"denied address: {st} {body[:200]}")
        expect(header(head, "X-Gondolin-Rule") == "p.lua:11", head)  # the hook (a tail call)
    finally:
        px.close()
    recs = [json.loads(l) for l in open(audit)]
    denied = [r for r in recs if r.get("host") == "blocked.test"]
    expect(len(denied) == 1 and denied[0]["rule"] == "p.lua:11"
           and "no dial to 127.0.0.2" in denied[0].get("reason", ""), recs)
    ok = [r for r in recs if r.get("host") == "good.test"]
    expect(len(ok) == 1 and ok[0].get("status") == 200, ok)
    # the authoring tool runs on_connect for a case with "addr"
    cases = write(d, "connect.json", json.dumps({"cases": [
        {"name": "allowed", "request": f"GET http://good.test:{H}/", "addr": "127.0.0.1",
         "expect": {"decision": "allow"}},
        {"name": "denied", "request": f"GET http://blocked.test:{H}/", "addr": "127.0.0.2",
         "expect": {"decision": "deny", "rule": "p.lua:11", "reason_contains": "no dial to 127.0.0.2"}}]}))
    r = subprocess.run([GONDOLIN, "policy", "test", p, cases], capture_output=True, text=True)
    expect(r.returncode == 0 and "2 passed, 0 failed" in r.stdout, r.stdout + r.stderr)


PHASE_METHODS = ["method", "scheme", "host", "port", "addr", "path", "query", "target", "url",
                 "header", "headers", "is_websocket", "status", "decided", "set_header",
                 "del_header", "set_target", "want_body", "body", "set_body", "deny", "respond"]
READ = {"method", "path", "query", "target", "url", "header", "headers", "is_websocket"}
ALLOWED = {  # docs/lua-api.md, per phase and object
    "connect req": {"scheme", "host", "port", "addr", "decided", "deny"},
    "request req": {"scheme", "host", "port", "decided"} | READ
                   | {"set_header", "del_header", "set_target", "want_body", "deny", "respond"},
    "response req": {"scheme", "host", "port", "decided", "status", "addr"} | READ,
    "response res": {"scheme", "host", "port", "decided", "status", "addr"} | READ
                    | {"set_header", "del_header", "want_body", "deny", "respond"},
}


@test
def phases(up, d, **_):
    """every req/res method checks its phase: allowed where docs/lua-api.md says, 'API disabled in phase' elsewhere"""
    H = up.http_port
    names = ", ".join(f'"{m}"' for m in PHASE_METHODS)
    p = policy(up, d, f'''
local names = {{ {names} }}
-- bad arguments where a method would change something: allowed calls fail on them
local args = {{ deny = 1, respond = 1, header = "x" }}
local function probe(obj, tag, ctx)
  local out = {{}}
  for _, n in ipairs(names) do
    local ok, err = pcall(obj[n], obj, args[n])
    local verdict = "ok"
    if not ok and err:find("API disabled in phase", 1, true) then verdict = "off"
    elseif not ok and err:find(": a request method", 1, true) then verdict = "kind" end
    out[#out + 1] = n .. "=" .. verdict
  end
  ctx[#ctx + 1] = tag .. ":" .. table.concat(out, ",")
end
return {{
  allow = base,
  on_connect = function(req, ctx) probe(req, "connect req", ctx) end,
  on_request = function(req, ctx) probe(req, "request req", ctx) end,
  on_response = function(res, req, ctx)
    probe(req, "response req", ctx)
    probe(res, "response res", ctx)
    return res:respond(200, nil, table.concat(ctx, "\\n"))
  end,
}}''')
    st, _, body = request_once(up, p, "/echo", f"good.test:{H}")
    expect(st == 200, f"{st} {body[:300]}")
    got = {}
    for line in body.decode().split("\n"):
        tag, rest = line.split(":", 1)
        got[tag] = dict(kv.split("=") for kv in rest.split(","))
    expect(sorted(got) == sorted(ALLOWED), sorted(got))
    bad = []
    for tag, allowed in ALLOWED.items():
        for m in PHASE_METHODS:
            want = "ok" if m in allowed else "kind" if (tag, m) == ("response res", "set_target") else "off"
            if got[tag][m] != want:
                bad.append(f"{tag}:{m} {got[tag][m]} (want {want})")
    expect(not bad, "; ".join(bad))


# ---- the sandbox ----

ESCAPES = {
    "io": 'return io.open("/etc/passwd")',
    "os": 'return os.execute("id")',
    "ffi": 'return require("ffi")',
    "jit": 'return jit.off()',
    "bytecode": 'return load("\\27LJ\\2\\0\\0")',
    "reader": 'return load(function() return nil end)',
    "dump": 'return string.dump(function() end)',
    "debug": 'return debug.getregistry()',
    "setfenv": 'return setfenv(gondolin.log, {})',
    "module_write": 'gondolin.log = function() end',
    "module_rawset": 'rawset(gondolin, "log", 1)',
    "global": 'leaked = 1',
    "global_rawset": 'rawset(_G, "leaked", 1)',
    "metatable": 'getmetatable(req).__index = {}',
    "setmetatable": 'setmetatable(req, {})',
    "req_field": 'req.host = function() return "x" end',
    "require_path": 'return require("../../etc/passwd")',
    "require_new": 'return require("helper2")',
    "loadfile": 'return loadfile("/etc/passwd")',
    "dofile": 'return dofile("/etc/passwd")',
    "collectgarbage": 'return collectgarbage("stop")',
    "string_mt": 'getmetatable("").__index = { upper = function() return "x" end }',
    "string_mt_rawset": 'rawset(getmetatable(""), "__index", {})',
    "string_mt_setmt": 'setmetatable(getmetatable(""), nil)',
    "string_mt_lib": 'getmetatable("").__index.upper = function() return "x" end',
    "string_field": 'string.upper = function() return "x" end',
    "string_rawset": 'rawset(string, "upper", 1)',
    "string_setmt": 'setmetatable(string, nil)',
    "table_field": 'table.concat = nil',
    "math_rawset": 'rawset(math, "pi", 3)',
    "bit_field": 'bit.band = nil',
    "coroutine_field": 'coroutine.wrap = nil',
}

EXPECTED = {
    "io": "global 'io'", "os": "global 'os'", "ffi": "require('ffi'): modules load only while the policy loads",
    "jit": "global 'jit'", "bytecode": "bytecode is not accepted", "reader": "only source text",
    "dump": "field 'dump'", "debug": "global 'debug'", "setfenv": "global 'setfenv'",
    "module_write": "read-only", "module_rawset": "read-only", "global": "globals are locked",
    "global_rawset": "globals table is not allowed", "metatable": "attempt to index",
    "setmetatable": "table expected", "req_field": "read-only",
    "require_path": "not a module name", "require_new": "only while the policy loads",
    "loadfile": "global 'loadfile'", "dofile": "global 'dofile'",
    "collectgarbage": "global 'collectgarbage'",
    "string_mt": "read-only", "string_mt_rawset": "read-only",
    "string_mt_setmt": "protected metatable", "string_mt_lib": "read-only",
    "string_field": "read-only", "string_rawset": "read-only",
    "string_setmt": "protected metatable", "table_field": "read-only", "math_rawset": "read-only",
    "bit_field": "read-only", "coroutine_field": "read-only",
}


@test
def sandbox(up, d, **_):
    """escape attempts (io, os, ffi, bytecode, string.dump, debug, setfenv, metatables, rawset, require, library tables, the string metatable) fail cleanly"""
    H = up.http_port
    attempts = ",\n".join(f'  ["{k}"] = function(req) {v} end' for k, v in ESCAPES.items())
    write(d, "helper2.lua", "return {}\n")
    p = policy(up, d, f'''
local attempts = {{
{attempts}
}}
local kept
return {{
  allow = base,
  on_request = function(req)
    local name = req:path():sub(2)
    if name == "keep" then kept = req; return req:respond(200, nil, "kept") end
    if name == "intact" then
      return req:respond(200, nil, ("a"):upper() .. tostring(string.upper == ("").upper)
        .. tostring(type(table.concat) == "function" and math.pi > 3.14))
    end
    if name == "use_kept" then
      local ok, err = pcall(function() return kept:host() end)
      return req:respond(200, nil, (ok and "ESCAPED " or "blocked: ") .. tostring(err))
    end
    local f = attempts[name]
    if not f then return end
    local ok, a, b = pcall(f, req)
    if ok and a == nil and b ~= nil then ok, a = false, b end
    return req:respond(200, nil, (ok and "ESCAPED " or "blocked: ") .. tostring(a))
  end,
}}''')
    px = Proxy(up, p)
    bad = []
    try:
        for name in ESCAPES:
            st, _, body = px.req("GET", "/" + name, f"good.test:{H}")
            text = body.decode()
            if st != 200 or not text.startswith("blocked: ") or EXPECTED[name] not in text:
                bad.append(f"{name}: {st} {text[:160]}")
        st, _, body = px.req("GET", "/intact", f"good.test:{H}")
        if body != b"Atruetrue":
            bad.append(f"libraries changed by the attempts: {body[:160]}")
        px.req("GET", "/keep", f"good.test:{H}")
        st, _, body = px.req("GET", "/use_kept", f"good.test:{H}")
        if b"request already finished" not in body:
            bad.append(f"kept req: {body[:160]}")
        expect(not bad, "; ".join(bad))
    finally:
        px.close()


@test
def sandbox_at_load(up, d, **_):
    """a policy that touches io or the string metatable at load time is refused by policy check with file:line"""
    p = write(d, "evil.lua", 'local x = 1\nlocal f = io.open("/etc/passwd")\nreturn {}\n')
    r = subprocess.run([GONDOLIN, "policy", "check", p], capture_output=True, text=True)
    expect(r.returncode != 0, "check passed")
    expect("evil.lua:2:" in r.stderr and "global 'io'" in r.stderr, r.stderr)
    mt = write(d, "mt.lua", 'local x = 1\ngetmetatable("").__index.x = 1\nreturn {}\n')
    r = subprocess.run([GONDOLIN, "policy", "check", mt], capture_output=True, text=True)
    expect(r.returncode != 0 and "mt.lua:2:" in r.stderr and "read-only" in r.stderr, r.stderr)


@test
def cpu_budget(up, d, **_):
    """runaway loops (plain, traceable numeric, pcall-wrapped) are stopped; request denied, proxy fine"""
    H = up.http_port
    p = policy(up, d, '''
return {
  allow = base,
  limits = { hook_ms = 50 },
  on_request = function(req)
    local p = req:path()
    if p == "/spin" then while true do end end
    if p == "/numeric" then local x = 0; for i = 1, 1e15 do x = x + i * 2 end end
    if p == "/pcall" then
      while true do pcall(function() while true do end end) end
    end
  end,
}''')
    audit = os.path.join(d, "cpu-audit.jsonl")
    px = Proxy(up, p, extra=["--audit", audit])
    try:
        for path in ("/spin", "/numeric", "/pcall"):
            t0 = time.monotonic()
            st, head, body = px.req("GET", path, f"good.test:{H}")
            dt = time.monotonic() - t0
            expect(st == 403, f"{path}: status {st}")
            expect(b"CPU budget" in body and b"p.lua:" in body, body)
            expect(header(head, "X-Gondolin-Rule") == "lua-error", head)
            expect(dt < 5, f"{path} took {dt:.1f}s")
        st, _, _ = px.req("GET", "/echo", f"good.test:{H}")
        expect(st == 200, f"after the loops: {st}")
    finally:
        px.close()
    recs = [json.loads(l) for l in open(audit)]
    expect(any(r["rule"] == "lua-error" and "p.lua:" in r.get("reason", "") for r in recs), recs)
    expect(all(r.get("policy") == px.revision for r in recs), [r.get("policy") for r in recs])


@test
def memory_cap(up, d, **_):
    """a memory bomb hits the state's cap; request denied, next request fine"""
    H = up.http_port
    p = policy(up, d, '''
local keep = {}
return {
  allow = base,
  limits = { memory_mb = 16, hook_ms = 2000 },
  on_request = function(req)
    if req:path() == "/bomb" then
      local t = {}
      while true do t[#t + 1] = string.rep("x", 1000000) .. #t end
    end
    if req:path() == "/rep" then return req:respond(200, nil, string.rep("y", 2^30)) end
  end,
}''')
    px = Proxy(up, p)
    try:
        for path in ("/bomb", "/rep"):
            st, _, body = px.req("GET", path, f"good.test:{H}")
            expect(st == 403 and (b"memory" in body or b"not enough" in body), f"{path}: {st} {body[:200]}")
        st, _, _ = px.req("GET", "/echo", f"good.test:{H}")
        expect(st == 200, f"after the bomb: {st}")
    finally:
        px.close()


@test
def errors_fail_closed(up, d, **_):
    """an error in a hook denies with file:line; calling an API outside its phase is an error"""
    H = up.http_port
    p = policy(up, d, '''
return {
  allow = base,
  on_request = function(req)
    if req:path() == "/nil" then local t = nil; return t.x end
    if req:path() == "/throw" then error("boom") end
  end,
  on_response = function(res, req)
    if req:path() == "/phase" then req:set_header("X-Late", "1") end
  end,
}''')
    px = Proxy(up, p)
    try:
        st, _, body = px.req("GET", "/nil", f"good.test:{H}")
        expect(st == 403 and b"p.lua:7:" in body and b"index" in body, body)
        st, _, body = px.req("GET", "/throw", f"good.test:{H}")
        expect(st == 403 and b"p.lua:8: boom" in body, body)
        st, _, body = px.req("GET", "/phase", f"good.test:{H}")
        expect(st == 403 and b"API disabled in phase response" in body, f"{st} {body}")
    finally:
        px.close()


# ---- the string library under the CPU budget ----

def lua_str(b):
    """bytes as a Lua string literal (decimal escapes: any byte, NUL included)"""
    return '"' + "".join("\\%03d" % c if c < 32 or c > 126 or c in (34, 92) else chr(c)
                         for c in b) + '"'


def stock_lua(code):
    """Runs code in a plain LuaJIT state (stock libraries) and returns its string result."""
    import ctypes
    lj = ctypes.CDLL("libluajit-5.1.so.2")
    lj.luaL_newstate.restype = ctypes.c_void_p
    lj.luaL_openlibs.argtypes = [ctypes.c_void_p]
    lj.luaL_loadstring.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lj.lua_pcall.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lj.lua_tolstring.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_size_t)]
    lj.lua_tolstring.restype = ctypes.c_void_p
    lj.lua_close.argtypes = [ctypes.c_void_p]
    L = lj.luaL_newstate()
    lj.luaL_openlibs(L)
    rc = lj.luaL_loadstring(L, code.encode()) or lj.lua_pcall(L, 0, 1, 0)
    n = ctypes.c_size_t()
    p = lj.lua_tolstring(L, -1, ctypes.byref(n))
    out = ctypes.string_at(p, n.value) if p else b""
    lj.lua_close(L)
    expect(rc == 0, f"stock LuaJIT failed: {out[:300]}")
    return out


# patterns worth checking one by one: every construct, the error paths, the corner cases
FIXED_PATTERNS = [
    "", "a", "^a", "a$", "^$", "$a", "a$b", ".", "..", ".-", ".*", ".+", ".?", "a*", "a+", "a-",
    "a?", "^a*$", "%a+", "%A+", "%d+", "%D", "%l%u", "%s*", "%S+", "%w+", "%W", "%p", "%P+",
    "%c", "%x+", "%X", "%z", "%Z+", "%g+", "%G", "%%", "%.", "%]", "[abc]", "[^abc]+", "[a-c]+",
    "[%a_]+", "[%d-]+", "[-a]", "[a-]", "[]]", "[^]]+", "[]a]+", "[a%-z]+", "[%]]", "[z-a]",
    "[%w%s]+", "[^%s]+", "()", "()a()", "(a)", "(a*)", "(a)(b)", "((a)(b))", "(a)%1", "(%a)%1",
    "((.)%2)", "(.-)b", "(.*)b", "(.+)(.+)", "(()a)", "%b()", "%b[]+", "%bab", "x%b()y",
    "%f[%w]%w+", "%f[%W]", "%f[%a]%a+%f[%A]", "%f[a]", "%f[^%z]", "%f[%z]", "^(.-)%s*$",
    "^%s*(.-)%s*$", "(%w+)=(%w+)", "([^&=]+)=([^&]*)", "^/(.-)/(.-)$", "a.-b", "a.*b",
    "(a?)(a?)(a?)", "[%a%d]-", "%d%d?%d?", "^(%d+)%.(%d+)%.?(%d*)$",
    # errors
    "%", "[a", "[^", "[", "(", ")", "a)", "(()", "%1", "(a)%2", "%b", "%ba", "%f", "%fa",
    "(a%1)", "[%", "%0", "((((((((((((((((((((((((((((((((((a))))))))))))))))))))))))))))))))))",
    "a\0b", "[\0]", "%z+", "\xff+", "[\x80-\xff]+",
]
SUBJECTS = [b"", b"a", b"aaa", b"abc", b"aabb", b"hello world", b"  trim me  ", b"x=1&y=22&z=",
            b"/v1/repos/o/r", b"f(a(b)c)d", b"[x[y]z]", b"THE (quick) fox", b"1.2.3",
            b"a\0b\0c", b"\xff\xfe\x80x", b"%d%a", b"ab]c-d", b"aaaaaaab", b"a,b,,c",
            b"abab=cdcd", b"12 abc 34"]
TOKENS = ["a", "b", "c", ".", "%a", "%d", "%s", "%w", "%A", "[ab]", "[^a]", "[a-c]", "[%d_]",
          "(", ")", "()", "*", "+", "-", "?", "^", "$", "%b()", "%f[%w]", "%1", "%2", "x", "%%",
          "1", " ", "=", "[]]"]
ALPHA = b"abc1 _()xX=%\0\xff"


def matcher_cases():
    import random
    rnd = random.Random(20261202)
    cases = []
    for p in FIXED_PATTERNS:
        for s in SUBJECTS:
            cases.append(("find", s, p, None, None))
            cases.append(("match", s, p, None, None))
        for s in SUBJECTS[::3]:
            cases.append(("gmatch", s, p, None, None))
            cases.append(("gsub", s, p, '"<%0>"', None))
    for s in SUBJECTS[:8]:  # init, plain, max and the replacement kinds
        for init in (-100, -3, -1, 0, 1, 2, 4, 100):
            cases.append(("find", s, "a", init, None))
            cases.append(("find", s, "", init, None))
            cases.append(("find", s, "%a+", init, None))
            cases.append(("match", s, "(%a)", init, None))
        cases.append(("find", s, "a.", 1, "true"))
        cases.append(("find", s, "(", 1, "1"))
        for repl in ('"%1-%1"', '"x%"', '"%%"', '"%9"', '"%a%0"', "7", "t1", "f1", "f2"):
            for p in ("%a", "(%a)", "(a)(b)?", "", "()"):
                for mx in (None, "0", "1", "2", "-1"):
                    cases.append(("gsub", s, p, repl, mx))
    for _ in range(3000):
        p = "".join(rnd.choice(TOKENS) for _ in range(rnd.randint(1, 7)))
        s = bytes(rnd.choice(ALPHA) for _ in range(rnd.randint(0, 14)))
        fn = rnd.choice(("find", "match", "gmatch", "gsub"))
        cases.append((fn, s, p, '"[%0]"' if fn == "gsub" else None, None))
    return cases


def lua_cases(cases):
    def arg(v):
        return "nil" if v is None else v
    rows = []
    for fn, s, p, a, b in cases:
        pb = p.encode("latin-1") if isinstance(p, str) else p
        rows.append(f'{{"{fn}", {lua_str(s)}, {lua_str(pb)}, {arg(a)}, {arg(b)}}}')
    return "{\n" + ",\n".join(rows) + "\n}"


@test
def string_matcher_differential(up, d, **_):
    """our find/match/gmatch/gsub (and the wrapped rep/format/sub/concat/sort ...) give the stock LuaJIT results on 11000+ cases"""
    H = up.http_port
    cases = matcher_cases()
    src = open(os.path.join(HERE, "strdiff.lua")).read()
    write(d, "strdiff.lua", src)
    write(d, "cases.lua", "return " + lua_cases(cases) + "\n")
    p = policy(up, d, '''
local run, cases = require "strdiff", require "cases"
return {
  allow = base,
  limits = { hook_ms = 10000 },
  on_request = function(req) return req:respond(200, nil, run(cases)) end,
}''')
    want = stock_lua(f"local run = loadstring({lua_str(src.encode())})()\n"
                     f"return run({lua_cases(cases)})").split(b"\n")
    st, _, body = request_once(up, p, "/", f"good.test:{H}")
    expect(st == 200, f"status {st}: {body[:300]}")
    got = body.split(b"\n")
    expect(len(got) == len(want) == len(cases) + 1, f"{len(got)} results, {len(want)} stock, {len(cases)} cases")
    expect(got[-1] == want[-1], f"sort/rep/format/...: ours {bytes.fromhex(got[-1].decode())!r} "
           f"stock {bytes.fromhex(want[-1].decode())!r}")
    bad = [f"{c[0]}({c[1]!r}, {c[2]!r}, {c[3]}, {c[4]}): ours {bytes.fromhex(g.decode())!r} "
           f"stock {bytes.fromhex(w.decode())!r}" for c, g, w in zip(cases, got, want) if g != w]
    expect(not bad, f"{len(bad)} differ: " + "; ".join(bad[:5]))


# Each runs far past the budget without its charge (a backtracking match never returns;
# a loop of large copies does up to a thousand of them between two checks of the count
# hook); each must be stopped by the budget and denied, and the proxy must go on.
BUDGET_CASES = {
    "match": 'req:path():match("^/(.-)/(.-)/(.-)/(.-)x$")',
    "find": 'string.find(("a"):rep(26), ("a*"):rep(26) .. "b")',
    "gsub": '(("a"):rep(3000)):gsub(".-.-.-b", "")',
    "gmatch": 'for _ in (("a"):rep(3000)):gmatch(".-.-.-b") do end',
    "find_plain": 'local s = ("a"):rep(2^27) while true do s:find("ab", 1, true) end',
    "rep": 'local s = ("x"):rep(2^26) while true do s:rep(2) end',
    "upper": 'local s = ("X"):rep(2^27) while true do s:upper() end',
    "sub": 'local s = ("x"):rep(2^28) while true do s:sub(1, -2) end',
    "format": 'local s = ("x"):rep(2^28) while true do ("%s"):format(s) end',
    "concat": 'local t, p = {}, ("x"):rep(2^20) for i = 1, 2^8 do t[i] = p end '
              'while true do table.concat(t) end',
    # every comparison reads 1 MiB: 4096 equal strings (one object) take minutes to sort
    "sort": 'local t, p = {}, ("x"):rep(2^20) for i = 1, 2^12 do t[i] = p end '
            'table.sort(t) error("sorted")',
    "tonumber": 'local s = ("1"):rep(2^27) while true do tonumber(s) end',
    # operators: one instruction compares or copies a whole string
    "compare": 'local a = ("x"):rep(2^28) while not (a < a) do end',
    "concat_op": 'local s = ("x"):rep(2^27) while true do local t = s .. s end',
}


@test
def string_library_budget(up, d, **_):
    """the CPU budget covers the string and table libraries: each runaway call is denied in bounded time"""
    H = up.http_port
    cases = ",\n".join(f'  ["{k}"] = function(req) {v} end' for k, v in BUDGET_CASES.items())
    p = policy(up, d, f'''
local cases = {{
{cases}
}}
return {{
  allow = base,
  limits = {{ hook_ms = 200, memory_mb = 1024 }},
  on_request = function(req)
    local f = cases[req:header("X-Case") or ""]
    if f then f(req) end
  end,
}}''')
    audit = os.path.join(d, "budget-audit.jsonl")
    px = Proxy(up, p, extra=["--audit", audit])
    bad, timings = [], []
    path = "/" + "a/" * 3000  # the guest chooses the path: 6 KB
    try:
        for name in BUDGET_CASES:
            t0 = time.monotonic()
            try:
                st, head, body = px.req("GET", path, f"good.test:{H}", [("X-Case", name)])
            except OSError as e:
                bad.append(f"{name}: {e!r} after {time.monotonic() - t0:.1f}s")
                break  # the proxy is stuck: the rest cannot run
            dt = time.monotonic() - t0
            if st != 403 or b"CPU budget" not in body or header(head, "X-Gondolin-Rule") != "lua-error":
                bad.append(f"{name}: {st} {body[:200]}")
            timings.append(f"{name} {dt:.2f}")
            if dt > 2.5:  # the budget, the setup and one call; without the charges: 4.4 s to hangs
                bad.append(f"{name}: took {dt:.1f}s")
        if not bad:
            st, _, _ = px.req("GET", "/echo", f"good.test:{H}")
            expect(st == 200, f"after the runaways: {st}")
    finally:
        try:
            px.close()
        except AssertionError as e:
            bad.append(str(e))
    expect(not bad, "; ".join(bad) + " (times: " + ", ".join(timings) + ")")
    if os.environ.get("GD_TEST_VERBOSE"):
        print("   ", ", ".join(timings))
    recs = [json.loads(l) for l in open(audit)]
    budget = [r for r in recs if r["rule"] == "lua-error" and "CPU budget" in r.get("reason", "")]
    expect(len(budget) == len(BUDGET_CASES), f"{len(budget)} budget denials audited")


# ---- policy-declared secrets, require, stdlib ----

@test
def secrets_and_modules(up, d, **_):
    """secrets from env, file and a plugin (secret-exec); require of a helper and the stdlib"""
    H = up.http_port
    write(d, "token.txt", "file-secret-42\n")
    write(d, "helper.lua", 'local M = {}\nfunction M.tag(s) return "[" .. s .. "]" end\nreturn M\n')
    p = policy(up, d, '''
local helper = require "helper"
local url = require "gondolin.url"
local b64 = require "gondolin.base64"
local json = require "gondolin.json"
return {
  allow = base,
  plugins = { ["secret-exec"] = true },
  secrets = {
    ENV_TOKEN = { hosts = { "http://good.test" }, from = "env:GD_TEST_ENV_TOKEN" },
    FILE_TOKEN = { hosts = { "http://good.test" }, from = "file:token.txt" },
    CMD_TOKEN = { hosts = { "http://good.test" }, from = "exec:echo cmd-secret-7" },
    TLS_ONLY = { hosts = { "good.test" }, value = "tls-only-value" },
  },
  on_request = function(req)
    local q = url.parse_query(req:query() or "")
    req:set_header("X-Tag", helper.tag(q.name or "none"))
    req:set_header("X-B64", b64.encode("hi"))
    req:set_header("X-Json", json.encode({ a = json.decode('[1,2]')[2] }))
  end,
}''')
    px = Proxy(up, p, extra=["--plugin", os.path.join(FIRST_PARTY, "secret-exec.so")],
               env={"GD_TEST_ENV_TOKEN": "env-secret-9"})
    try:
        hdrs = [("X-A", px.secrets["ENV_TOKEN"]), ("X-B", px.secrets["FILE_TOKEN"]),
                ("X-C", px.secrets["CMD_TOKEN"])]
        st, _, body = px.req("GET", "/echo?name=a%20b", f"good.test:{H}", hdrs)
        h = json.loads(body)["headers"]
        expect(st == 200, st)
        expect((h["x-a"], h["x-b"], h["x-c"]) == ("env-secret-9", "file-secret-42", "cmd-secret-7"), h)
        expect(h["x-tag"] == "[a b]" and h["x-b64"] == "aGk=" and h["x-json"] == '{"a":2}', h)
        st, _, body = px.req("GET", "/echo", f"other.test:{H}", hdrs[:1])
        expect(st == 403 and b"secret-scope" in body, f"out of scope: {st}")
        st, _, body = px.req("GET", "/echo", f"good.test:{H}", [("X-D", px.secrets["TLS_ONLY"])])
        expect(st == 403 and b"secret-cleartext" in body, f"a policy secret over cleartext: {st} {body!r}")
    finally:
        px.close()
    r = subprocess.run([PROXYD, "--policy", write(d, "bad-exec.lua", 'return { plugins = { ["secret-exec"] = true }, secrets = { X = { hosts = {"a.test"}, from = "exec:exit 3" } } }\n'),
                        "--plugin", os.path.join(FIRST_PARTY, "secret-exec.so")],
                       capture_output=True, text=True, timeout=20)
    expect(r.returncode == 2 and "secrets.X" in r.stderr and "exit status 3" in r.stderr, r.stderr)


# ---- hot reload ----

def versioned(up, d, v):
    return policy(up, d, f'''
local V = "{v}"
return {{
  allow = base,
  on_request = function(req, ctx) ctx.v = V; req:set_header("X-V", V) end,
  on_response = function(res, req, ctx) res:set_header("X-V2", V .. "/" .. ctx.v) end,
}}''')


@test
def reload_under_load(up, d, **_):
    """1000+ requests across 20 reloads: each decided by exactly one complete revision, none lost"""
    H = up.http_port
    p = versioned(up, d, 0)
    px = Proxy(up, p)
    results, errors, stop = [], [], threading.Event()

    def client():
        while not stop.is_set() or len(results) < 1000:
            try:
                st, head, body = px.req("GET", "/echo", f"good.test:{H}")
                v1 = json.loads(body)["headers"].get("x-v") if st == 200 else None
                results.append((st, v1, header(head, "X-V2")))
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
                return

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        for v in range(1, 21):
            time.sleep(0.25)
            versioned(up, d, v)
            if v % 5 == 0:
                px.p.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while len(px.reloads) < 20 and time.time() < deadline:
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        px.close()
    expect(not errors, errors[:3])
    expect(len(results) >= 1000, f"only {len(results)} requests")
    bad = [r for r in results if r[0] != 200 or r[2] != f"{r[1]}/{r[1]}"]
    expect(not bad, f"{len(bad)} mixed or failed: {bad[:5]}")
    seen = {r[1] for r in results}
    expect(len(seen) >= 5, f"versions seen: {sorted(seen)}")
    expect(len(px.reloads) >= 20 and all(" ok " in l for l in px.reloads), px.reloads[-3:])


@test
def reload_rejected(up, d, **_):
    """a broken edit is rejected with file:line; the old revision keeps deciding"""
    H = up.http_port
    p = versioned(up, d, "good")
    px = Proxy(up, p)
    try:
        write(d, "p.lua", "return {\n  allow = {\n    { hots = 'x' },\n  },\n}\n")
        deadline = time.time() + 5
        while not px.reloads and time.time() < deadline:
            time.sleep(0.05)
        expect(px.reloads and "rejected" in px.reloads[0], px.reloads)
        expect("unknown key 'hots' (did you mean 'host'?)" in px.reloads[0], px.reloads[0])
        st, head, _ = px.req("GET", "/echo", f"good.test:{H}")
        expect(st == 200 and header(head, "X-V2") == "good/good", head)
    finally:
        px.close()


# ---- plugins ----

@test
def plugin_hooks(up, d, **_):
    """a .so plugin's hook reads headers, sets one, denies with its own rule name"""
    H = up.http_port
    p = policy(up, d, 'return { allow = base, plugins = { testhdr = { value = "from-policy" } } }\n')
    px = Proxy(up, p, extra=["--plugin", os.path.join(PLUGINS, "hdr.so")])
    try:
        st, _, body = px.req("GET", "/echo", f"good.test:{H}", [("User-Agent", "a"), ("Accept", "*/*")])
        expect(st == 200 and json.loads(body)["headers"].get("x-plugin") == "from-policy", body)
        st, head, _ = px.req("GET", "/plugin-deny", f"good.test:{H}")
        expect(st == 451 and header(head, "X-Gondolin-Rule") == "testhdr/hdr", head)
    finally:
        px.close()


@test
def plugin_refusals(up, d, **_):
    """ABI mismatch, missing symbol, small descriptor, failing init, unknown plugin name: precise errors"""
    cases = {
        "bad_abi.so": "built for plugin ABI 99, this gondolin speaks ABI 1",
        "no_entry.so": "does not export gondolin_plugin_entry()",
        "small_desc.so": "descriptor of 8 bytes is smaller than ABI 1's",
        "init_fail.so": "init failed: license file /nonexistent/license.key is missing",
        "missing.so": "cannot load",
    }
    for so, want in cases.items():
        r = subprocess.run([PROXYD, "--plugin", os.path.join(PLUGINS, so)], capture_output=True,
                           text=True, timeout=20)
        expect(r.returncode == 2 and want in r.stderr, f"{so}: rc {r.returncode}: {r.stderr}")
    p = write(d, "named.lua", 'return { plugins = { nosuch = true } }\n')
    r = subprocess.run([PROXYD, "--policy", p], capture_output=True, text=True, timeout=20)
    expect(r.returncode == 2 and "plugins.nosuch: no such plugin is loaded" in r.stderr, r.stderr)


@test
def plugin_ratelimit(up, d, **_):
    """ratelimit plugin: over the rate is 429, over the size is 413, other hosts untouched"""
    H = up.http_port
    p = policy(up, d, '''
return {
  allow = base,
  plugins = { ratelimit = {
    ["good.test"] = { rate = 0.5, burst = 2 },
    ["*"] = { max_request_bytes = 100 },
  } },
}''')
    px = Proxy(up, p, extra=["--plugin-dir", FIRST_PARTY])
    try:
        codes = [px.req("GET", "/echo", f"good.test:{H}")[0] for _ in range(3)]
        expect(codes == [200, 200, 429], codes)
        st, _, body = px.req("POST", "/echo", f"other.test:{H}", body=b"x" * 200)
        expect(st == 413 and b"exceeds 100" in body, f"{st} {body}")
        st, _, _ = px.req("POST", "/echo", f"other.test:{H}", body=b"x" * 50)
        expect(st == 200, st)
    finally:
        px.close()


# ---- authoring tools ----

@test
def authoring_tools(up, d, **_):
    """policy check reports file:line and did-you-mean; test prints a table; explain names the rule"""
    bad = write(d, "typo.lua", 'return {\n  name = "x",\n  alow = { "a.test" },\n}\n')
    r = subprocess.run([GONDOLIN, "policy", "check", bad], capture_output=True, text=True)
    expect(r.returncode == 1 and "typo.lua:3: policy: unknown key 'alow' (did you mean 'allow'?)"
           in r.stderr, r.stderr)
    syn = write(d, "syntax.lua", 'return {\n  allow = { "a.test" \n  dns = 1,\n}\n')
    r = subprocess.run([GONDOLIN, "policy", "check", syn], capture_output=True, text=True)
    expect(r.returncode == 1 and "syntax.lua:3:" in r.stderr, r.stderr)
    pat = write(d, "pattern.lua", 'return { allow = { "a.*.test" } }\n')
    r = subprocess.run([GONDOLIN, "policy", "check", pat], capture_output=True, text=True)
    expect(r.returncode == 1 and "pattern.lua:1: allow[1]" in r.stderr, r.stderr)
    ex = os.path.join(HERE, "..", "..", "examples", "agent.lua")
    r = subprocess.run([GONDOLIN, "policy", "test", ex], capture_output=True, text=True)
    expect(r.returncode == 0 and "0 failed" in r.stdout, r.stdout + r.stderr)
    failing = write(d, "agent-wrong.json", json.dumps({"cases": [
        {"name": "wrong", "request": "GET https://example.com/", "expect": {"decision": "allow"}}]}))
    r = subprocess.run([GONDOLIN, "policy", "test", ex, failing], capture_output=True, text=True)
    expect(r.returncode == 1 and "FAIL" in r.stdout and "want allow, got deny 403" in r.stdout, r.stdout)
    r = subprocess.run([GONDOLIN, "policy", "explain", ex, "POST",
                        "https://github.com/o/r.git/git-receive-pack"], capture_output=True, text=True)
    expect(r.returncode == 0 and "decision: deny 403" in r.stdout and "agent.lua:" in r.stdout
           and "git push" in r.stdout, r.stdout)


@test
def ssh_authoring(up, d, **_):
    """policy test runs SSH cases through the ssh rules and on_ssh_exec; check lists them"""
    pol = write(d, "ssh.lua", """return {
  ssh = { ["git.test"] = { agent = true, repos = { "org/*" } } },
  on_ssh_exec = function(req, ctx)
    if req:git().service == "git-receive-pack" then req:deny("read-only " .. req:host()) end
  end,
}
""")
    cases = write(d, "ssh.json", json.dumps({"cases": [
        {"request": "SSH git@git.test git-upload-pack 'org/r.git'", "expect": {"decision": "allow"}},
        {"request": "SSH git@git.test git-receive-pack 'org/r.git'",
         "expect": {"decision": "deny", "rule": "ssh.lua:4", "reason_contains": "read-only git.test"}},
        {"request": "SSH git@git.test git-upload-pack 'other/r.git'",
         "expect": {"decision": "deny", "rule": "ssh:git.test repos"}},
        {"request": "SSH git@git.test:2222 git-upload-pack 'org/r.git'",
         "expect": {"decision": "deny", "rule": "ssh-allow"}},
        {"name": "wrong", "request": "SSH git.test git-upload-pack 'org/r.git'",
         "expect": {"decision": "deny"}}]}))
    r = subprocess.run([GONDOLIN, "policy", "test", pol, cases], capture_output=True, text=True)
    expect(r.returncode == 1 and "4 passed, 1 failed" in r.stdout
           and "decision: want deny, got allow" in r.stdout, r.stdout + r.stderr)
    r = subprocess.run([GONDOLIN, "policy", "check", pol], capture_output=True, text=True)
    expect(r.returncode == 0 and "ssh:      1 rule, on_ssh_exec" in r.stdout
           and "git.test:22 agent repos org/*" in r.stdout, r.stdout + r.stderr)


def main():
    up = Upstreams()
    passed = failed = 0
    for fn in TESTS:
        name = fn.__doc__.strip()
        if FILTER and FILTER not in name and FILTER != fn.__name__:
            continue
        d = tempfile.mkdtemp(prefix="gd-policy-")
        try:
            fn(up=up, d=d)
            print(f"ok   {name}")
            passed += 1
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {name}: {e}")
            failed += 1
    up.close()
    print(f"policy tests: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
