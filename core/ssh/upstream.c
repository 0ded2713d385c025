/* upstream.c - one upstream exec for the SSH proxy: the name resolved on the host (or its
 * --resolve address), internal addresses refused unless the flow allows them, a TCP
 * connect with a deadline, then a libssh client session whose host key must be KNOWN in
 * ~/.ssh/known_hosts, /etc/ssh/ssh_known_hosts or a --ssh-known-hosts file (our parser,
 * not libssh's), authenticated with the host-held key or the host's agent. */
#define _GNU_SOURCE
#include "ssh/ssh.h"
#include "ssh/ssh_int.h"

#include "dns/addr.h"

#include <errno.h>
#include <fcntl.h>
#include <libssh/libssh.h>
#include <libssh/server.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int up_refuse(ssh_session s, ssh_message m, void *ud)
{
    return gd__ssh_refuse_message(s, m, ud);
}

static int connect_deadline(const struct sockaddr *sa, socklen_t len, unsigned ms)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, sa, len) && errno != EINPROGRESS) {
        int e = -errno;
        close(fd);
        return e;
    }
    struct pollfd pf = {.fd = fd, .events = POLLOUT};
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    int n = poll(&pf, 1, (int)ms);
    if (n <= 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) || soerr) {
        close(fd);
        return n == 0 ? -ETIMEDOUT : -(soerr ? soerr : EIO);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

/* The first address of the name that policy lets us dial, connected. */
static int dial(const struct gd_ssh_flow *f, unsigned ms, char *why, size_t wcap)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai;
    char port[8];
    snprintf(port, sizeof(port), "%u", f->port);
    if (f->addr)
        hints.ai_flags |= AI_NUMERICHOST;
    int rc = getaddrinfo(f->addr ? f->addr : f->name, port, &hints, &ai);
    if (rc) {
        snprintf(why, wcap, "%s does not resolve on the host: %s", f->name, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    snprintf(why, wcap, "%s: no address", f->name);
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        char txt[64];
        gd_addr_str(a->ai_addr, txt, sizeof(txt));
        const char *range = gd_addr_internal(a->ai_addr);
        if (range && !f->allow_internal) {
            snprintf(why, wcap,
                     "%s resolves to %s, an internal address (%s): refused by the "
                     "internal-ranges policy (--allow-internal names hosts that may)",
                     f->name, txt, range);
            continue;
        }
        fd = connect_deadline(a->ai_addr, a->ai_addrlen, ms);
        if (fd < 0)
            snprintf(why, wcap, "cannot connect to %s:%u (%s): %s", f->name, f->port, txt,
                     strerror(-fd));
    }
    freeaddrinfo(ai);
    return fd;
}

static const char *hostkey_algos(unsigned types, char *out, size_t cap)
{
    static const struct {
        unsigned bit;
        const char *algos;
    } t[] = {{GD_SSH_KEY_ED25519, "ssh-ed25519"},
             {GD_SSH_KEY_ECDSA256, "ecdsa-sha2-nistp256"},
             {GD_SSH_KEY_ECDSA384, "ecdsa-sha2-nistp384"},
             {GD_SSH_KEY_ECDSA521, "ecdsa-sha2-nistp521"},
             {GD_SSH_KEY_RSA, "rsa-sha2-512,rsa-sha2-256"}};
    size_t k = 0;
    out[0] = 0;
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (types & t[i].bit)
            k += (size_t)snprintf(out + k, cap - k, "%s%s", k ? "," : "", t[i].algos);
    return k ? out : NULL;
}

static gd_ssh_known_hosts *load_known(const struct gd_ssh_conf *c, char *why, size_t wcap)
{
    gd_ssh_known_hosts *kh = gd_ssh_known_hosts_new();
    if (!kh) {
        snprintf(why, wcap, "out of memory");
        return NULL;
    }
    struct gd_err err = {{0}};
    char user[4200];
    const char *home = getenv("HOME");
    snprintf(user, sizeof(user), "%s/.ssh/known_hosts", home ? home : "/nonexistent");
    int rc = gd_ssh_known_hosts_load(kh, user, &err);
    if (rc && rc != -ENOENT)
        goto fail;
    rc = gd_ssh_known_hosts_load(kh, "/etc/ssh/ssh_known_hosts", &err);
    if (rc && rc != -ENOENT)
        goto fail;
    for (size_t i = 0; i < c->nknown; i++)
        if (gd_ssh_known_hosts_load(kh, c->known_hosts[i], &err))
            goto fail;
    return kh;
fail:
    snprintf(why, wcap, "known_hosts: %s", err.msg);
    gd_ssh_known_hosts_free(kh);
    return NULL;
}

/* 0 when the server's key is KNOWN for name:port, else -1 with why. */
static int verify(ssh_session s, const struct gd_ssh_flow *f, gd_ssh_known_hosts *kh, char *why,
                  size_t wcap)
{
    ssh_key key = NULL;
    char *b64 = NULL, *fp = NULL;
    unsigned char *hash = NULL, blob[16384];
    size_t hl = 0;
    int rc = -1;
    if (ssh_get_server_publickey(s, &key) != SSH_OK ||
        ssh_pki_export_pubkey_base64(key, &b64) != SSH_OK) {
        snprintf(why, wcap, "%s: no host key from the server", f->name);
        goto out;
    }
    const char *type = ssh_key_type_to_char(ssh_key_type(key));
    if (ssh_get_publickey_hash(key, SSH_PUBLICKEY_HASH_SHA256, &hash, &hl) == SSH_OK)
        fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hl);
    long bl = gd_ssh_base64_decode(b64, strlen(b64), blob, sizeof(blob));
    struct gd_ssh_kh_result res;
    if (bl < 0 || !type ||
        gd_ssh_known_hosts_check(kh, f->name, f->port, type, blob, (size_t)bl, &res)) {
        snprintf(why, wcap, "%s: unsupported host key type %s", f->name, type ? type : "?");
        goto out;
    }
    char hp[300];
    snprintf(hp, sizeof(hp), f->port == 22 ? "%s" : "[%s]:%u", f->name, f->port);
    switch (res.status) {
    case GD_SSH_KH_KNOWN:
        rc = 0;
        break;
    case GD_SSH_KH_UNKNOWN:
        snprintf(why, wcap,
                 "host key of %s (%s %s) is not in known_hosts (~/.ssh/known_hosts, "
                 "/etc/ssh/ssh_known_hosts, --ssh-known-hosts): refused",
                 hp, type, fp ? fp : "?");
        break;
    case GD_SSH_KH_CHANGED:
        snprintf(why, wcap,
                 "host key of %s CHANGED: the server offers %s %s but %s:%u lists another "
                 "key: refused (possible man-in-the-middle)",
                 hp, type, fp ? fp : "?", res.file, res.line);
        break;
    case GD_SSH_KH_REVOKED:
        snprintf(why, wcap, "host key of %s (%s %s) is revoked in %s:%u: refused", hp, type,
                 fp ? fp : "?", res.file, res.line);
        break;
    }
out:
    ssh_string_free_char(fp);
    ssh_clean_pubkey_hash(&hash);
    ssh_string_free_char(b64);
    ssh_key_free(key);
    return rc;
}

static int auth(ssh_session s, const struct gd_ssh_flow *f, const char *user, char *why,
                size_t wcap)
{
    const struct gd_ssh_rule *r = gd_ssh_conf_rule(f->conf, f->name, f->port);
    const char *path = r && r->key ? r->key : gd_ssh_conf_key_for(f->conf, f->name);
    if (path) {
        ssh_key key = NULL;
        if (ssh_pki_import_privkey_file(path, getenv("GONDOLIN_SSH_KEY_PASSPHRASE"), NULL, NULL,
                                        &key) != SSH_OK) {
            snprintf(why, wcap,
                     "cannot load the key %s (encrypted? set "
                     "GONDOLIN_SSH_KEY_PASSPHRASE)",
                     path);
            return -1;
        }
        int rc = ssh_userauth_publickey(s, NULL, key);
        ssh_key_free(key);
        if (rc == SSH_AUTH_SUCCESS)
            return 0;
        snprintf(why, wcap, "%s refused the key %s for user %s", f->name, path, user);
        return -1;
    }
    if (f->conf->agent || (r && r->agent)) {
        if (ssh_userauth_agent(s, NULL) == SSH_AUTH_SUCCESS)
            return 0;
        snprintf(why, wcap, "%s refused every key of the host's agent for user %s", f->name, user);
        return -1;
    }
    snprintf(why, wcap, "no host-side key for %s (--ssh-key %s=PATH or --ssh-agent)", f->name,
             f->name);
    return -1;
}

int gd__ssh_up_open(const struct gd_ssh_flow *f, const char *user, const char *cmd,
                    unsigned connect_ms, unsigned timeout_ms, void (*set_fd)(void *, int), void *ud,
                    struct gd__ssh_up *u, char *why, size_t wcap)
{
    u->session = u->channel = NULL;
    gd_ssh_known_hosts *kh = load_known(f->conf, why, wcap);
    if (!kh)
        return -1;
    int fd = dial(f, connect_ms, why, wcap);
    if (fd < 0) {
        gd_ssh_known_hosts_free(kh);
        return -1;
    }
    set_fd(ud, fd);
    ssh_session s = ssh_new();
    u->session = s;
    if (!s) {
        snprintf(why, wcap, "out of memory");
        close(fd);
        set_fd(ud, -1);
        goto fail;
    }
    /* a hostile upstream's global requests and channel opens are refused as they come,
     * never queued (nothing here takes them) */
    ssh_set_message_callback(s, up_refuse, NULL);
    /* the probe's result says which key types known_hosts has for the host: offer only
     * those, as OpenSSH does, so a host with an RSA line is not asked for ed25519 */
    struct gd_ssh_kh_result probe;
    unsigned char dummy = 0;
    char algos[200];
    const char *offer = NULL;
    if (!gd_ssh_known_hosts_check(kh, f->name, f->port, "ssh-ed25519", &dummy, 1, &probe))
        offer = hostkey_algos(probe.types, algos, sizeof(algos));
    long secs = (long)(timeout_ms / 1000 ? timeout_ms / 1000 : 1);
    int no = 0;
    socket_t sfd = fd;
    if (ssh_options_set(s, SSH_OPTIONS_FD, &sfd) || ssh_options_set(s, SSH_OPTIONS_HOST, f->name) ||
        ssh_options_set(s, SSH_OPTIONS_PORT, &f->port) ||
        ssh_options_set(s, SSH_OPTIONS_USER, user) ||
        ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &secs) ||
        ssh_options_set(s, SSH_OPTIONS_PROCESS_CONFIG, &no) ||
        ssh_options_set(s, SSH_OPTIONS_KNOWNHOSTS, "/dev/null") ||
        ssh_options_set(s, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, "/dev/null") ||
        (offer && ssh_options_set(s, SSH_OPTIONS_HOSTKEYS, offer))) {
        snprintf(why, wcap, "ssh options: %s", ssh_get_error(s));
        goto fail;
    }
    if (ssh_connect(s) != SSH_OK) {
        snprintf(why, wcap, "SSH handshake with %s:%u failed: %s", f->name, f->port,
                 ssh_get_error(s));
        goto fail;
    }
    if (verify(s, f, kh, why, wcap) || auth(s, f, user, why, wcap))
        goto fail;
    ssh_channel ch = ssh_channel_new(s);
    u->channel = ch;
    if (!ch || ssh_channel_open_session(ch) != SSH_OK ||
        ssh_channel_request_exec(ch, cmd) != SSH_OK) {
        snprintf(why, wcap, "%s refused the exec: %s", f->name, ssh_get_error(s));
        goto fail;
    }
    gd_ssh_known_hosts_free(kh);
    return 0;
fail:
    gd_ssh_known_hosts_free(kh);
    gd__ssh_up_close(u, set_fd, ud);
    return -1;
}

void gd__ssh_up_close(struct gd__ssh_up *u, void (*set_fd)(void *, int), void *ud)
{
    if (u->channel) {
        ssh_channel_close(u->channel);
        ssh_channel_free(u->channel);
    }
    if (u->session) {
        set_fd(ud, -1);
        ssh_disconnect(u->session);
        ssh_free(u->session);
    }
    u->session = u->channel = NULL;
}
