/* upstream.c - one upstream exec for the SSH proxy, opened on the libuv loop without ever
 * blocking it: the name resolved with uv_getaddrinfo (or the --resolve address), internal
 * addresses refused unless the flow allows them, a non-blocking TCP connect per address
 * under connect_ms, then a non-blocking libssh client session (handshake, host key KNOWN
 * in ~/.ssh/known_hosts, /etc/ssh/ssh_known_hosts or a --ssh-known-hosts file by our
 * parser, host-held key or agent auth, exec channel) under handshake_ms. Each step is
 * retried when the socket is ready, until it no longer says SSH_AGAIN. */
#define _GNU_SOURCE
#include "ssh/ssh.h"
#include "ssh/ssh_int.h"

#include "dns/addr.h"

#include <errno.h>
#include <libssh/libssh.h>
#include <libssh/server.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { RESOLVE, CONNECT, HANDSHAKE, AUTH, CHANNEL, EXEC, OPEN, DONE };

/* A pending resolution: apart from the up, so a cancelled or late answer finds u NULL
 * and frees only itself. */
struct gai {
    uv_getaddrinfo_t req;
    struct gd__ssh_up *u;
};

/* A poll handle with the raw socket it closes (until libssh owns the socket). */
struct watch {
    uv_poll_t h;
    int fd, own;
    struct gd__ssh_up *u;
};

struct gd__ssh_up {
    struct gd__ssh_up_opts o;
    char *user, *cmd;
    int state, refs, closed;
    uv_timer_t *timer;
    struct watch *w;
    struct gai *gai;
    struct addrinfo *ai, *next;
    ssh_session s;
    ssh_event ev;
    ssh_channel ch;
    ssh_key key;
    gd_ssh_known_hosts *kh;
    char why[1100], detail[1100];
};

int gd__ssh_poll_events(void *session)
{
    return UV_READABLE | (ssh_get_poll_flags(session) & SSH_WRITE_PENDING ? UV_WRITABLE : 0);
}

static void up_fin(struct gd__ssh_up *u)
{
    if (u->ev) {
        ssh_event_remove_session(u->ev, u->s);
        ssh_event_free(u->ev);
    }
    if (u->ch)
        ssh_channel_free(u->ch);
    if (u->s) {
        ssh_disconnect(u->s);
        ssh_free(u->s); /* closes the socket: its poll handle is closed by now */
    }
    ssh_key_free(u->key);
    if (u->ai)
        uv_freeaddrinfo(u->ai);
    gd_ssh_known_hosts_free(u->kh);
    free(u->user);
    free(u->cmd);
    free(u);
}

static void handle_closed(uv_handle_t *h)
{
    struct gd__ssh_up *u;
    if (h->type == UV_POLL) {
        struct watch *w = h->data;
        u = w->u;
        if (w->own)
            close(w->fd);
        free(w);
    } else {
        u = h->data;
        free(h);
    }
    if (--u->refs == 0)
        up_fin(u);
}

static void unwatch(struct gd__ssh_up *u)
{
    if (u->w)
        uv_close((uv_handle_t *)&u->w->h, handle_closed);
    u->w = NULL;
}

void gd__ssh_up_close(gd__ssh_up *u)
{
    if (!u || u->closed)
        return;
    u->closed = 1;
    u->state = DONE;
    if (u->gai) { /* its callback frees it (and the result) */
        u->gai->u = NULL;
        uv_cancel((uv_req_t *)&u->gai->req);
        u->gai = NULL;
    }
    unwatch(u);
    uv_close((uv_handle_t *)u->timer, handle_closed);
}

static void fail(struct gd__ssh_up *u)
{
    if (u->state == DONE)
        return;
    u->state = DONE;
    if (!u->detail[0])
        snprintf(u->detail, sizeof(u->detail), "%s", u->why);
    u->o.on_open(u, 0, u->o.ud);
}

static void dial_next(struct gd__ssh_up *u);

static void on_deadline(uv_timer_t *t)
{
    struct gd__ssh_up *u = t->data;
    const struct gd_ssh_flow *f = u->o.flow;
    if (u->state == RESOLVE)
        snprintf(u->why, sizeof(u->why), "%s does not resolve on the host: timed out", f->name);
    else if (u->state == CONNECT) { /* this address: the next one may answer */
        char txt[64];
        gd_addr_str(u->next->ai_addr, txt, sizeof(txt));
        snprintf(u->why, sizeof(u->why), "cannot connect to %s:%u (%s): %s", f->name, f->port, txt,
                 strerror(ETIMEDOUT));
        unwatch(u);
        u->next = u->next->ai_next;
        dial_next(u);
        return;
    } else
        snprintf(u->why, sizeof(u->why), "SSH handshake with %s:%u failed: no answer within %u ms",
                 f->name, f->port, u->o.handshake_ms);
    fail(u);
}

static void step(struct gd__ssh_up *u);

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct watch *w = h->data;
    struct gd__ssh_up *u = w->u;
    (void)events;
    if (u->state == CONNECT) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (status < 0 || getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) || soerr) {
            char txt[64];
            gd_addr_str(u->next->ai_addr, txt, sizeof(txt));
            snprintf(u->why, sizeof(u->why), "cannot connect to %s:%u (%s): %s", u->o.flow->name,
                     u->o.flow->port, txt, strerror(soerr ? soerr : EIO));
            unwatch(u);
            u->next = u->next->ai_next;
            dial_next(u);
            return;
        }
        u->state = HANDSHAKE;
        uv_timer_start(u->timer, on_deadline, u->o.handshake_ms, 0);
        step(u);
        return;
    }
    if (u->ev) /* read what came, send what waits */
        for (int i = 0; i < 16 && ssh_event_dopoll(u->ev, 0) == SSH_OK; i++)
            if (u->state == DONE || ssh_get_poll_flags(u->s) & SSH_WRITE_PENDING)
                break;
    if (u->state == OPEN)
        u->o.on_io(u, u->o.ud);
    else if (u->state != DONE)
        step(u);
    gd__ssh_up_rearm(u);
}

void gd__ssh_up_rearm(gd__ssh_up *u)
{
    if (u->w && u->s && u->state != DONE)
        uv_poll_start(&u->w->h, gd__ssh_poll_events(u->s), on_poll);
}

/* Connects to the next address that policy lets us dial; fail() when none is left. */
static void dial_next(struct gd__ssh_up *u)
{
    const struct gd_ssh_flow *f = u->o.flow;
    for (; u->next; u->next = u->next->ai_next) {
        struct addrinfo *a = u->next;
        char txt[64];
        gd_addr_str(a->ai_addr, txt, sizeof(txt));
        const char *range = gd_addr_internal(a->ai_addr);
        if (range && !f->allow_internal) {
            snprintf(u->why, sizeof(u->why),
                     "%s resolves to %s, an internal address (%s): refused by the "
                     "internal-ranges policy (--allow-internal names hosts that may)",
                     f->name, txt, range);
            continue;
        }
        int fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) && errno != EINPROGRESS) {
            snprintf(u->why, sizeof(u->why), "cannot connect to %s:%u (%s): %s", f->name, f->port,
                     txt, strerror(errno));
            close(fd);
            continue;
        }
        struct watch *w = calloc(1, sizeof(*w));
        if (fd < 0 || !w || uv_poll_init_socket(u->o.loop, &w->h, fd)) {
            snprintf(u->why, sizeof(u->why), "cannot connect to %s:%u: %s", f->name, f->port,
                     strerror(fd < 0 ? errno : ENOMEM));
            if (fd >= 0)
                close(fd);
            free(w);
            continue;
        }
        *w = (struct watch){.h = w->h, .fd = fd, .own = 1, .u = u};
        w->h.data = w;
        u->w = w;
        u->refs++;
        u->state = CONNECT;
        uv_timer_start(u->timer, on_deadline, u->o.connect_ms, 0);
        uv_poll_start(&w->h, UV_WRITABLE, on_poll);
        return;
    }
    fail(u);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *ai)
{
    struct gai *g = req->data;
    struct gd__ssh_up *u = g->u;
    free(g);
    if (!u) { /* closed meanwhile */
        if (ai)
            uv_freeaddrinfo(ai);
        return;
    }
    u->gai = NULL;
    if (status) {
        snprintf(u->why, sizeof(u->why), "%s does not resolve on the host: %s", u->o.flow->name,
                 uv_strerror(status));
        fail(u);
        return;
    }
    u->ai = u->next = ai;
    snprintf(u->why, sizeof(u->why), "%s: no address", u->o.flow->name);
    dial_next(u);
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

void gd__ssh_hostkey_refusal(const char *hp, const char *type, const char *fp, int status,
                             const char *file, unsigned line, char *guest, size_t gcap, char *host,
                             size_t hcap)
{
    /* the guest learns which key was refused, never where the host keeps its files */
    switch (status) {
    case GD_SSH_KH_CHANGED:
        snprintf(guest, gcap,
                 "host key of %s CHANGED: the server offers %s %s but known_hosts lists "
                 "another key: refused (possible man-in-the-middle)",
                 hp, type, fp);
        snprintf(host, hcap,
                 "host key of %s CHANGED: the server offers %s %s but %s:%u lists another "
                 "key: refused (possible man-in-the-middle)",
                 hp, type, fp, file ? file : "?", line);
        break;
    case GD_SSH_KH_REVOKED:
        snprintf(guest, gcap, "host key of %s (%s %s) is revoked in known_hosts: refused", hp, type,
                 fp);
        snprintf(host, hcap, "host key of %s (%s %s) is revoked in %s:%u: refused", hp, type, fp,
                 file ? file : "?", line);
        break;
    default:
        snprintf(guest, gcap,
                 "host key of %s (%s %s) is not in known_hosts (~/.ssh/known_hosts, "
                 "/etc/ssh/ssh_known_hosts, --ssh-known-hosts): refused",
                 hp, type, fp);
        snprintf(host, hcap, "%s", guest);
    }
}

/* 0 when the server's key is KNOWN for name:port, else -1 with why and detail. */
static int verify(struct gd__ssh_up *u)
{
    const struct gd_ssh_flow *f = u->o.flow;
    ssh_key key = NULL;
    char *b64 = NULL, *fp = NULL;
    unsigned char *hash = NULL, blob[16384];
    size_t hl = 0;
    int rc = -1;
    if (ssh_get_server_publickey(u->s, &key) != SSH_OK ||
        ssh_pki_export_pubkey_base64(key, &b64) != SSH_OK) {
        snprintf(u->why, sizeof(u->why), "%s: no host key from the server", f->name);
        goto out;
    }
    const char *type = ssh_key_type_to_char(ssh_key_type(key));
    if (ssh_get_publickey_hash(key, SSH_PUBLICKEY_HASH_SHA256, &hash, &hl) == SSH_OK)
        fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hl);
    long bl = gd_ssh_base64_decode(b64, strlen(b64), blob, sizeof(blob));
    struct gd_ssh_kh_result res;
    if (bl < 0 || !type ||
        gd_ssh_known_hosts_check(u->kh, f->name, f->port, type, blob, (size_t)bl, &res)) {
        snprintf(u->why, sizeof(u->why), "%s: unsupported host key type %s", f->name,
                 type ? type : "?");
        goto out;
    }
    char hp[300];
    snprintf(hp, sizeof(hp), f->port == 22 ? "%s" : "[%s]:%u", f->name, f->port);
    if (res.status == GD_SSH_KH_KNOWN)
        rc = 0;
    else
        gd__ssh_hostkey_refusal(hp, type, fp ? fp : "?", (int)res.status, res.file, res.line,
                                u->why, sizeof(u->why), u->detail, sizeof(u->detail));
out:
    ssh_string_free_char(fp);
    ssh_clean_pubkey_hash(&hash);
    ssh_string_free_char(b64);
    ssh_key_free(key);
    return rc;
}

/* "TYPE SHA256:..." of a key, for lines that must not name its file. */
static void key_name(ssh_key k, char *out, size_t cap)
{
    unsigned char *hash = NULL;
    size_t hl = 0;
    char *fp = NULL;
    if (ssh_get_publickey_hash(k, SSH_PUBLICKEY_HASH_SHA256, &hash, &hl) == SSH_OK)
        fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hl);
    snprintf(out, cap, "%s %s", ssh_key_type_to_char(ssh_key_type(k)) ?: "?", fp ? fp : "?");
    ssh_string_free_char(fp);
    ssh_clean_pubkey_hash(&hash);
}

/* Auth with the host-held key or the agent: 1 done, 0 again later, -1 failed (why). The
 * agent is a local unix socket libssh talks to synchronously: a reply from it is quick,
 * only the server's answers are waited for on the loop. */
static int auth(struct gd__ssh_up *u)
{
    const struct gd_ssh_flow *f = u->o.flow;
    const struct gd_ssh_rule *r = gd_ssh_conf_rule(f->conf, f->name, f->port);
    const char *path = r && r->key ? r->key : gd_ssh_conf_key_for(f->conf, f->name);
    if (path) {
        if (!u->key && ssh_pki_import_privkey_file(path, getenv("GONDOLIN_SSH_KEY_PASSPHRASE"),
                                                   NULL, NULL, &u->key) != SSH_OK) {
            u->key = NULL;
            snprintf(u->why, sizeof(u->why),
                     "cannot load the host-side key for %s (encrypted? set "
                     "GONDOLIN_SSH_KEY_PASSPHRASE on the host)",
                     f->name);
            snprintf(u->detail, sizeof(u->detail),
                     "cannot load the key %s (encrypted? set GONDOLIN_SSH_KEY_PASSPHRASE)", path);
            return -1;
        }
        int rc = ssh_userauth_publickey(u->s, NULL, u->key);
        if (rc == SSH_AUTH_AGAIN)
            return 0;
        if (rc == SSH_AUTH_SUCCESS)
            return 1;
        char kn[200];
        key_name(u->key, kn, sizeof(kn));
        snprintf(u->why, sizeof(u->why), "%s refused the host-side key (%s) for user %s", f->name,
                 kn, u->user);
        snprintf(u->detail, sizeof(u->detail), "%s refused the key %s (%s) for user %s", f->name,
                 path, kn, u->user);
        return -1;
    }
    if (f->conf->agent || (r && r->agent)) {
        int rc = ssh_userauth_agent(u->s, NULL);
        if (rc == SSH_AUTH_AGAIN)
            return 0;
        if (rc == SSH_AUTH_SUCCESS)
            return 1;
        snprintf(u->why, sizeof(u->why), "%s refused every key of the host's agent for user %s",
                 f->name, u->user);
        return -1;
    }
    snprintf(u->why, sizeof(u->why), "no host-side key for %s (--ssh-key %s=PATH or --ssh-agent)",
             f->name, f->name);
    return -1;
}

static int up_refuse(ssh_session s, ssh_message m, void *ud)
{
    return gd__ssh_refuse_message(s, m, ud);
}

/* The session on the connected socket (ownership moves to libssh). */
static int session_new(struct gd__ssh_up *u)
{
    const struct gd_ssh_flow *f = u->o.flow;
    if (!(u->s = ssh_new())) {
        snprintf(u->why, sizeof(u->why), "out of memory");
        return -1;
    }
    /* a hostile upstream's global requests and channel opens are refused as they come,
     * never queued (nothing here takes them) */
    ssh_set_message_callback(u->s, up_refuse, NULL);
    /* the probe's result says which key types known_hosts has for the host: offer only
     * those, as OpenSSH does, so a host with an RSA line is not asked for ed25519 */
    struct gd_ssh_kh_result probe;
    unsigned char dummy = 0;
    char algos[200];
    const char *offer = NULL;
    if (!gd_ssh_known_hosts_check(u->kh, f->name, f->port, "ssh-ed25519", &dummy, 1, &probe))
        offer = hostkey_algos(probe.types, algos, sizeof(algos));
    int no = 0;
    socket_t sfd = u->w->fd;
    if (ssh_options_set(u->s, SSH_OPTIONS_FD, &sfd) ||
        ssh_options_set(u->s, SSH_OPTIONS_HOST, f->name) ||
        ssh_options_set(u->s, SSH_OPTIONS_PORT, &f->port) ||
        ssh_options_set(u->s, SSH_OPTIONS_USER, u->user) ||
        ssh_options_set(u->s, SSH_OPTIONS_PROCESS_CONFIG, &no) ||
        ssh_options_set(u->s, SSH_OPTIONS_KNOWNHOSTS, "/dev/null") ||
        ssh_options_set(u->s, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, "/dev/null") ||
        (offer && ssh_options_set(u->s, SSH_OPTIONS_HOSTKEYS, offer))) {
        snprintf(u->why, sizeof(u->why), "ssh options: %s", ssh_get_error(u->s));
        return -1;
    }
    ssh_set_blocking(u->s, 0);
    u->w->own = 0; /* ssh_connect hands it to the session: ssh_free closes it */
    return 0;
}

/* Runs the current step until it says "again" (or the exec is open, or it failed). */
static void step(struct gd__ssh_up *u)
{
    const struct gd_ssh_flow *f = u->o.flow;
    for (;;) {
        int rc;
        switch (u->state) {
        case HANDSHAKE:
            if (!u->s && session_new(u)) {
                fail(u);
                return;
            }
            rc = ssh_connect(u->s);
            /* the first call put the socket in libssh's own poll set: from now on the
             * session's event reads and writes it when uv says it is ready */
            if (!u->ev && rc != SSH_ERROR &&
                (!(u->ev = ssh_event_new()) || ssh_event_add_session(u->ev, u->s))) {
                snprintf(u->why, sizeof(u->why), "out of memory");
                fail(u);
                return;
            }
            if (rc == SSH_AGAIN) {
                gd__ssh_up_rearm(u);
                return;
            }
            if (rc != SSH_OK) {
                snprintf(u->why, sizeof(u->why), "SSH handshake with %s:%u failed: %s", f->name,
                         f->port, ssh_get_error(u->s));
                fail(u);
                return;
            }
            if (verify(u)) {
                fail(u);
                return;
            }
            u->state = AUTH;
            break;
        case AUTH:
            rc = auth(u);
            if (rc < 0) {
                fail(u);
                return;
            }
            if (!rc) {
                gd__ssh_up_rearm(u);
                return;
            }
            if (!(u->ch = ssh_channel_new(u->s))) {
                snprintf(u->why, sizeof(u->why), "out of memory");
                fail(u);
                return;
            }
            u->state = CHANNEL;
            break;
        case CHANNEL:
        case EXEC:
            rc = u->state == CHANNEL ? ssh_channel_open_session(u->ch)
                                     : ssh_channel_request_exec(u->ch, u->cmd);
            if (rc == SSH_AGAIN) {
                gd__ssh_up_rearm(u);
                return;
            }
            if (rc != SSH_OK) {
                snprintf(u->why, sizeof(u->why), "%s refused the exec: %s", f->name,
                         ssh_get_error(u->s));
                fail(u);
                return;
            }
            if (u->state == CHANNEL) {
                u->state = EXEC;
                break;
            }
            u->state = OPEN;
            uv_timer_stop(u->timer);
            gd__ssh_up_rearm(u);
            u->o.on_open(u, 1, u->o.ud);
            return;
        default:
            return;
        }
    }
}

static int fail_start(struct gd__ssh_up *u, struct gai *g)
{
    if (u) {
        gd_ssh_known_hosts_free(u->kh);
        free(u->timer);
        free(u->user);
        free(u->cmd);
    }
    free(u);
    free(g);
    return -1;
}

int gd__ssh_up_start(const struct gd__ssh_up_opts *o, gd__ssh_up **out, char *why, size_t wcap,
                     char *detail, size_t dcap)
{
    const struct gd_ssh_flow *f = o->flow;
    struct gd__ssh_up *u = calloc(1, sizeof(*u));
    struct gai *g = calloc(1, sizeof(*g));
    if (!u || !g || !(u->user = strdup(o->user)) || !(u->cmd = strdup(o->cmd)) ||
        !(u->timer = malloc(sizeof(*u->timer)))) {
        snprintf(why, wcap, "out of memory");
        snprintf(detail, dcap, "out of memory");
        return fail_start(u, g);
    }
    /* (the error names the file: the host's log gets it, the guest does not) */
    if (!(u->kh = load_known(f->conf, detail, dcap))) {
        snprintf(why, wcap, "%s: the host's known_hosts files cannot be read", f->name);
        return fail_start(u, g);
    }
    u->o = *o;
    uv_timer_init(o->loop, u->timer);
    u->timer->data = u;
    u->refs = 1;
    char port[8];
    snprintf(port, sizeof(port), "%u", f->port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    if (f->addr)
        hints.ai_flags |= AI_NUMERICHOST;
    g->u = u;
    g->req.data = g;
    int rc =
        uv_getaddrinfo(o->loop, &g->req, on_resolved, f->addr ? f->addr : f->name, port, &hints);
    if (rc) {
        snprintf(why, wcap, "%s does not resolve on the host: %s", f->name, uv_strerror(rc));
        snprintf(detail, dcap, "%s", why);
        free(g);
        u->closed = 1;
        uv_close((uv_handle_t *)u->timer, handle_closed);
        return -1;
    }
    u->gai = g;
    /* a resolver that never answers fails the exec like a silent server does */
    uv_timer_start(u->timer, on_deadline, o->connect_ms, 0);
    *out = u;
    return 0;
}

void *gd__ssh_up_session(gd__ssh_up *u)
{
    return u->s;
}

void *gd__ssh_up_channel(gd__ssh_up *u)
{
    return u->ch;
}

const char *gd__ssh_up_why(gd__ssh_up *u)
{
    return u->why;
}

const char *gd__ssh_up_detail(gd__ssh_up *u)
{
    return u->detail[0] ? u->detail : u->why;
}
