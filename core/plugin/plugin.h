/*
 * plugin.h - loading .so plugins (SDK: plugins/include/gondolin/plugin.h).
 *
 * gd_plugin_open dlopens one file (RTLD_NOW | RTLD_LOCAL), finds gondolin_plugin_entry
 * and checks the descriptor; gd_plugin_start instantiates it with a config (one instance
 * per policy revision) and collects what init registered: hooks, in the order
 * registered, and secret sources.
 */
#ifndef GD_PLUGIN_H
#define GD_PLUGIN_H

#include "base/err.h"
#include "http/http.h"
#include "vfs/vfs.h"

#include <gondolin/plugin.h>

#include <stddef.h>

typedef struct gd_plugin gd_plugin;
typedef struct gd_plugin_inst gd_plugin_inst;

/* Loads path. Errors name the file and the failure: not loadable (dlerror), missing
 * gondolin_plugin_entry, ABI version mismatch, descriptor too small, bad name. */
int gd_plugin_open(const char *path, gd_plugin **out, struct gd_err *err);
const char *gd_plugin_name(const gd_plugin *p);
const char *gd_plugin_path(const gd_plugin *p);
const char *gd_plugin_version(const gd_plugin *p);
void gd_plugin_close(gd_plugin *p); /* after every instance is stopped */

/* The *.so files of dir, sorted by name (malloc'd array of malloc'd paths, NULL-ended;
 * a missing dir gives an empty list). */
char **gd_plugin_scan_dir(const char *dir);

/* Instantiates p with config (JSON text). log receives "name: message" lines. */
int gd_plugin_start(gd_plugin *p, const char *config, void (*log)(void *, const char *),
                    void *log_ud, gd_plugin_inst **out, struct gd_err *err);
void gd_plugin_stop(gd_plugin_inst *in);

struct gd_plugin_hook {
    char *name; /* "plugin-name/hook-name" */
    unsigned phases;
    gd_hook_fn fn; /* a trampoline into the plugin; ud below */
    void *ud;
};
const struct gd_plugin_hook *gd_plugin_hooks(const gd_plugin_inst *in, size_t *n);
/* fs hooks and VFS providers the instance registered (level 2 of the API). */
struct gd_plugin_fs_hook {
    char *name;                    /* "plugin-name/hook-name" */
    gd_plugin_fs_before_fn before; /* either may be NULL */
    gd_plugin_fs_after_fn after;
    void *ud;
};
const struct gd_plugin_fs_hook *gd_plugin_fs_hooks(const gd_plugin_inst *in, size_t *n);
/* SSH exec hooks the instance registered (level 3). */
struct gd_plugin_ssh_hook {
    char *name; /* "plugin-name/hook-name" */
    gd_plugin_ssh_exec_fn fn;
    void *ud;
};
const struct gd_plugin_ssh_hook *gd_plugin_ssh_hooks(const gd_plugin_inst *in, size_t *n);
struct gd_plugin_vfs {
    char *name;
    struct gd_vfs_ops ops; /* the plugin's, copied (members it did not know are NULL) */
    gd_plugin_vfs_factory factory;
    void *ud;
};
/* The provider called name if this instance registered it, else NULL. */
const struct gd_plugin_vfs *gd_plugin_vfs_provider(const gd_plugin_inst *in, const char *name);

/* Runs the secret source called scheme if this instance registered it: 1 and the value
 * in out, 0 not ours, negative errno with err set. */
int gd_plugin_secret(const gd_plugin_inst *in, const char *scheme, const char *arg, char *out,
                     size_t cap, struct gd_err *err);

#endif
