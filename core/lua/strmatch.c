/*
 * strmatch.c - string.find, string.match, string.gmatch and string.gsub on our own
 * matcher for Lua 5.1 patterns (the dialect LuaJIT 2.1 speaks: %g, %f[set], %b, back
 * references, position captures, a pattern ends at its first NUL).
 *
 * Why our own: LuaJIT's matcher backtracks in C, where the instruction-count hook of
 * the CPU budget cannot run, so a pattern like ("a*"):rep(26) .. "b" against a guest
 * chosen string, or "^/(.-)/(.-)/(.-)/(.-)x$" against a 6 KB path, never returns and
 * freezes the event loop. This matcher counts its steps and charges them to the budget
 * (gd__lua_charge), which raises the budget error from inside the match once the hook
 * call's time is gone. Nothing is allocated while matching, so raising is safe.
 *
 * Results, including error messages and the 200-deep recursion limit ("pattern too
 * complex"), are those of the stock functions; tests/policy/test_policy.py compares the
 * two on many patterns.
 */
#define _GNU_SOURCE
#include "lua/lua_int.h"

#include <lauxlib.h>
#include <stdint.h>
#include <string.h>

#define MAX_CAPTURES 32
#define MAX_DEPTH 200 /* nested match calls, as LuaJIT's LJ_MAX_XLEVEL */
#define STEPS_PER_CHARGE 256

enum { CAP_OPEN = -1, CAP_POS = -2 };

struct cap {
    const char *at;
    ptrdiff_t len; /* or CAP_OPEN / CAP_POS */
};

struct m {
    const char *s0, *send; /* the subject */
    lua_State *L;
    gd_lua *l;
    int ncap, depth;
    unsigned steps;
    struct cap cap[MAX_CAPTURES];
};

static void step(struct m *m)
{
    if (++m->steps >= STEPS_PER_CHARGE) {
        gd__lua_charge(m->L, m->l, (size_t)m->steps * GD_LUA_STEP);
        m->steps = 0;
    }
}

static void settle(struct m *m)
{
    gd__lua_charge(m->L, m->l, (size_t)m->steps * GD_LUA_STEP);
    m->steps = 0;
}

/* ---- character classes (ASCII, locale independent) ---- */

enum {
    C_ALPHA = 1,
    C_DIGIT = 2,
    C_SPACE = 4,
    C_UPPER = 8,
    C_LOWER = 16,
    C_PUNCT = 32,
    C_CNTRL = 64,
    C_XDIGIT = 128,
    C_ZERO = 256
};

static unsigned short ctab[256];

/* The classes by their letter (%a ...); 0: the letter stands for itself. */
static const unsigned short class_bits[26] = {
    ['a' - 'a'] = C_ALPHA,
    ['c' - 'a'] = C_CNTRL,
    ['d' - 'a'] = C_DIGIT,
    ['g' - 'a'] = C_ALPHA | C_DIGIT | C_PUNCT,
    ['l' - 'a'] = C_LOWER,
    ['p' - 'a'] = C_PUNCT,
    ['s' - 'a'] = C_SPACE,
    ['u' - 'a'] = C_UPPER,
    ['w' - 'a'] = C_ALPHA | C_DIGIT,
    ['x' - 'a'] = C_XDIGIT,
    ['z' - 'a'] = C_ZERO,
};

static void ctab_init(void)
{
    for (int c = 0; c < 128; c++) {
        unsigned short f = c == 0 ? C_ZERO : 0;
        if (c < 32 || c == 127)
            f |= C_CNTRL;
        if (c == ' ' || (c >= '\t' && c <= '\r'))
            f |= C_SPACE;
        if (c >= 'A' && c <= 'Z')
            f |= C_ALPHA | C_UPPER;
        if (c >= 'a' && c <= 'z')
            f |= C_ALPHA | C_LOWER;
        if (c >= '0' && c <= '9')
            f |= C_DIGIT | C_XDIGIT;
        if ((c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))
            f |= C_XDIGIT;
        if (c > 32 && c < 127 && !(f & (C_ALPHA | C_DIGIT)))
            f |= C_PUNCT;
        ctab[c] = f;
    }
}

/* Does byte c belong to class letter k (%a, %A: its complement, ...)? Other
 * characters stand for themselves. */
static int in_class(unsigned c, unsigned k)
{
    unsigned lk = k | 0x20; /* a letter in lower case */
    unsigned bits = lk >= 'a' && lk <= 'z' ? class_bits[lk - 'a'] : 0;
    if (!bits)
        return k == c;
    int r = (ctab[c] & bits) != 0;
    return k == lk ? r : !r;
}

/* ---- pattern items ---- */

/* The end of the single-character item at p ('.', '%x', '[set]' or a literal). */
static const char *item_end(struct m *m, const char *p)
{
    char c = *p++;
    if (c == '%') {
        if (!*p)
            luaL_error(m->L, "malformed pattern (ends with '%%')");
        return p + 1;
    }
    if (c != '[')
        return p;
    if (*p == '^')
        p++;
    /* the first character of a set is taken literally, so "[]]" is a set of ']' */
    for (;;) {
        if (!*p)
            luaL_error(m->L, "malformed pattern (missing ']')");
        c = *p++;
        if (c == '%' && *p)
            p++;
        if (*p == ']')
            return p + 1;
    }
}

/* Is c in the set [..] that spans p (at '[') to close (at ']')? */
static int in_set(unsigned c, const char *p, const char *close)
{
    int yes = 1;
    p++;
    if (*p == '^') {
        yes = 0;
        p++;
    }
    for (; p < close; p++) {
        if (*p == '%') { /* item_end saw to it that a character follows */
            p++;
            if (in_class(c, (unsigned char)*p))
                return yes;
        } else if (p[1] == '-' && p + 2 < close) {
            if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2])
                return yes;
            p += 2;
        } else if ((unsigned char)*p == c) {
            return yes;
        }
    }
    return !yes;
}

/* Does subject byte c match the item p..ep? */
static int item_match(unsigned c, const char *p, const char *ep)
{
    switch (*p) {
    case '.':
        return 1;
    case '%':
        return in_class(c, (unsigned char)p[1]);
    case '[':
        return in_set(c, p, ep - 1);
    default:
        return (unsigned char)*p == c;
    }
}

/* ---- the matcher ---- */

static const char *match(struct m *m, const char *s, const char *p);

/* item* : as many as possible, then give back one at a time. */
static const char *greedy(struct m *m, const char *s, const char *p, const char *ep)
{
    size_t n = 0;
    while (s + n < m->send && item_match((unsigned char)s[n], p, ep)) {
        n++;
        step(m);
    }
    for (;;) {
        const char *r = match(m, s + n, ep + 1);
        if (r)
            return r;
        if (n == 0)
            return NULL;
        n--;
    }
}

/* item- : as few as possible, one more at a time. */
static const char *lazy(struct m *m, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *r = match(m, s, ep + 1);
        if (r)
            return r;
        if (s >= m->send || !item_match((unsigned char)*s, p, ep))
            return NULL;
        s++;
    }
}

static const char *open_capture(struct m *m, const char *s, const char *p, ptrdiff_t kind)
{
    if (m->ncap >= MAX_CAPTURES)
        luaL_error(m->L, "too many captures");
    m->cap[m->ncap].at = s;
    m->cap[m->ncap].len = kind;
    m->ncap++;
    const char *r = match(m, s, p);
    if (!r)
        m->ncap--;
    return r;
}

static const char *close_capture(struct m *m, const char *s, const char *p)
{
    int i = m->ncap - 1;
    while (i >= 0 && m->cap[i].len != CAP_OPEN)
        i--;
    if (i < 0)
        luaL_error(m->L, "invalid pattern capture");
    m->cap[i].len = s - m->cap[i].at;
    const char *r = match(m, s, p);
    if (!r)
        m->cap[i].len = CAP_OPEN;
    return r;
}

/* %1..%9 in a pattern: the text of an earlier, closed capture again. */
static const char *backref(struct m *m, const char *s, int digit)
{
    int i = digit - '1';
    if (i < 0 || i >= m->ncap || m->cap[i].len == CAP_OPEN)
        luaL_error(m->L, "invalid capture index");
    if (m->cap[i].len == CAP_POS)
        return NULL;
    size_t n = (size_t)m->cap[i].len;
    if ((size_t)(m->send - s) < n || memcmp(m->cap[i].at, s, n))
        return NULL;
    return s + n;
}

/* %bxy: a balanced run from x to the matching y. */
static const char *balanced(struct m *m, const char *s, const char *p)
{
    if (!p[0] || !p[1])
        luaL_error(m->L, "unbalanced pattern");
    if (s >= m->send || *s != p[0])
        return NULL;
    int open = 1;
    for (const char *q = s + 1; q < m->send; q++) {
        step(m);
        if (*q == p[1]) {
            if (--open == 0)
                return q + 1;
        } else if (*q == p[0]) {
            open++;
        }
    }
    return NULL;
}

/* Matches pattern p (NUL-terminated) at s: the end of the match, or NULL. Single items
 * without a quantifier loop here; quantifiers and captures recurse. */
static const char *match(struct m *m, const char *s, const char *p)
{
    if (++m->depth > MAX_DEPTH)
        luaL_error(m->L, "pattern too complex");
    for (;;) {
        step(m);
        if (*p == '\0')
            break;
        if (*p == '(') {
            s = p[1] == ')' ? open_capture(m, s, p + 2, CAP_POS)
                            : open_capture(m, s, p + 1, CAP_OPEN);
            break;
        }
        if (*p == ')') {
            s = close_capture(m, s, p + 1);
            break;
        }
        if (*p == '$' && p[1] == '\0') {
            if (s != m->send)
                s = NULL;
            break;
        }
        if (*p == '%' && p[1] == 'b') {
            if (!(s = balanced(m, s, p + 2)))
                break;
            p += 4;
            continue;
        }
        if (*p == '%' && p[1] == 'f') {
            p += 2;
            if (*p != '[')
                luaL_error(m->L, "missing '[' after '%%f' in pattern");
            const char *ep = item_end(m, p);
            unsigned before = s == m->s0 ? 0 : (unsigned char)s[-1];
            unsigned here = s < m->send ? (unsigned char)*s : 0;
            if (in_set(before, p, ep - 1) || !in_set(here, p, ep - 1)) {
                s = NULL;
                break;
            }
            p = ep;
            continue;
        }
        if (*p == '%' && p[1] >= '0' && p[1] <= '9') {
            if (!(s = backref(m, s, p[1])))
                break;
            p += 2;
            continue;
        }
        /* a single-character item, perhaps with a quantifier */
        const char *ep = item_end(m, p);
        int hit = s < m->send && item_match((unsigned char)*s, p, ep);
        if (*ep == '?') {
            const char *r;
            if (hit && (r = match(m, s + 1, ep + 1))) {
                s = r;
                break;
            }
            p = ep + 1;
            continue;
        }
        if (*ep == '*') {
            s = greedy(m, s, p, ep);
            break;
        }
        if (*ep == '+') {
            s = hit ? greedy(m, s + 1, p, ep) : NULL;
            break;
        }
        if (*ep == '-') {
            s = lazy(m, s, p, ep);
            break;
        }
        if (!hit) {
            s = NULL;
            break;
        }
        s++;
        p = ep;
    }
    m->depth--;
    return s;
}

/* ---- results ---- */

/* Pushes capture i; with no captures, capture 0 is the whole match s..e. */
static void push_capture(struct m *m, int i, const char *s, const char *e)
{
    if (i >= m->ncap) {
        if (i != 0)
            luaL_error(m->L, "invalid capture index");
        lua_pushlstring(m->L, s, (size_t)(e - s));
        return;
    }
    if (m->cap[i].len == CAP_OPEN)
        luaL_error(m->L, "unfinished capture");
    if (m->cap[i].len == CAP_POS)
        lua_pushinteger(m->L, (lua_Integer)(m->cap[i].at - m->s0 + 1));
    else
        lua_pushlstring(m->L, m->cap[i].at, (size_t)m->cap[i].len);
}

/* Pushes every capture (the whole match when there are none and s is given). */
static int push_captures(struct m *m, const char *s, const char *e)
{
    int n = m->ncap == 0 && s ? 1 : m->ncap;
    luaL_checkstack(m->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        push_capture(m, i, s, e);
    return n;
}

static void m_init(struct m *m, lua_State *L, const char *s, size_t n)
{
    m->L = L;
    m->l = gd__lua_self(L);
    m->s0 = s;
    m->send = s + n;
    m->ncap = 0;
    m->depth = 0;
    m->steps = 0;
}

/* ---- find / match ---- */

static int has_specials(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strchr("^$*+?.([%-", p[i]) && p[i])
            return 1;
    return 0;
}

/* The start offset of find/match's init argument (Lua 5.1: clamped to the length). */
static size_t start_of(lua_State *L, int idx, size_t len)
{
    lua_Integer i = luaL_optinteger(L, idx, 1);
    if (i < 0)
        i += (lua_Integer)len;
    else
        i--;
    if (i < 0)
        i = 0;
    return (size_t)i > len ? len : (size_t)i;
}

static int find_or_match(lua_State *L, int find)
{
    size_t sl, pl;
    const char *s = luaL_checklstring(L, 1, &sl);
    const char *p = luaL_checklstring(L, 2, &pl);
    size_t st = start_of(L, 3, sl);
    struct m m;
    m_init(&m, L, s, sl);
    if (find && (lua_toboolean(L, 4) || !has_specials(p, pl))) {
        /* plain search; memmem's cost is charged like a scan of the rest */
        gd__lua_charge(L, m.l, sl - st);
        const char *q = pl ? memmem(s + st, sl - st, p, pl) : s + st;
        if (!q) {
            lua_pushnil(L);
            return 1;
        }
        lua_pushinteger(L, (lua_Integer)(q - s) + 1);
        lua_pushinteger(L, (lua_Integer)(q - s) + (lua_Integer)pl);
        return 2;
    }
    int anchor = *p == '^';
    p += anchor;
    const char *at = s + st;
    for (;;) {
        m.ncap = 0;
        m.depth = 0;
        const char *e = match(&m, at, p);
        if (e) {
            settle(&m);
            if (!find)
                return push_captures(&m, at, e);
            lua_pushinteger(L, (lua_Integer)(at - s) + 1);
            lua_pushinteger(L, (lua_Integer)(e - s));
            return push_captures(&m, NULL, NULL) + 2;
        }
        if (anchor || at >= m.send)
            break;
        at++;
    }
    settle(&m);
    lua_pushnil(L);
    return 1;
}

static int l_find(lua_State *L)
{
    return find_or_match(L, 1);
}

static int l_match(lua_State *L)
{
    return find_or_match(L, 0);
}

/* ---- gmatch ---- */

/* The iterator: upvalues 1 the state, 2 the subject, 3 the pattern, 4 the position. */
static int gmatch_next(lua_State *L)
{
    size_t sl;
    const char *s = lua_tolstring(L, lua_upvalueindex(2), &sl);
    const char *p = lua_tostring(L, lua_upvalueindex(3));
    size_t pos = (size_t)lua_tointeger(L, lua_upvalueindex(4));
    if (pos > sl)
        return 0;
    struct m m;
    m_init(&m, L, s, sl);
    for (const char *at = s + pos; at <= m.send; at++) {
        m.ncap = 0;
        m.depth = 0;
        const char *e = match(&m, at, p);
        if (e) {
            settle(&m);
            size_t next = (size_t)(e - s) + (e == at); /* an empty match moves on by one */
            lua_pushinteger(L, (lua_Integer)next);
            lua_replace(L, lua_upvalueindex(4));
            return push_captures(&m, at, e);
        }
    }
    settle(&m);
    return 0;
}

static int l_gmatch(lua_State *L)
{
    luaL_checkstring(L, 1);
    luaL_checkstring(L, 2);
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1)); /* the state, for gd__lua_self */
    lua_insert(L, 1);
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, gmatch_next, 4);
    return 1;
}

/* ---- gsub ---- */

/* The replacement string (at 3) for the match s..e: %0 the match, %1-%9 captures, %x
 * any other character itself (a trailing % adds the NUL after it, as stock). */
static void add_template(struct m *m, luaL_Buffer *b, const char *s, const char *e)
{
    size_t n;
    const char *r = lua_tolstring(m->L, 3, &n);
    for (size_t i = 0; i < n; i++) {
        if (r[i] != '%') {
            luaL_addchar(b, r[i]);
            continue;
        }
        char c = r[++i]; /* r[n] is the string's terminating NUL */
        if (c < '0' || c > '9') {
            luaL_addchar(b, c);
        } else if (c == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else {
            push_capture(m, c - '1', s, e);
            luaL_addvalue(b);
        }
    }
}

static void add_replacement(struct m *m, luaL_Buffer *b, const char *s, const char *e)
{
    lua_State *L = m->L;
    int t = lua_type(L, 3);
    if (t == LUA_TSTRING || t == LUA_TNUMBER) {
        add_template(m, b, s, e);
        return;
    }
    if (t == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);
        int n = push_captures(m, s, e);
        lua_call(L, n, 1);
    } else {
        push_capture(m, 0, s, e);
        lua_gettable(L, 3);
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        lua_pushlstring(L, s, (size_t)(e - s));
    } else if (!lua_isstring(L, -1)) {
        luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    }
    luaL_addvalue(b);
}

static int l_gsub(lua_State *L)
{
    size_t sl;
    const char *s = luaL_checklstring(L, 1, &sl);
    const char *p = luaL_checkstring(L, 2);
    int t = lua_type(L, 3);
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)sl + 1);
    if (t != LUA_TNUMBER && t != LUA_TSTRING && t != LUA_TFUNCTION && t != LUA_TTABLE)
        luaL_argerror(L, 3, "string/function/table expected");
    int anchor = *p == '^';
    p += anchor;
    struct m m;
    m_init(&m, L, s, sl);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const char *at = s;
    lua_Integer n = 0;
    while (n < max) {
        m.ncap = 0;
        m.depth = 0;
        const char *e = match(&m, at, p);
        if (e) {
            n++;
            settle(&m); /* the replacement may run Lua code */
            add_replacement(&m, &b, at, e);
        }
        if (e && e > at)
            at = e;
        else if (at < m.send)
            luaL_addchar(&b, *at++);
        else
            break;
        if (anchor)
            break;
    }
    settle(&m);
    luaL_addlstring(&b, at, (size_t)(m.send - at));
    luaL_pushresult(&b);
    lua_pushinteger(L, n);
    return 2;
}

void gd__lua_open_strmatch(lua_State *L, gd_lua *l, int strtab)
{
    if (!ctab['a'])
        ctab_init();
    gd__lua_reg(L, l, strtab, "find", l_find);
    gd__lua_reg(L, l, strtab, "match", l_match);
    gd__lua_reg(L, l, strtab, "gmatch", l_gmatch);
    gd__lua_reg(L, l, strtab, "gsub", l_gsub);
}
