/*
 * gondolin/plugin.h - the plugin SDK (file providers and fs hooks also use <gondolin/vfs.h>,
 * installed from core/vfs/vfs.h). A plugin is a shared object that exports one
 * symbol, gondolin_plugin_entry(), returning a descriptor. Everything the plugin may do
 * goes through the host API table it receives in init(); it links against nothing of
 * gondolin and sees only opaque handles.
 *
 *   #include <gondolin/plugin.h>
 *
 *   static enum gd_plugin_decision on_req(gd_txn *t, unsigned phase, void *ud) { ... }
 *
 *   static int init(const struct gd_host_api *api, gd_plugin_host *host, const char *config,
 *                   void **state, char *err, size_t errcap)
 *   {
 *       return api->register_http_hook(host, "my-hook", GD_PLUGIN_PHASE_REQUEST, on_req, NULL);
 *   }
 *
 *   GD_PLUGIN_EXPORT const struct gd_plugin_desc *gondolin_plugin_entry(void)
 *   {
 *       static const struct gd_plugin_desc d = {
 *           GONDOLIN_PLUGIN_ABI_VERSION, sizeof(struct gd_plugin_desc), "example", "1.0",
 *           init, NULL};
 *       return &d;
 *   }
 *
 * Compatibility rules (docs/plugins.md): both structs start with abi_version and
 * struct_size; fields are only ever appended. A plugin reads an api member only when
 * api->struct_size covers it (GD_PLUGIN_API_HAS). The host refuses a descriptor whose
 * abi_version differs from its own or whose struct_size is smaller than version 1's.
 *
 * Lifetimes: a plugin is instantiated once per policy revision (init with that
 * revision's config) and finalised (fini) when the last request decided by that
 * revision has finished. Registration calls work only inside init. Hooks run on the
 * proxy's event loop thread and must not block. A gd_txn is valid only during the hook
 * call it was passed to.
 */
#ifndef GONDOLIN_PLUGIN_H
#define GONDOLIN_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GONDOLIN_PLUGIN_ABI_VERSION 1
/* The API level of this header: members are appended to gd_host_api within one ABI
 * version, each marked "level N". 1: ABI 1 as first released; 2: files (VFS providers
 * and fs hooks); 3: SSH exec hooks. A plugin compiled with level N runs on an older host
 * as long as it checks GD_PLUGIN_API_HAS before calling a newer member. */
#define GONDOLIN_PLUGIN_API_LEVEL 3
#define GD_PLUGIN_EXPORT __attribute__((visibility("default")))

typedef struct gd_txn gd_txn;                 /* one HTTP exchange (or a raw TCP flow) */
typedef struct gd_plugin_host gd_plugin_host; /* this plugin instance, for registration */

/* Phases (a mask for registration; one bit when a hook runs). */
enum {
    GD_PLUGIN_PHASE_CONNECT = 1,       /* upstream address chosen (txn_addr) */
    GD_PLUGIN_PHASE_REQUEST = 2,       /* request line + headers */
    GD_PLUGIN_PHASE_REQUEST_BODY = 4,  /* whole request body, after want_body */
    GD_PLUGIN_PHASE_RESPONSE = 8,      /* upstream status + headers */
    GD_PLUGIN_PHASE_RESPONSE_BODY = 16 /* whole response body, after want_body */
};

enum gd_plugin_decision { GD_PLUGIN_CONTINUE = 0, GD_PLUGIN_DENY = 1, GD_PLUGIN_RESPOND = 2 };

/* A hook: return GD_PLUGIN_CONTINUE, or what api->deny / api->respond returned. */
typedef enum gd_plugin_decision (*gd_plugin_hook_fn)(gd_txn *t, unsigned phase, void *ud);

/* A secret source ("from = 'SCHEME:ARG'" in a policy). Writes the value (NUL-terminated)
 * into out and returns its length, or returns -1 with a one-line reason in err. Called
 * while a policy revision loads, never on the request path. */
typedef int (*gd_plugin_secret_fn)(void *ud, const char *arg, char *out, size_t cap, char *err,
                                   size_t errcap);

/* Files (level 2): struct gd_vfs_ops and struct gd_vfs_event are in <gondolin/vfs.h>. */
struct gd_vfs_ops;
struct gd_vfs_event;

/* Makes the provider state p for one mount that names this provider (`mounts = {
 * ["/x"] = { provider = "name", config = {...} } }`); mount is the guest path, config
 * the mount's config table as JSON ("{}" when none). Nonzero = refuse the mount, with a
 * one-line reason in err. Called while the sandbox starts, on the loop thread. */
typedef int (*gd_plugin_vfs_factory)(void *ud, const char *mount, const char *config, void **p,
                                     char *err, size_t errcap);
/* Before a guest file operation: 0 goes on, a negative errno denies (the guest sees
 * it; a one-line reason may be written to reason). Runs on the loop thread, like HTTP
 * hooks; must not block. */
typedef int (*gd_plugin_fs_before_fn)(void *ud, const struct gd_vfs_event *ev, char *reason,
                                      size_t cap);
/* After it (ev->result, bytes for "close"). */
typedef void (*gd_plugin_fs_after_fn)(void *ud, const struct gd_vfs_event *ev);

/* SSH (level 3): one exec a guest asked for (strings borrowed for the call). */
struct gd_plugin_ssh_exec {
    const char *host; /* the name the guest dialled */
    unsigned port;
    const char *user;        /* the guest's user name */
    const char *command;     /* as the guest sent it */
    const char *git_service; /* "git-upload-pack", "git-receive-pack", "git-upload-archive" */
    const char *git_repo;    /* normalised: "org/repo" */
};
/* Before an exec is proxied (after the policy's ssh rules allowed it, before Lua's
 * on_ssh_exec): 0 goes on, nonzero denies (a one-line reason may be written to reason).
 * Runs on the loop thread; must not block. */
typedef int (*gd_plugin_ssh_exec_fn)(void *ud, const struct gd_plugin_ssh_exec *x, char *reason,
                                     size_t cap);

struct gd_host_api {
    uint32_t abi_version; /* GONDOLIN_PLUGIN_ABI_VERSION of the host */
    uint32_t struct_size; /* sizeof(struct gd_host_api) in the host */

    /* -- registration: only inside init; 0 or a negative errno -- */
    int (*register_http_hook)(gd_plugin_host *h, const char *name, unsigned phases,
                              gd_plugin_hook_fn fn, void *ud);
    int (*register_secret_source)(gd_plugin_host *h, const char *scheme, gd_plugin_secret_fn fn,
                                  void *ud);
    /* One line to the host's log, prefixed with the plugin's name. */
    void (*log)(gd_plugin_host *h, const char *msg);

    /* -- the transaction (valid during the hook call only). Strings are borrowed. -- */
    const char *(*txn_method)(const gd_txn *t);
    const char *(*txn_scheme)(const gd_txn *t); /* "http", "https", "tcp" */
    const char *(*txn_host)(const gd_txn *t);   /* lowercase, no port */
    unsigned (*txn_port)(const gd_txn *t);
    const char *(*txn_target)(const gd_txn *t); /* "/path?query" */
    const char *(*txn_addr)(const gd_txn *t);   /* CONNECT: address about to be dialled */
    int (*txn_status)(const gd_txn *t);         /* response phases */
    /* resp: 0 request headers, 1 response headers. Case-insensitive names. */
    const char *(*txn_header)(const gd_txn *t, int resp, const char *name);
    size_t (*txn_header_count)(const gd_txn *t, int resp);
    void (*txn_header_at)(const gd_txn *t, int resp, size_t i, const char **name,
                          const char **value);
    /* Replaces all headers called name (value NULL deletes). -EINVAL for CR/LF or a name
     * that is not a token; -EPERM out of phase (request headers only in the request
     * phases before the head goes upstream, response headers only in the response
     * phases) and always for the request's Host, which is the decided authority. */
    int (*txn_set_header)(gd_txn *t, int resp, const char *name, const char *value);
    /* Decisions: return their result from the hook. reason is one line, copied. */
    enum gd_plugin_decision (*txn_deny)(gd_txn *t, int status, const char *reason);
    enum gd_plugin_decision (*txn_respond)(gd_txn *t, int status, const char *content_type,
                                           const void *body, size_t n);
    /* In a head phase: buffer the body for the matching body phase (ignored elsewhere).
     * Bodies buffered by every flow share one budget: beyond it the request gets 503. */
    void (*txn_want_body)(gd_txn *t);
    const uint8_t *(*txn_body)(const gd_txn *t, size_t *n);
    /* A byte count the proxy knows before the body arrives: Content-Length, or -1. */
    int64_t (*txn_content_length)(const gd_txn *t, int resp);
    /* -- appended in later ABI revisions go below; check GD_PLUGIN_API_HAS -- */

    /* -- level 2: files. Registration only inside init; a refused registration fails
     * the plugin's load with a line saying why (bad name, NULL ops or factory, an ops
     * size this host does not know, a duplicate name). -- */
    /* A provider mounts can name: name [a-z0-9_-]{1,64}, unique among loaded plugins;
     * ops (copied; ops_size = sizeof(struct gd_vfs_ops) as the plugin compiled it) run
     * on the mount's transport thread, never on the loop: keep them thread-safe against
     * the plugin's own hooks. ops->destroy frees what factory made. */
    int (*register_vfs_provider)(gd_plugin_host *h, const char *name, const struct gd_vfs_ops *ops,
                                 size_t ops_size, gd_plugin_vfs_factory factory, void *ud);
    /* An fs hook (before, after or both; rule name "plugin/name"): runs for every mount,
     * before the policy's Lua on_fs / on_fs_done, plugins in load order. */
    int (*register_fs_hook)(gd_plugin_host *h, const char *name, gd_plugin_fs_before_fn before,
                            gd_plugin_fs_after_fn after, void *ud);

    /* -- level 3: SSH. An exec hook (rule name "plugin/name"), plugins in load order. -- */
    int (*register_ssh_hook)(gd_plugin_host *h, const char *name, gd_plugin_ssh_exec_fn fn,
                             void *ud);
};

#define GD_PLUGIN_API_HAS(api, member)                                                             \
    ((api)->struct_size >= offsetof(struct gd_host_api, member) + sizeof((api)->member))

struct gd_plugin_desc {
    uint32_t abi_version; /* GONDOLIN_PLUGIN_ABI_VERSION the plugin was built against */
    uint32_t struct_size; /* sizeof(struct gd_plugin_desc) as the plugin compiled it */
    const char *name;     /* [a-z0-9_-]+, unique among loaded plugins */
    const char *version;
    /* config: the plugin's table from the policy as JSON ("{}" when none). Register hooks
     * and sources here; *state is passed back to fini. Nonzero = refuse to load, with a
     * one-line reason in err. */
    int (*init)(const struct gd_host_api *api, gd_plugin_host *host, const char *config,
                void **state, char *err, size_t errcap);
    void (*fini)(void *state); /* may be NULL */
    /* fields appended below this line, each commented "since ABI n" */
};

/* The one symbol the host looks up. */
GD_PLUGIN_EXPORT const struct gd_plugin_desc *gondolin_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif
