/*
 * net.c - guest frames <-> libslirp, with the egress filter in between (see net.h).
 */
#define _GNU_SOURCE
#include "net/net.h"

#include "dns/addr.h"
#include "dns/dns.h"
#include "net/sockdir.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <slirp/libslirp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define NET_BASE 0xc6130000u    /* 198.19.0.0/16, host byte order */
#define GUEST_IP 0xc613000fu    /* .0.15 */
#define GW_IP 0xc6130002u       /* .0.2 */
#define DNS_IP 0xc6130003u      /* .0.3 */
#define MAX_NAMES (127 * 254)   /* 198.19.1.1 .. 198.19.127.254 */
#define MAX_ALIASES (128 * 254) /* 198.19.128.1 .. 198.19.255.254 */
#define MAX_FWDS 4096
#define MAX_FRAME 65550
#define TXQ_CAP (4u << 20)
#define RXBUF (256 * 1024)
#define MAX_PENDING_DNS 64
#define SYNTH_TTL 60

struct fwd {
    gd_net *net;
    uint32_t ip; /* host order, inside slirp's network */
    uint16_t port;
    int fd;
    uv_poll_t poll;
    int open;
    int kind; /* gd_flow_kind */
    char *name, *dst, *raw_host;
    unsigned raw_port;
};

struct stimer {
    gd_net *net;
    uv_timer_t t;
    SlirpTimerId id;
    void *cb_opaque;
    struct stimer *next;
};

struct dnsreq {
    uv_getaddrinfo_t req;
    gd_net *net; /* NULL once the network is gone */
    uint8_t frame[1600];
    size_t flen;
    struct gd_dns_q q;
    struct dnsreq *next;
};

struct txbuf {
    struct txbuf *next;
    size_t n, off;
    uint8_t data[];
};

struct gd_net {
    uv_loop_t *loop;
    struct gd_net_opts o;
    char **resolve;
    Slirp *slirp;
    int qfd;
    uv_poll_t qpoll;
    int qpoll_open, qpoll_events;
    uint8_t *rx;
    size_t rxn;
    struct txbuf *txh, *txt;
    size_t txq;
    int epfd;
    uv_poll_t eppoll;
    int eppoll_open;
    struct pollfd *pfd;
    size_t npfd, cappfd;
    int *regfd; /* fds registered in epfd last round */
    size_t nreg, capreg;
    uv_prepare_t prep;
    uv_timer_t tick;
    int prep_open, tick_open;
    struct stimer *timers;
    struct gd_sockdir sd; /* the sockets slirp connects to */
    char guest_arg[96];
    /* synthetic names: index i <-> 198.19.(1 + i / 254).(1 + i % 254) */
    char **names;
    size_t nnames;
    uint32_t *name_hash; /* open addressing: index+1, 0 empty */
    /* aliases for addresses outside the synthetic range */
    uint32_t *alias_real; /* index -> real address (host order) */
    char **alias_name;    /* the name trusted DNS resolved it from, or NULL */
    size_t naliases;
    uint32_t *alias_hash; /* real -> index+1 */
    struct fwd **fwds;
    size_t nfwds;
    struct dnsreq *dns_pending;
    size_t ndns;
    uint8_t guest_mac[6];
    int closing;
    void (*close_cb)(gd_net *, void *);
    void *close_ud;
    int handles;
    struct gd_net_stats st;
};

/* ---- checksums ---- */

static uint32_t sum16(const uint8_t *p, size_t n, uint32_t s)
{
    for (; n > 1; p += 2, n -= 2)
        s += (uint32_t)(p[0] << 8 | p[1]);
    if (n)
        s += (uint32_t)(p[0] << 8);
    return s;
}

static uint16_t fold(uint32_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* RFC 1624 incremental update of a checksum field for a 32-bit word change. */
static void csum_fix32(uint8_t *field, uint32_t from, uint32_t to)
{
    uint32_t s = (uint16_t)~rd16(field);
    s += (uint16_t) ~(from >> 16);
    s += (uint16_t) ~(from & 0xffff);
    s += to >> 16;
    s += to & 0xffff;
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    wr16(field, (uint16_t)~s);
}

/* ---- output to the guest ---- */

static void qpoll_update(gd_net *n);
static void on_qemu(uv_poll_t *p, int status, int events);

static void to_guest(gd_net *n, const uint8_t *frame, size_t len)
{
    if (n->closing || n->qfd < 0 || len > MAX_FRAME)
        return;
    if (n->txq + len + 4 > TXQ_CAP) {
        n->st.dropped++; /* the guest is not reading: drop (TCP will retransmit) */
        return;
    }
    struct txbuf *b = malloc(sizeof(*b) + len + 4);
    if (!b)
        return;
    wr32(b->data, (uint32_t)len);
    memcpy(b->data + 4, frame, len);
    b->n = len + 4;
    b->off = 0;
    b->next = NULL;
    if (n->txt)
        n->txt->next = b;
    else
        n->txh = b;
    n->txt = b;
    n->txq += b->n;
    n->st.frames_out++;
    qpoll_update(n);
}

static void tx_flush(gd_net *n)
{
    while (n->txh) {
        struct txbuf *b = n->txh;
        ssize_t w = send(n->qfd, b->data + b->off, b->n - b->off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* EAGAIN: wait for POLLOUT; other errors show up as EOF on read */
        }
        b->off += (size_t)w;
        if (b->off < b->n)
            return;
        n->txh = b->next;
        if (!n->txh)
            n->txt = NULL;
        n->txq -= b->n;
        free(b);
    }
}

/* slirp -> guest: undo the alias NAT on the way out */
static ssize_t slirp_send(const void *buf, size_t len, void *opaque)
{
    gd_net *n = opaque;
    if (len > MAX_FRAME)
        return (ssize_t)len;
    uint8_t f[MAX_FRAME];
    memcpy(f, buf, len);
    if (len >= 14 + 20 && rd16(f + 12) == 0x0800 && (f[14] >> 4) == 4) {
        uint8_t *ip = f + 14;
        size_t ihl = (size_t)(ip[0] & 15) * 4;
        uint32_t src = rd32(ip + 12);
        if (src >= NET_BASE + (128u << 8) && ip[9] == 6 && len >= 14 + ihl + 20) {
            size_t i = ((src >> 8 & 0xff) - 128) * 254 + (src & 0xff) - 1;
            if ((src & 0xff) >= 1 && (src & 0xff) <= 254 && i < n->naliases) {
                uint32_t real = n->alias_real[i];
                wr32(ip + 12, real);
                csum_fix32(ip + 10, src, real);
                csum_fix32(ip + ihl + 16, src, real);
            }
        }
    }
    to_guest(n, f, len);
    return (ssize_t)len;
}

/* ---- synthetic names and aliases ---- */

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static uint32_t name_ip(size_t i)
{
    return NET_BASE + ((uint32_t)(1 + i / 254) << 8) + (uint32_t)(1 + i % 254);
}

/* The synthetic address for name, allocating one on first use (0 when full). */
static uint32_t name_to_ip(gd_net *n, const char *name)
{
    size_t cap = MAX_NAMES * 2;
    size_t h = hash_str(name) % cap;
    for (size_t k = 0; k < cap; k++, h = (h + 1) % cap) {
        uint32_t v = n->name_hash[h];
        if (!v)
            break;
        if (!strcmp(n->names[v - 1], name))
            return name_ip(v - 1);
    }
    if (n->nnames >= MAX_NAMES)
        return 0;
    char *d = strdup(name);
    if (!d)
        return 0;
    n->names[n->nnames] = d;
    n->name_hash[h] = (uint32_t)++n->nnames;
    return name_ip(n->nnames - 1);
}

static const char *ip_to_name(gd_net *n, uint32_t ip)
{
    if ((ip & 0xffff0000u) != NET_BASE)
        return NULL;
    uint32_t hi = ip >> 8 & 0xff, lo = ip & 0xff;
    if (hi < 1 || hi > 127 || lo < 1 || lo > 254)
        return NULL;
    size_t i = (hi - 1) * 254 + lo - 1;
    return i < n->nnames ? n->names[i] : NULL;
}

static uint32_t alias_for(gd_net *n, uint32_t real, const char *name)
{
    size_t cap = MAX_ALIASES * 2;
    size_t h = (real * 2654435761u) % cap;
    for (size_t k = 0; k < cap; k++, h = (h + 1) % cap) {
        uint32_t v = n->alias_hash[h];
        if (!v)
            break;
        if (n->alias_real[v - 1] == real) {
            if (name && !n->alias_name[v - 1])
                n->alias_name[v - 1] = strdup(name);
            size_t i = v - 1;
            return NET_BASE + ((uint32_t)(128 + i / 254) << 8) + (uint32_t)(1 + i % 254);
        }
    }
    if (n->naliases >= MAX_ALIASES)
        return 0;
    size_t i = n->naliases++;
    n->alias_real[i] = real;
    n->alias_name[i] = name ? strdup(name) : NULL;
    n->alias_hash[h] = (uint32_t)(i + 1);
    return NET_BASE + ((uint32_t)(128 + i / 254) << 8) + (uint32_t)(1 + i % 254);
}

static int alias_lookup(gd_net *n, uint32_t real, uint32_t *alias, const char **name)
{
    size_t cap = MAX_ALIASES * 2;
    size_t h = (real * 2654435761u) % cap;
    for (size_t k = 0; k < cap; k++, h = (h + 1) % cap) {
        uint32_t v = n->alias_hash[h];
        if (!v)
            return 0;
        if (n->alias_real[v - 1] == real) {
            size_t i = v - 1;
            *alias = NET_BASE + ((uint32_t)(128 + i / 254) << 8) + (uint32_t)(1 + i % 254);
            *name = n->alias_name[i];
            return 1;
        }
    }
    return 0;
}

/* ---- forwards: one unix listener per (address, port) the guest may reach ---- */

static void on_fwd_accept(uv_poll_t *p, int status, int events)
{
    struct fwd *w = p->data;
    (void)events;
    if (status < 0)
        return;
    for (;;) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
            return;
        struct gd_flow_info info = {
            .kind = (enum gd_flow_kind)w->kind,
            .name = w->name,
            .dst_addr = w->dst,
            .dst_port = w->port,
            .raw_host = w->raw_host,
            .raw_port = w->raw_port,
        };
        w->net->o.on_flow(w->net->o.ud, fd, &info);
    }
}

static struct fwd *fwd_find(gd_net *n, uint32_t ip, uint16_t port)
{
    for (size_t i = 0; i < n->nfwds; i++)
        if (n->fwds[i]->ip == ip && n->fwds[i]->port == port)
            return n->fwds[i];
    return NULL;
}

static struct fwd *fwd_add(gd_net *n, uint32_t ip, uint16_t port, int kind, const char *name,
                           const char *dst, const char *raw_host, unsigned raw_port)
{
    if (n->nfwds >= MAX_FWDS)
        return NULL;
    struct fwd *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->net = n;
    w->ip = ip;
    w->port = port;
    w->kind = kind;
    w->name = name ? strdup(name) : NULL;
    w->dst = strdup(dst);
    w->raw_host = raw_host ? strdup(raw_host) : NULL;
    w->raw_port = raw_port;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%zu", n->sd.path, n->nfwds);
    w->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (w->fd < 0 || bind(w->fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(w->fd, 128)) {
        if (w->fd >= 0)
            close(w->fd);
        free(w->name);
        free(w->dst);
        free(w->raw_host);
        free(w);
        return NULL;
    }
    struct in_addr ga = {.s_addr = htonl(ip)};
    if (slirp_add_unix(n->slirp, sa.sun_path, &ga, port) < 0) {
        close(w->fd);
        unlink(sa.sun_path);
        free(w->name);
        free(w->dst);
        free(w->raw_host);
        free(w);
        return NULL;
    }
    uv_poll_init(n->loop, &w->poll, w->fd);
    w->poll.data = w;
    w->open = 1;
    n->handles++;
    uv_poll_start(&w->poll, UV_READABLE, on_fwd_accept);
    n->fwds[n->nfwds++] = w;
    return w;
}

/* ---- frames from the guest ---- */

/* Ethernet + IPv4 header of a reply to guest frame f: addresses swapped, proto, total
 * IP length tot. Returns the IPv4 header (20 bytes, checksum filled). */
static uint8_t *reply_ip(uint8_t *o, const uint8_t *f, uint8_t proto, size_t tot)
{
    const uint8_t *ip = f + 14;
    memcpy(o, f + 6, 6); /* to the guest */
    memcpy(o + 6, f, 6); /* from whoever it addressed */
    wr16(o + 12, 0x0800);
    uint8_t *oi = o + 14;
    memset(oi, 0, 20);
    oi[0] = 0x45;
    wr16(oi + 2, (uint16_t)tot);
    oi[8] = 64;
    oi[9] = proto;
    memcpy(oi + 12, ip + 16, 4);
    memcpy(oi + 16, ip + 12, 4);
    wr16(oi + 10, fold(sum16(oi, 20, 0)));
    return oi;
}

static void send_rst(gd_net *n, const uint8_t *f, size_t ihl)
{
    const uint8_t *ip = f + 14, *tcp = ip + ihl;
    uint8_t o[14 + 20 + 20];
    uint8_t *oi = reply_ip(o, f, 6, 40), *ot = oi + 20;
    memset(ot, 0, 20);
    memcpy(ot, tcp + 2, 2);
    memcpy(ot + 2, tcp, 2);
    uint32_t seq = rd32(tcp + 4);
    size_t plen = rd16(ip + 2) - ihl - (size_t)(tcp[12] >> 4) * 4;
    wr32(ot + 8, seq + 1 + (uint32_t)plen);
    ot[12] = 5 << 4;
    ot[13] = 0x14; /* RST|ACK */
    uint32_t s = sum16(oi + 12, 8, 0) + 6 + 20;
    wr16(ot + 16, fold(sum16(ot, 20, s)));
    n->st.refused++;
    to_guest(n, o, sizeof(o));
}

static void send_udp(gd_net *n, const uint8_t *f, const uint8_t *payload, size_t plen)
{
    const uint8_t *ip = f + 14;
    size_t ihl = (size_t)(ip[0] & 15) * 4;
    const uint8_t *udp = ip + ihl;
    uint8_t o[14 + 20 + 8 + 1500];
    if (plen > 1500 - 28)
        return;
    uint8_t *oi = reply_ip(o, f, 17, 28 + plen), *ou = oi + 20;
    memcpy(ou, udp + 2, 2);
    memcpy(ou + 2, udp, 2);
    wr16(ou + 4, (uint16_t)(8 + plen));
    wr16(ou + 6, 0); /* the checksum covers its own field as zero */
    memcpy(ou + 8, payload, plen);
    uint32_t s = sum16(oi + 12, 8, 0) + 17 + (uint32_t)(8 + plen);
    uint16_t c = fold(sum16(ou, 8 + plen, s));
    wr16(ou + 6, c ? c : 0xffff);
    to_guest(n, o, 14 + 28 + plen);
}

static void dns_answer(gd_net *n, const uint8_t *f, const uint8_t *q, size_t ql,
                       const struct gd_dns_q *dq, int rcode, const uint8_t (*a4)[4], size_t n4,
                       uint32_t ttl)
{
    uint8_t out[1500];
    size_t len = gd_dns_reply(q, dq, rcode, a4, n4, NULL, 0, ttl, out, sizeof(out) - 28);
    (void)ql;
    if (!len)
        len = gd_dns_reply(q, dq, GD_DNS_SERVFAIL, NULL, 0, NULL, 0, 0, out, sizeof(out) - 28);
    if (len) {
        n->st.dns_answers++;
        send_udp(n, f, out, len);
    }
}

static const char *override_for(gd_net *n, const char *name)
{
    for (char **r = n->resolve; r && *r; r++) {
        const char *eq = strchr(*r, '=');
        if (eq && (size_t)(eq - *r) == strlen(name) && !strncasecmp(*r, name, (size_t)(eq - *r)))
            return eq + 1;
    }
    return NULL;
}

static void on_dns_resolved(uv_getaddrinfo_t *r, int status, struct addrinfo *ai)
{
    struct dnsreq *d = (struct dnsreq *)r;
    gd_net *n = d->net;
    if (n) {
        struct dnsreq **pp = &n->dns_pending;
        while (*pp && *pp != d)
            pp = &(*pp)->next;
        if (*pp)
            *pp = d->next;
        n->ndns--;
        const uint8_t *ip = d->frame + 14;
        const uint8_t *q = ip + (size_t)(ip[0] & 15) * 4 + 8;
        size_t ql = d->flen - (size_t)(q - d->frame);
        uint8_t a4[16][4];
        size_t n4 = 0;
        for (struct addrinfo *a = ai; !status && a && n4 < 16; a = a->ai_next) {
            if (a->ai_family != AF_INET)
                continue;
            char txt[64];
            struct in_addr in = ((struct sockaddr_in *)a->ai_addr)->sin_addr;
            inet_ntop(AF_INET, &in, txt, sizeof(txt));
            /* internal addresses never go to the guest (loopback would be its own);
             * the name then gets a synthetic address and the proxy decides */
            if (gd_addr_internal_str(txt) || (n->o.dns_mode == 1 && n->o.addr_allowed &&
                                              !n->o.addr_allowed(n->o.ud, d->q.name, txt)))
                continue;
            int dup = 0;
            for (size_t k = 0; k < n4; k++)
                dup |= !memcmp(a4[k], &in.s_addr, 4);
            if (dup)
                continue;
            memcpy(a4[n4++], &in.s_addr, 4);
            alias_for(n, ntohl(in.s_addr), d->q.name); /* remember which name it was */
        }
        if (!status && !n4) {
            uint32_t sip = name_to_ip(n, d->q.name);
            if (sip)
                wr32(a4[n4++], sip);
        }
        int rc = status == UV_ENOENT || status == UV_EAI_NONAME ? GD_DNS_NXDOMAIN
                 : status                                       ? GD_DNS_SERVFAIL
                                                                : GD_DNS_NOERROR;
        dns_answer(n, d->frame, q, ql, &d->q, rc, (const uint8_t(*)[4])a4, n4, 60);
    }
    uv_freeaddrinfo(ai);
    free(d);
}

static void handle_dns(gd_net *n, const uint8_t *f, size_t len, size_t ihl)
{
    const uint8_t *udp = f + 14 + ihl;
    size_t ul = rd16(udp + 4);
    if (ul < 8 || 14 + ihl + ul > len)
        return;
    const uint8_t *q = udp + 8;
    size_t ql = ul - 8;
    struct gd_dns_q dq;
    int rc = gd_dns_parse(q, ql, &dq);
    if (rc == -2)
        return;
    if (rc == -1) {
        uint8_t out[12];
        size_t l = gd_dns_formerr(q, ql, out, sizeof(out));
        if (l)
            send_udp(n, f, out, l);
        return;
    }
    if (dq.qclass != 1 || (dq.qtype != GD_DNS_A && dq.qtype != GD_DNS_AAAA)) {
        dns_answer(n, f, q, ql, &dq, GD_DNS_NOERROR, NULL, 0, 0);
        return;
    }
    if (!strcmp(dq.name, "localhost") ||
        (strlen(dq.name) > 10 && !strcmp(dq.name + strlen(dq.name) - 10, ".localhost"))) {
        static const uint8_t lo[1][4] = {{127, 0, 0, 1}};
        dns_answer(n, f, q, ql, &dq, GD_DNS_NOERROR, dq.qtype == GD_DNS_A ? lo : NULL,
                   dq.qtype == GD_DNS_A, SYNTH_TTL);
        return;
    }
    if (!dq.name[0] || dq.qtype == GD_DNS_AAAA) {
        /* no IPv6 path: an empty answer makes clients use A */
        dns_answer(n, f, q, ql, &dq, GD_DNS_NOERROR, NULL, 0, SYNTH_TTL);
        return;
    }
    int resolve = n->o.dns_mode == 2 ||
                  (n->o.dns_mode == 1 && n->o.host_allowed && n->o.host_allowed(n->o.ud, dq.name));
    if (resolve) {
        const char *ov = override_for(n, dq.name);
        if (n->ndns >= MAX_PENDING_DNS || len > sizeof(((struct dnsreq *)0)->frame)) {
            dns_answer(n, f, q, ql, &dq, GD_DNS_SERVFAIL, NULL, 0, 0);
            return;
        }
        struct dnsreq *d = calloc(1, sizeof(*d));
        if (!d)
            return;
        d->net = n;
        memcpy(d->frame, f, len);
        d->flen = len;
        d->q = dq;
        d->next = n->dns_pending;
        n->dns_pending = d;
        n->ndns++;
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
        if (uv_getaddrinfo(n->loop, &d->req, on_dns_resolved, ov ? ov : dq.name, NULL, &hints)) {
            n->dns_pending = d->next;
            n->ndns--;
            free(d);
            dns_answer(n, f, q, ql, &dq, GD_DNS_SERVFAIL, NULL, 0, 0);
        }
        return;
    }
    uint32_t ip = name_to_ip(n, dq.name);
    if (!ip) {
        dns_answer(n, f, q, ql, &dq, GD_DNS_SERVFAIL, NULL, 0, 0);
        return;
    }
    uint8_t a4[1][4];
    wr32(a4[0], ip);
    dns_answer(n, f, q, ql, &dq, GD_DNS_NOERROR, (const uint8_t(*)[4])a4, 1, SYNTH_TTL);
}

/* A TCP segment from the guest: classify SYNs, NAT aliases; 0 = pass to slirp. */
static int handle_tcp(gd_net *n, uint8_t *f, size_t len, size_t ihl)
{
    uint8_t *ip = f + 14, *tcp = ip + ihl;
    if (len < 14 + ihl + 20)
        return -1;
    uint32_t dst = rd32(ip + 16);
    uint16_t dport = rd16(tcp + 2);
    int syn = (tcp[13] & 0x12) == 0x02;
    int synthetic =
        (dst & 0xffff0000u) == NET_BASE && (dst >> 8 & 0xff) >= 1 && (dst >> 8 & 0xff) <= 127;
    uint32_t target = dst;
    const char *name = NULL;
    if (synthetic) {
        name = ip_to_name(n, dst);
        if (!name) {
            if (syn)
                send_rst(n, f, ihl);
            return -1;
        }
    } else {
        uint32_t alias;
        if (!alias_lookup(n, dst, &alias, &name)) {
            if (!syn)
                return 0; /* slirp answers stray segments with RST */
            alias = alias_for(n, dst, NULL);
            if (!alias) {
                send_rst(n, f, ihl);
                return -1;
            }
        }
        target = alias;
    }
    if (syn && !fwd_find(n, target, dport)) {
        const char *up_host = NULL;
        unsigned up_port = 0;
        int pol = n->o.port_policy(n->o.ud, name, dport, &up_host, &up_port);
        if (!pol) {
            send_rst(n, f, ihl);
            return -1;
        }
        char dtxt[32];
        struct in_addr da = {.s_addr = htonl(dst)};
        inet_ntop(AF_INET, &da, dtxt, sizeof(dtxt));
        int kind = pol == 3       ? GD_FLOW_SSH
                   : pol == 2     ? GD_FLOW_RAW
                   : dport == 80  ? GD_FLOW_HTTP
                   : dport == 443 ? GD_FLOW_TLS
                                  : GD_FLOW_SNIFF;
        if (!fwd_add(n, target, dport, kind, name, dtxt, up_host, up_port)) {
            send_rst(n, f, ihl);
            return -1;
        }
    }
    if (target != dst) {
        wr32(ip + 16, target);
        csum_fix32(ip + 10, dst, target);
        csum_fix32(tcp + 16, dst, target);
    }
    return 0;
}

static void handle_frame(gd_net *n, uint8_t *f, size_t len)
{
    n->st.frames_in++;
    if (len < 14) {
        n->st.dropped++;
        return;
    }
    uint16_t et = rd16(f + 12);
    if (et == 0x0806) { /* ARP: slirp answers for its own addresses */
        slirp_input(n->slirp, f, (int)len);
        return;
    }
    if (et != 0x0800 || len < 14 + 20 || (f[14] >> 4) != 4) {
        n->st.dropped++;
        return;
    }
    memcpy(n->guest_mac, f + 6, 6);
    uint8_t *ip = f + 14;
    size_t ihl = (size_t)(ip[0] & 15) * 4;
    size_t tot = rd16(ip + 2);
    if (ihl < 20 || tot < ihl || 14 + tot > len || (rd16(ip + 6) & 0x3fff)) {
        n->st.dropped++; /* malformed, or a fragment: not supported */
        return;
    }
    len = 14 + tot;
    if (rd32(ip + 12) != GUEST_IP && rd32(ip + 12) != 0) {
        n->st.dropped++; /* spoofed source */
        return;
    }
    switch (ip[9]) {
    case 17: {
        if (tot < ihl + 8) {
            n->st.dropped++;
            return;
        }
        uint16_t dport = rd16(ip + ihl + 2);
        if (dport == 53) {
            handle_dns(n, f, len, ihl);
            return;
        }
        if (dport == 67) {
            slirp_input(n->slirp, f, (int)len);
            return;
        }
        n->st.dropped++;
        return;
    }
    case 6:
        if (handle_tcp(n, f, len, ihl)) {
            n->st.dropped++;
            return;
        }
        slirp_input(n->slirp, f, (int)len);
        return;
    case 1:
        if (rd32(ip + 16) == GW_IP) {
            slirp_input(n->slirp, f, (int)len);
            return;
        }
        n->st.dropped++;
        return;
    default:
        n->st.dropped++;
    }
}

static void qpoll_update(gd_net *n)
{
    if (!n->qpoll_open || n->closing)
        return;
    int ev = UV_READABLE | (n->txh ? UV_WRITABLE : 0);
    if (ev != n->qpoll_events) {
        n->qpoll_events = ev;
        uv_poll_start(&n->qpoll, ev, on_qemu);
    }
}

static void on_qemu(uv_poll_t *p, int status, int events);

static void net_stop_io(gd_net *n)
{
    if (n->qpoll_open)
        uv_poll_stop(&n->qpoll);
}

static void on_qemu(uv_poll_t *p, int status, int events)
{
    gd_net *n = p->data;
    if (status < 0) {
        net_stop_io(n);
        return;
    }
    if (events & UV_WRITABLE)
        tx_flush(n);
    if (events & UV_READABLE) {
        for (int rounds = 0; rounds < 64; rounds++) {
            ssize_t r = recv(n->qfd, n->rx + n->rxn, RXBUF - n->rxn, MSG_DONTWAIT);
            if (r <= 0) {
                if (r == 0 || (errno != EAGAIN && errno != EINTR))
                    net_stop_io(n); /* QEMU is gone */
                break;
            }
            n->rxn += (size_t)r;
            size_t off = 0;
            while (n->rxn - off >= 4) {
                uint32_t fl = rd32(n->rx + off);
                if (fl > MAX_FRAME || fl == 0) {
                    /* a corrupt stream: the guest NIC is done, the host is fine */
                    n->rxn = 0;
                    net_stop_io(n);
                    return;
                }
                if (n->rxn - off - 4 < fl)
                    break;
                handle_frame(n, n->rx + off + 4, fl);
                off += 4 + fl;
            }
            memmove(n->rx, n->rx + off, n->rxn - off);
            n->rxn -= off;
        }
    }
    n->qpoll_events = -1;
    qpoll_update(n);
}

/* ---- slirp's own sockets (the client ends of our unix listeners) ---- */

static int add_poll(int fd, int events, void *opaque)
{
    gd_net *n = opaque;
    if (n->npfd == n->cappfd) {
        size_t c = n->cappfd ? n->cappfd * 2 : 64;
        struct pollfd *v = realloc(n->pfd, c * sizeof(*v));
        if (!v)
            return -1;
        n->pfd = v;
        n->cappfd = c;
    }
    short ev = 0;
    if (events & SLIRP_POLL_IN)
        ev |= POLLIN;
    if (events & SLIRP_POLL_OUT)
        ev |= POLLOUT;
    if (events & SLIRP_POLL_PRI)
        ev |= POLLPRI;
    n->pfd[n->npfd].fd = fd;
    n->pfd[n->npfd].events = ev;
    n->pfd[n->npfd].revents = 0;
    return (int)n->npfd++;
}

static int get_revents(int idx, void *opaque)
{
    gd_net *n = opaque;
    if (idx < 0 || (size_t)idx >= n->npfd)
        return 0;
    short r = n->pfd[idx].revents;
    int e = 0;
    if (r & POLLIN)
        e |= SLIRP_POLL_IN;
    if (r & POLLOUT)
        e |= SLIRP_POLL_OUT;
    if (r & POLLPRI)
        e |= SLIRP_POLL_PRI;
    if (r & POLLERR)
        e |= SLIRP_POLL_ERR;
    if (r & POLLHUP)
        e |= SLIRP_POLL_HUP;
    return e;
}

static void slirp_run(gd_net *n)
{
    if (n->closing || !n->slirp)
        return;
    if (n->npfd)
        poll(n->pfd, n->npfd, 0);
    slirp_pollfds_poll(n->slirp, 0, get_revents, n);
    n->npfd = 0; /* indexes are valid for one round only */
}

static void on_ep(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    gd_net *n = p->data;
    struct epoll_event ev[64];
    while (epoll_wait(n->epfd, ev, 64, 0) == 64)
        ;
    slirp_run(n);
}

static void on_tick(uv_timer_t *t)
{
    slirp_run(t->data);
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Before the loop blocks: ask slirp what it waits for, mirror that into our epoll. */
static void on_prepare(uv_prepare_t *p)
{
    gd_net *n = p->data;
    if (n->closing || !n->slirp)
        return;
    uint32_t timeout = 1000;
    n->npfd = 0;
    slirp_pollfds_fill(n->slirp, &timeout, add_poll, n);
    int *now = malloc((n->npfd + 1) * sizeof(int));
    if (!now)
        return;
    for (size_t i = 0; i < n->npfd; i++) {
        now[i] = n->pfd[i].fd;
        struct epoll_event e = {.events = 0, .data.fd = n->pfd[i].fd};
        if (n->pfd[i].events & POLLIN)
            e.events |= EPOLLIN;
        if (n->pfd[i].events & POLLOUT)
            e.events |= EPOLLOUT;
        if (n->pfd[i].events & POLLPRI)
            e.events |= EPOLLPRI;
        if (epoll_ctl(n->epfd, EPOLL_CTL_MOD, e.data.fd, &e) && errno == ENOENT)
            epoll_ctl(n->epfd, EPOLL_CTL_ADD, e.data.fd, &e);
    }
    qsort(now, n->npfd, sizeof(int), cmp_int);
    for (size_t i = 0; i < n->nreg; i++)
        if (!bsearch(&n->regfd[i], now, n->npfd, sizeof(int), cmp_int))
            epoll_ctl(n->epfd, EPOLL_CTL_DEL, n->regfd[i], NULL);
    free(n->regfd);
    n->regfd = now;
    n->nreg = n->npfd;
    uv_timer_start(&n->tick, on_tick, timeout > 1000 ? 1000 : timeout, 0);
}

static int64_t clock_ns(void *opaque)
{
    (void)opaque;
    return (int64_t)uv_hrtime();
}

static void guest_error(const char *msg, void *opaque)
{
    (void)msg;
    (void)opaque; /* guest misbehaviour is the guest's problem; slirp copes */
}

static void on_stimer(uv_timer_t *t)
{
    struct stimer *s = t->data;
    slirp_handle_timer(s->net->slirp, s->id, s->cb_opaque);
}

static void *timer_new_opaque(SlirpTimerId id, void *cb_opaque, void *opaque)
{
    gd_net *n = opaque;
    struct stimer *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->net = n;
    s->id = id;
    s->cb_opaque = cb_opaque;
    uv_timer_init(n->loop, &s->t);
    s->t.data = s;
    n->handles++;
    s->next = n->timers;
    n->timers = s;
    return s;
}

static void on_stimer_closed(uv_handle_t *h);

static void timer_free(void *timer, void *opaque)
{
    gd_net *n = opaque;
    struct stimer *s = timer, **pp = &n->timers;
    while (*pp && *pp != s)
        pp = &(*pp)->next;
    if (*pp)
        *pp = s->next;
    uv_close((uv_handle_t *)&s->t, on_stimer_closed);
}

static void timer_mod(void *timer, int64_t expire_ms, void *opaque)
{
    (void)opaque;
    struct stimer *s = timer;
    int64_t now = (int64_t)(uv_hrtime() / 1000000);
    uv_timer_start(&s->t, on_stimer, (uint64_t)(expire_ms > now ? expire_ms - now : 0), 0);
}

static void register_fd(int fd, void *opaque)
{
    (void)fd;
    (void)opaque;
}

static void notify(void *opaque)
{
    (void)opaque;
}

static const SlirpCb callbacks = {
    .send_packet = slirp_send,
    .guest_error = guest_error,
    .clock_get_ns = clock_ns,
    .timer_free = timer_free,
    .timer_mod = timer_mod,
    .register_poll_fd = register_fd,
    .unregister_poll_fd = register_fd,
    .notify = notify,
    .timer_new_opaque = timer_new_opaque,
};

/* ---- lifecycle ---- */

int gd_net_new(uv_loop_t *loop, const struct gd_net_opts *o, gd_net **out, int *qemu_fd,
               struct gd_err *err)
{
    gd_net *n = calloc(1, sizeof(*n));
    if (!n)
        return gd_err_set(err, -ENOMEM, "out of memory");
    n->loop = loop;
    n->o = *o;
    n->qfd = n->epfd = -1;
    n->sd.janitor_fd = -1;
    n->rx = malloc(RXBUF);
    n->names = calloc(MAX_NAMES, sizeof(char *));
    n->name_hash = calloc(MAX_NAMES * 2, sizeof(uint32_t));
    n->alias_real = calloc(MAX_ALIASES, sizeof(uint32_t));
    n->alias_name = calloc(MAX_ALIASES, sizeof(char *));
    n->alias_hash = calloc(MAX_ALIASES * 2, sizeof(uint32_t));
    n->fwds = calloc(MAX_FWDS, sizeof(struct fwd *));
    size_t nr = 0;
    while (o->resolve && o->resolve[nr])
        nr++;
    n->resolve = calloc(nr + 1, sizeof(char *));
    if (!n->rx || !n->names || !n->name_hash || !n->alias_real || !n->alias_name ||
        !n->alias_hash || !n->fwds || !n->resolve) {
        gd_net_free(n);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < nr; i++)
        n->resolve[i] = strdup(o->resolve[i]);
    int rc = gd_sockdir_create(&n->sd);
    if (rc) {
        gd_net_free(n);
        return gd_err_set(err, rc, "cannot create a private socket directory in %s: %s",
                          gd_sockdir_base(), strerror(-rc));
    }
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp)) {
        int e = errno;
        gd_net_free(n);
        return gd_err_set(err, -e, "socketpair: %s", strerror(e));
    }
    int sz = 4 << 20;
    setsockopt(sp[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    setsockopt(sp[0], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
    fcntl(sp[0], F_SETFL, O_NONBLOCK);
    n->qfd = sp[0];
    n->epfd = epoll_create1(EPOLL_CLOEXEC);

    SlirpConfig cfg = {0};
    cfg.version = 4;
    cfg.restricted = 1;
    cfg.in_enabled = true;
    cfg.vnetwork.s_addr = htonl(NET_BASE);
    cfg.vnetmask.s_addr = htonl(0xffff0000u);
    cfg.vhost.s_addr = htonl(GW_IP);
    cfg.vdhcp_start.s_addr = htonl(GUEST_IP);
    cfg.vnameserver.s_addr = htonl(DNS_IP);
    cfg.in6_enabled = false;
    cfg.disable_host_loopback = true;
    cfg.enable_emu = false;
    cfg.disable_dns = true;
    cfg.vhostname = "gondolin";
    n->slirp = slirp_new(&cfg, &callbacks, n);
    if (!n->slirp || n->epfd < 0) {
        close(sp[1]);
        gd_net_free(n);
        return gd_err_set(err, -EIO, "cannot start the user-mode network (libslirp)");
    }
    uv_poll_init(loop, &n->qpoll, n->qfd);
    n->qpoll.data = n;
    n->qpoll_open = 1;
    n->handles++;
    n->qpoll_events = UV_READABLE;
    uv_poll_start(&n->qpoll, UV_READABLE, on_qemu);
    uv_poll_init(loop, &n->eppoll, n->epfd);
    n->eppoll.data = n;
    n->eppoll_open = 1;
    n->handles++;
    uv_poll_start(&n->eppoll, UV_READABLE, on_ep);
    uv_prepare_init(loop, &n->prep);
    n->prep.data = n;
    n->prep_open = 1;
    n->handles++;
    uv_prepare_start(&n->prep, on_prepare);
    uv_timer_init(loop, &n->tick);
    n->tick.data = n;
    n->tick_open = 1;
    n->handles++;
    snprintf(n->guest_arg, sizeof(n->guest_arg),
             "gondolin.net=198.19.0.15/24,198.19.0.2,198.19.0.3");
    *qemu_fd = sp[1];
    *out = n;
    return 0;
}

const char *gd_net_guest_arg(const gd_net *n)
{
    return n->guest_arg;
}

void gd_net_stats(const gd_net *n, struct gd_net_stats *s)
{
    *s = n->st;
}

static void on_handle_closed(uv_handle_t *h)
{
    gd_net *n = h->data;
    if (--n->handles == 0 && n->close_cb)
        n->close_cb(n, n->close_ud);
}

static void on_stimer_closed(uv_handle_t *h)
{
    struct stimer *s = (struct stimer *)((char *)h - offsetof(struct stimer, t));
    gd_net *n = s->net;
    free(s);
    if (--n->handles == 0 && n->close_cb)
        n->close_cb(n, n->close_ud);
}

void gd_net_close(gd_net *n, void (*cb)(gd_net *, void *), void *ud)
{
    n->closing = 1;
    n->close_cb = cb;
    n->close_ud = ud;
    for (struct dnsreq *d = n->dns_pending; d; d = d->next)
        d->net = NULL; /* the resolver thread finishes; its callback frees it */
    n->dns_pending = NULL;
    if (n->slirp) {
        slirp_cleanup(n->slirp); /* may call timer_free */
        n->slirp = NULL;
    }
    while (n->timers) {
        struct stimer *s = n->timers;
        n->timers = s->next;
        uv_close((uv_handle_t *)&s->t, on_stimer_closed);
    }
    int pending = 0;
#define CLOSE(h, flag)                                                                             \
    if (n->flag) {                                                                                 \
        n->flag = 0;                                                                               \
        (h)->data = n;                                                                             \
        uv_close((uv_handle_t *)(h), on_handle_closed);                                            \
        pending = 1;                                                                               \
    }
    CLOSE(&n->qpoll, qpoll_open);
    CLOSE(&n->eppoll, eppoll_open);
    CLOSE(&n->prep, prep_open);
    CLOSE(&n->tick, tick_open);
    for (size_t i = 0; i < n->nfwds; i++) {
        struct fwd *w = n->fwds[i];
        if (w->open) {
            w->open = 0;
            w->poll.data = n;
            uv_close((uv_handle_t *)&w->poll, on_handle_closed);
            pending = 1;
        }
    }
#undef CLOSE
    if (!pending && n->handles == 0 && cb)
        cb(n, ud);
}

void gd_net_free(gd_net *n)
{
    if (!n)
        return;
    if (n->slirp)
        slirp_cleanup(n->slirp);
    for (size_t i = 0; n->fwds && i < n->nfwds; i++) {
        struct fwd *w = n->fwds[i];
        close(w->fd);
        free(w->name);
        free(w->dst);
        free(w->raw_host);
        free(w);
    }
    gd_sockdir_remove(&n->sd);
    for (size_t i = 0; n->names && i < n->nnames; i++)
        free(n->names[i]);
    for (size_t i = 0; n->alias_name && i < n->naliases; i++)
        free(n->alias_name[i]);
    for (char **r = n->resolve; r && *r; r++)
        free(*r);
    while (n->txh) {
        struct txbuf *b = n->txh;
        n->txh = b->next;
        free(b);
    }
    if (n->qfd >= 0)
        close(n->qfd);
    if (n->epfd >= 0)
        close(n->epfd);
    free(n->resolve);
    free(n->names);
    free(n->name_hash);
    free(n->alias_real);
    free(n->alias_name);
    free(n->alias_hash);
    free(n->fwds);
    free(n->pfd);
    free(n->regfd);
    free(n->rx);
    free(n);
}
