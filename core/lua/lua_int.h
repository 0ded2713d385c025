/*
 * lua_int.h - private to core/lua: the policy state and what its parts share.
 *
 *   lpolicy.c  loading a policy, calling hooks (the public entry points of lpolicy.h)
 *   sandbox.c  the state: allocator cap, CPU budget, require/load, locked globals
 *   lib.c      the gondolin.* library (log, host_match, base64, sha256, JSON)
 *   txn.c      the request/response objects hooks see
 *   conf.c     reading and validating the policy table
 *   mounts.c   the mounts key and the fs hooks' declarations
 *   fs.c       on_fs / on_fs_done and the ctx object they see
 *   fsprov.c   calling a Lua provider and checking what it returns
 *
 * Every entry from C into Lua goes through lua_cpcall, so an error anywhere (including
 * out of memory while we push our own values) unwinds to us and never reaches the
 * panic handler. C functions called from Lua hold no malloc'd memory across calls that
 * may raise: temporaries live in Lua userdata or on the C stack.
 */
#ifndef GD_LUA_INT_H
#define GD_LUA_INT_H

#include "lua/lpolicy.h"

#include <lua.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <time.h>

/* hook slots: the five egress phases (gd__lua_phase_index), then the ingress hooks */
#define NPHASE 7
#define SLOT_INGRESS_REQUEST 5
#define SLOT_INGRESS_RESPONSE 6
#define MAX_SOURCE (4u << 20) /* one policy or module file */

struct gd_lua {
    lua_State *L;
    size_t used, limit;
    uint64_t deadline; /* ns; 0 = no call running */
    unsigned budget_ms;
    size_t work;  /* units charged by C code since the clock was last read */
    size_t big;   /* bytes in blocks of 1 MiB or more (long strings, large tables) */
    int interval; /* instructions between two runs of the count hook */
    int killed;
    int loading;
    struct gd_lua_opts o;
    char *dir;     /* the policy's directory */
    char *display; /* the policy's name in messages */
    char *src;     /* the policy's text (key -> line lookups) */
    char **files;
    size_t nfiles;
    EVP_MD_CTX *md;
    char hash[65];
    struct gd_lua_conf conf;
    int fn[NPHASE]; /* registry refs, LUA_NOREF when absent */
    int cur_slot;   /* the hook slot running (fn/site index) */
    char *site[NPHASE];
    char **warn;
    size_t nwarn;
    /* the running hook call */
    gd_txn *cur;
    unsigned cur_phase;
    /* files: on_fs, on_fs_done (registry refs, LUA_NOREF when absent), where they are
     * defined, the Lua providers by mount (conf.mounts index), the load time */
    int fs_fn[2];
    char *fs_site[2];
    int prov_ref[GD_VFS_MAX_MOUNTS];
    int ssh_fn; /* on_ssh_exec (registry ref, LUA_NOREF when absent) */
    char *ssh_site;
    time_t loaded_at;
};

/* The hook function names, by phase index (conf.c). */
extern const char *const gd__lua_phase_fn[NPHASE];

static inline int gd__lua_phase_index(enum gd_phase ph)
{
    switch (ph) {
    case GD_PHASE_CONNECT:
        return 0;
    case GD_PHASE_REQUEST_HEAD:
        return 1;
    case GD_PHASE_REQUEST_BODY:
        return 2;
    case GD_PHASE_RESPONSE_HEAD:
        return 3;
    case GD_PHASE_RESPONSE_BODY:
        return 4;
    }
    return 0;
}

static inline const char *gd__lua_phase_name(unsigned ph)
{
    switch (ph) {
    case GD_PHASE_CONNECT:
        return "connect";
    case GD_PHASE_REQUEST_HEAD:
        return "request";
    case GD_PHASE_REQUEST_BODY:
        return "request_body";
    case GD_PHASE_RESPONSE_HEAD:
        return "response";
    case GD_PHASE_RESPONSE_BODY:
        return "response_body";
    }
    return "load";
}

/* The state of a C function registered with the state as upvalue 1 (gd__lua_reg). */
static inline gd_lua *gd__lua_self(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* ---- sandbox.c ---- */

/* The lua_Alloc of a policy state (ud is the gd_lua): refuses beyond l->limit. */
void *gd__lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
/* The count hook (installed at every 1000 instructions) and the budget it enforces. */
void gd__lua_count_hook(lua_State *L, lua_Debug *ar);
void gd__lua_budget_start(gd_lua *l, unsigned ms);
void gd__lua_budget_stop(gd_lua *l);
/* Charges units of work done inside a C function (about a byte copied or scanned, or a
 * few nanoseconds; GD_LUA_STEP is one step of the pattern matcher): the instruction
 * count cannot see time spent in C, so library functions whose cost depends on their
 * input charge it here. Reads the clock every GD_LUA_WORK_CHECK units and raises the
 * CPU-budget error once the budget of the running call is gone. The allocator charges
 * every byte it hands out the same way (without raising). */
#define GD_LUA_STEP 16u
#define GD_LUA_WORK_CHECK (1u << 20)
void gd__lua_charge(lua_State *L, gd_lua *l, size_t units);
/* Pushes the compiled chunk of the text file at path; records it (hash, file list) when
 * record. Raises on error. */
void gd__lua_load_file(lua_State *L, gd_lua *l, const char *path, const char *chunkname,
                       int record);
/* Sets tbl[name] = f with l as upvalue 1. */
void gd__lua_reg(lua_State *L, gd_lua *l, int tbl, const char *name, lua_CFunction f);
/* __newindex of read-only tables; wraps the table at the top into a read-only proxy. */
int gd__lua_readonly(lua_State *L);
void gd__lua_make_readonly(lua_State *L);
/* lua_cpcall entries (ud = the gd_lua): open the libraries with the sandbox's
 * replacements; lock the globals once the policy has loaded. */
int gd__lua_open_sandbox(lua_State *L);
int gd__lua_lock_globals(lua_State *L);

/* ---- lib.c ---- */

/* gondolin.log / print. */
int gd__lua_log(lua_State *L);
/* Pushes the read-only `gondolin` table. */
void gd__lua_open_lib(lua_State *L, gd_lua *l);
/* A Lua value as a cJSON tree (owned), or NULL with *why set (or left for OOM). */
struct cJSON *gd__lua_to_json(lua_State *L, int idx, int depth, const char **why);

/* ---- txn.c ---- */

/* A handle lives for one hook call: gd_lua_hook clears t when the call returns, so a
 * script that keeps req in an upvalue gets "request already finished". */
struct lreq {
    gd_txn *t;
    int resp;
};

/* Registers the request and response classes. */
void gd__lua_open_txn(lua_State *L, gd_lua *l);
/* Pushes a request (resp 0) or response (1) object for t. */
struct lreq *gd__lua_push_obj(lua_State *L, gd_txn *t, int resp);

/* ---- strmatch.c, stdlib.c ---- */

/* Replaces find, match, gmatch and gsub in the string table at strtab by our matcher. */
void gd__lua_open_strmatch(lua_State *L, gd_lua *l, int strtab);
/* Puts the string and table libraries (and tonumber) under the CPU budget. */
void gd__lua_open_stdlib(lua_State *L, gd_lua *l);

/* ---- conf.c ---- */

/* For the readers of other files: "file:line" of key in the policy source (or the
 * file), unknown keys of the table at idx refused with a did-you-mean, a string value. */
const char *gd__lua_where(gd_lua *l, const char *key, char *buf, size_t cap);
void gd__lua_check_keys(lua_State *L, gd_lua *l, int idx, const char *const *known,
                        const char *what);

/* The hook function called name in the policy table at p, if any: a registry ref in
 * *ref, its "file:line" in *site (owned); 1 taken, 0 absent; raises when not a function. */
int gd__lua_take_hook(lua_State *L, gd_lua *l, int p, const char *name, int *ref, char **site);

/* ---- mounts.c ---- */

/* The mounts key (value at idx). Raises with file:line on anything invalid. */
void gd__lua_read_mounts(lua_State *L, gd_lua *l, int idx);
/* ssh.c: the ssh table; the request object's metatable */
void gd__lua_read_ssh(lua_State *L, gd_lua *l, int idx);
void gd__lua_open_ssh(lua_State *L, gd_lua *l);
/* Frees l->conf.mounts. */
void gd__lua_free_mounts(gd_lua *l);

/* ---- fs.c ---- */

/* Registers the fs ctx class. */
void gd__lua_open_fs(lua_State *L, gd_lua *l);
/* Formats the message at the top of the stack after a failed call at site (kind: "CPU
 * budget exceeded", ...) into msg and pops it. */
void gd__lua_call_error(gd_lua *l, int rc, int killed, const char *site, char *msg, size_t cap,
                        const char **kind);

/* lua_cpcall-style: (l, policy table) -> fills l->conf, l->fn, l->site; raises with
 * file:line on anything invalid. */
int gd__lua_read_policy(lua_State *L);

#endif
