/* hostkey.c - the per-user host key the guest sees on every SSH connection it makes:
 * $XDG_CONFIG_HOME/gondolin/ssh/host_ed25519 (or ~/.config/...), made on first use,
 * 0600 in a 0700 directory. Persistent, so known_hosts entries in a reused guest disk
 * stay valid. */
#define _GNU_SOURCE
#include "ssh/ssh.h"

#include <errno.h>
#include <libssh/libssh.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int key_dir(char *out, size_t cap)
{
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    char base[3000];
    if (xdg && *xdg)
        snprintf(base, sizeof(base), "%s", xdg);
    else if (home && *home)
        snprintf(base, sizeof(base), "%s/.config", home);
    else
        return -ENOENT;
    char g[3100];
    snprintf(g, sizeof(g), "%s/gondolin", base);
    if ((mkdir(base, 0700) && errno != EEXIST) || (mkdir(g, 0700) && errno != EEXIST))
        return -errno;
    if (snprintf(out, cap, "%s/ssh", g) >= (int)cap)
        return -ENAMETOOLONG;
    if (mkdir(out, 0700) && errno != EEXIST)
        return -errno;
    return 0;
}

int gd_ssh_host_key(char *path, size_t cap, char *pub, size_t pubcap, struct gd_err *err)
{
    char dir[3200];
    int rc = key_dir(dir, sizeof(dir));
    if (rc)
        return gd_err_set(err, rc,
                          "ssh: no directory for the host key ($XDG_CONFIG_HOME/gondolin/ssh): %s",
                          strerror(-rc));
    if (snprintf(path, cap, "%s/host_ed25519", dir) >= (int)cap)
        return gd_err_set(err, -ENAMETOOLONG, "ssh: host key path too long");
    ssh_key key = NULL;
    if (ssh_pki_import_privkey_file(path, NULL, NULL, NULL, &key) != SSH_OK) {
        if (access(path, F_OK) == 0)
            return gd_err_set(err, -EINVAL, "ssh: cannot read the host key %s", path);
        char tmp[3300];
        snprintf(tmp, sizeof(tmp), "%s.%d", path, (int)getpid());
        mode_t old = umask(077);
        rc = ssh_pki_generate(SSH_KEYTYPE_ED25519, 0, &key) != SSH_OK ||
                     ssh_pki_export_privkey_file(key, NULL, NULL, NULL, tmp) != SSH_OK
                 ? -EIO
                 : 0;
        umask(old);
        if (!rc && (chmod(tmp, 0600) || rename(tmp, path)))
            rc = -errno;
        if (rc) {
            unlink(tmp);
            ssh_key_free(key);
            return gd_err_set(err, rc, "ssh: cannot write the host key %s", path);
        }
    }
    char *b64 = NULL;
    rc = ssh_pki_export_pubkey_base64(key, &b64);
    const char *type = ssh_key_type_to_char(ssh_key_type(key));
    if (rc != SSH_OK || !type || snprintf(pub, pubcap, "%s:%s", type, b64) >= (int)pubcap)
        rc = gd_err_set(err, -EINVAL, "ssh: cannot export the host key %s", path);
    else
        rc = 0;
    ssh_string_free_char(b64);
    ssh_key_free(key);
    return rc;
}
