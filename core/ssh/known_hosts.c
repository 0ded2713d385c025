/* known_hosts.c - OpenSSH known_hosts files (see ssh.h and docs/ssh.md).
 *
 * A file is parsed once into entries (marker, patterns or hashed salt+hash, key type,
 * decoded key blob); a check walks every entry. Lines are skipped, never fatal: the files
 * are written by people and tools we do not control, and one bad line must not hide the
 * others (OpenSSH does the same). Written from the format as sshd(8) documents it. */
#include "ssh/ssh.h"
#include "ssh/ssh_int.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fs.h"

#define SHA1_LEN 20
#define MAX_BLOB (16u * 1024) /* a 16384-bit RSA key is ~2 KiB */

/* The name of each gd_ssh_key_type, in bit order (type 1 << i is key_names[i]). */
static const char *const key_names[] = {"ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                                        "ecdsa-sha2-nistp521", "ssh-rsa"};
#define N_KEY_TYPES (sizeof(key_names) / sizeof(key_names[0]))

static int key_type_n(const char *s, size_t n)
{
    for (size_t i = 0; i < N_KEY_TYPES; i++)
        if (strlen(key_names[i]) == n && !memcmp(key_names[i], s, n))
            return 1 << i;
    return 0;
}

int gd_ssh_key_type_parse(const char *name)
{
    return name ? key_type_n(name, strlen(name)) : 0;
}

const char *gd_ssh_key_type_name(int type)
{
    for (size_t i = 0; i < N_KEY_TYPES; i++)
        if (type == 1 << i)
            return key_names[i];
    return "";
}

static int b64_val(unsigned char c)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = c ? memchr(alphabet, c, 64) : NULL;
    return p ? (int)(p - alphabet) : -1;
}

long gd_ssh_base64_decode(const char *in, size_t len, unsigned char *out, size_t cap)
{
    if (len % 4)
        return -EINVAL;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4], pad = 0;
        for (int j = 0; j < 4; j++) {
            unsigned char c = (unsigned char)in[i + j];
            /* '=' only in the last group, only in its last two places, and only
             * followed by '=' */
            if (c == '=' && i + 4 == len && j >= 2 && (j == 3 || in[i + 3] == '=')) {
                v[j] = 0;
                pad++;
                continue;
            }
            if ((v[j] = b64_val(c)) < 0)
                return -EINVAL;
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        /* the bits that padding leaves unused must be zero (one spelling per blob) */
        if ((pad == 1 && (w & 0xff)) || (pad == 2 && (w & 0xffff)))
            return -EINVAL;
        size_t k = 3 - (size_t)pad;
        if (cap - o < k)
            return -ENOSPC;
        unsigned char b[3] = {(unsigned char)(w >> 16), (unsigned char)(w >> 8), (unsigned char)w};
        memcpy(out + o, b, k);
        o += k;
    }
    return (long)o;
}

int gd__ssh_glob(const char *p, size_t pl, const char *s, size_t sl, int fold)
{
    size_t pi = 0, si = 0, star_p = (size_t)-1, star_s = 0;
    while (si < sl) {
        if (pi < pl && p[pi] == '*') {
            star_p = pi++;
            star_s = si;
            continue;
        }
        if (pi < pl) {
            unsigned char a = (unsigned char)p[pi], b = (unsigned char)s[si];
            if (fold && a >= 'A' && a <= 'Z')
                a = (unsigned char)(a - 'A' + 'a');
            if (fold && b >= 'A' && b <= 'Z')
                b = (unsigned char)(b - 'A' + 'a');
            if (a == '?' || a == b) {
                pi++;
                si++;
                continue;
            }
        }
        if (star_p == (size_t)-1)
            return 0;
        pi = star_p + 1;
        si = ++star_s;
    }
    while (pi < pl && p[pi] == '*')
        pi++;
    return pi == pl;
}

struct kh_entry {
    unsigned char revoked, hashed;
    int type;
    unsigned file, line;
    unsigned char salt[SHA1_LEN], hash[SHA1_LEN];
    char *patterns; /* plain entries: the comma-separated list, NUL-terminated */
    unsigned char *blob;
    size_t blob_len;
};

struct gd_ssh_known_hosts {
    struct kh_entry *e;
    size_t n, cap;
    char **files;
    size_t nfiles;
    size_t total, skipped, nnotes;
    char notes[GD_SSH_KH_MAX_NOTES][512]; /* a longer note is cut */
};

gd_ssh_known_hosts *gd_ssh_known_hosts_new(void)
{
    return calloc(1, sizeof(gd_ssh_known_hosts));
}

static void entries_drop(gd_ssh_known_hosts *kh, size_t from)
{
    for (size_t i = from; i < kh->n; i++)
        free(kh->e[i].blob); /* patterns share the allocation */
    kh->n = from;
}

void gd_ssh_known_hosts_free(gd_ssh_known_hosts *kh)
{
    if (!kh)
        return;
    entries_drop(kh, 0);
    free(kh->e);
    for (size_t i = 0; i < kh->nfiles; i++)
        free(kh->files[i]);
    free(kh->files);
    free(kh);
}

size_t gd_ssh_known_hosts_skipped(const gd_ssh_known_hosts *kh)
{
    return kh->skipped;
}

const char *gd_ssh_known_hosts_note(const gd_ssh_known_hosts *kh, size_t i)
{
    return i < kh->nnotes ? kh->notes[i] : NULL;
}

static void skip_note(gd_ssh_known_hosts *kh, unsigned file, unsigned line, const char *why)
{
    kh->skipped++;
    if (kh->nnotes >= GD_SSH_KH_MAX_NOTES)
        return;
    char raw[sizeof(kh->notes[0])];
    snprintf(raw, sizeof(raw), "%s:%u: %s", kh->files[file], line, why);
    gd_sanitize(kh->notes[kh->nnotes++], sizeof(kh->notes[0]), raw, strlen(raw));
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t';
}

/* The next whitespace-separated token of [*s, end), or 0 when there is none. */
static size_t token(const char **s, const char *end, const char **tok)
{
    const char *p = *s;
    while (p < end && is_ws(*p))
        p++;
    const char *t = p;
    while (p < end && !is_ws(*p))
        p++;
    *tok = t;
    *s = p;
    return (size_t)(p - t);
}

/* "|1|base64(salt)|base64(hash)", both 20 bytes. */
static int parse_hashed(const char *s, size_t n, struct kh_entry *e)
{
    if (n < 3 || memcmp(s, "|1|", 3))
        return -EINVAL;
    const char *salt = s + 3, *bar = memchr(salt, '|', n - 3);
    if (!bar)
        return -EINVAL;
    size_t sl = (size_t)(bar - salt), hl = n - 3 - sl - 1;
    if (gd_ssh_base64_decode(salt, sl, e->salt, sizeof(e->salt)) != SHA1_LEN ||
        gd_ssh_base64_decode(bar + 1, hl, e->hash, sizeof(e->hash)) != SHA1_LEN)
        return -EINVAL;
    e->hashed = 1;
    return 0;
}

int gd__ssh_each(const char *s, size_t n, char sep, int (*ok)(const char *p, size_t l))
{
    size_t start = 0;
    for (size_t i = 0; i <= n; i++)
        if (i == n || s[i] == sep) {
            if (!ok(s + start, i - start))
                return 0;
            start = i + 1;
        }
    return 1;
}

/* A host pattern is non-empty, also after a '!'. */
static int pattern_ok(const char *p, size_t l)
{
    return l > (size_t)(l && p[0] == '!');
}

/* The wire-format public key (RFC 4253 6.6, RFC 5656 3.1, RFC 8709 4) is a run of SSH
 * strings that must use up the blob exactly: the type, then for ed25519 the 32-byte key,
 * for ECDSA the curve name matching the type and the point, for RSA e and n. A truncated
 * or padded key is refused, not taken for another key. */
static int blob_type_ok(const unsigned char *b, size_t n, int type)
{
    const unsigned char *f[4];
    size_t fl[4], nf = 0;
    for (size_t o = 0; o < n; nf++) {
        if (nf == 4 || n - o < 4)
            return 0;
        uint32_t l =
            (uint32_t)b[o] << 24 | (uint32_t)b[o + 1] << 16 | (uint32_t)b[o + 2] << 8 | b[o + 3];
        o += 4;
        if (l > n - o)
            return 0;
        f[nf] = b + o;
        fl[nf] = l;
        o += l;
    }
    const char *name = gd_ssh_key_type_name(type);
    if (!nf || fl[0] != strlen(name) || memcmp(f[0], name, fl[0]))
        return 0;
    switch (type) {
    case GD_SSH_KEY_ED25519:
        return nf == 2 && fl[1] == 32;
    case GD_SSH_KEY_RSA:
        return nf == 3 && fl[1] && fl[2];
    default: /* "ecdsa-sha2-" + curve */
        return nf == 3 && fl[1] == fl[0] - 11 && !memcmp(f[1], name + 11, fl[1]) && fl[2];
    }
}

/* One line (without its '\n'): 0 when added or ignored, -ENOMEM, or 1 with *why set when
 * skipped. */
static int parse_line(gd_ssh_known_hosts *kh, unsigned file, unsigned lineno, const char *s,
                      size_t n, char *why, size_t why_cap)
{
    if (n && s[n - 1] == '\r') /* CRLF files */
        n--;
    const char *end = s + n, *tok;
    size_t tl;
    if (!(tl = token(&s, end, &tok)) || tok[0] == '#')
        return 0; /* blank or a comment, whatever it holds */
    for (const char *p = tok; p < end; p++)
        if (((unsigned char)*p < 0x20 && *p != '\t') || *p == 0x7f) {
            snprintf(why, why_cap, "control byte 0x%02x in line", (unsigned char)*p);
            return 1;
        }
    struct kh_entry e = {.file = file, .line = lineno};
    if (tok[0] == '@') {
        if (tl == 15 && !memcmp(tok, "@cert-authority", 15))
            return 0; /* a CA for host certificates, not a host key: not used */
        if (tl != 8 || memcmp(tok, "@revoked", 8)) {
            snprintf(why, why_cap, "unknown marker (expected @revoked or @cert-authority)");
            return 1;
        }
        e.revoked = 1;
        tl = token(&s, end, &tok);
    }
    const char *pat = tok;
    size_t pl = tl;
    if (!pl) {
        snprintf(why, why_cap, "no host patterns");
        return 1;
    }
    if (pat[0] == '|') {
        if (parse_hashed(pat, pl, &e)) {
            snprintf(why, why_cap, "malformed hashed host (expected |1|SALT|HASH)");
            return 1;
        }
    } else if (!gd__ssh_each(pat, pl, ',', pattern_ok)) {
        snprintf(why, why_cap, "empty host pattern");
        return 1;
    }
    if (!(tl = token(&s, end, &tok))) {
        snprintf(why, why_cap, "no key type");
        return 1;
    }
    if (!(e.type = key_type_n(tok, tl))) {
        snprintf(why, why_cap, "unsupported key type '%.*s'", (int)(tl > 40 ? 40 : tl), tok);
        return 1;
    }
    if (!(tl = token(&s, end, &tok))) {
        snprintf(why, why_cap, "no key");
        return 1;
    }
    /* the rest is a comment */
    size_t alloc = (tl / 4) * 3 + (e.hashed ? 0 : pl + 1);
    unsigned char *mem = malloc(alloc ? alloc : 1);
    if (!mem)
        return -ENOMEM;
    long bl = gd_ssh_base64_decode(tok, tl, mem, tl > 4 * (MAX_BLOB / 3) ? 0 : (tl / 4) * 3);
    if (bl < 0 || !blob_type_ok(mem, (size_t)bl, e.type)) {
        free(mem);
        snprintf(why, why_cap,
                 bl == -ENOSPC ? "key longer than %u bytes"
                 : bl < 0      ? "key is not valid base64"
                               : "key data is not a well-formed key of its type",
                 MAX_BLOB);
        return 1;
    }
    e.blob = mem;
    e.blob_len = (size_t)bl;
    if (!e.hashed) {
        e.patterns = (char *)mem + (tl / 4) * 3;
        memcpy(e.patterns, pat, pl);
        e.patterns[pl] = 0;
    }
    if (kh->n == kh->cap) {
        size_t cap = kh->cap ? kh->cap * 2 : 16;
        struct kh_entry *ne = realloc(kh->e, cap * sizeof(*ne));
        if (!ne) {
            free(mem);
            return -ENOMEM;
        }
        kh->e = ne;
        kh->cap = cap;
    }
    kh->e[kh->n++] = e;
    return 0;
}

int gd_ssh_known_hosts_add(gd_ssh_known_hosts *kh, const char *name, const char *buf, size_t len,
                           struct gd_err *err)
{
    if (len > GD_SSH_KH_MAX_FILE)
        return gd_err_set(err, -EFBIG, "%s: larger than %u bytes", name, GD_SSH_KH_MAX_FILE);
    if (len > GD_SSH_KH_MAX_TOTAL - kh->total)
        return gd_err_set(err, -EFBIG, "%s: known_hosts files hold more than %u bytes together",
                          name, GD_SSH_KH_MAX_TOTAL);
    char **files = realloc(kh->files, (kh->nfiles + 1) * sizeof(*files));
    if (!files)
        return gd_err_set(err, -ENOMEM, "%s: out of memory", name);
    kh->files = files;
    if (!(files[kh->nfiles] = strdup(name)))
        return gd_err_set(err, -ENOMEM, "%s: out of memory", name);
    unsigned file = (unsigned)kh->nfiles++;
    size_t first = kh->n, skipped = kh->skipped;
    unsigned lineno = 0;
    char why[128];
    for (size_t off = 0; off < len;) {
        const char *nl = memchr(buf + off, '\n', len - off);
        size_t l = nl ? (size_t)(nl - (buf + off)) : len - off;
        lineno++;
        if (l > GD_SSH_KH_MAX_LINE) {
            skip_note(kh, file, lineno, "line longer than 65536 bytes");
        } else {
            int rc = parse_line(kh, file, lineno, buf + off, l, why, sizeof(why));
            if (rc < 0) {
                entries_drop(kh, first);
                kh->skipped = skipped;
                free(files[--kh->nfiles]);
                return gd_err_set(err, rc, "%s: out of memory", name);
            }
            if (rc)
                skip_note(kh, file, lineno, why);
        }
        off += l + 1;
    }
    kh->total += len;
    return 0;
}

int gd_ssh_known_hosts_load(gd_ssh_known_hosts *kh, const char *path, struct gd_err *err)
{
    char *buf;
    size_t n;
    int rc = gd_read_file(path, GD_SSH_KH_MAX_FILE, &buf, &n);
    if (rc == -EFBIG)
        return gd_err_set(err, rc, "%s: larger than %u bytes", path, GD_SSH_KH_MAX_FILE);
    if (rc)
        return gd_err_set(err, rc, "%s: %s", path, strerror(-rc));
    rc = gd_ssh_known_hosts_add(kh, path, buf, n, err);
    free(buf);
    return rc;
}

/* A plain entry's list: some pattern matches and no negated one does. */
static int plain_match(const char *list, const char *hs, size_t hl)
{
    int pos = 0;
    for (const char *p = list; *p;) {
        const char *c = strchr(p, ',');
        size_t l = c ? (size_t)(c - p) : strlen(p);
        int neg = *p == '!';
        if (gd__ssh_glob(p + neg, l - (size_t)neg, hs, hl, 1)) {
            if (neg)
                return 0;
            pos = 1;
        }
        p += l + (c ? 1 : 0);
    }
    return pos;
}

static int hashed_match(const struct kh_entry *e, const char *hs, size_t hl)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int ml = 0;
    if (!HMAC(EVP_sha1(), e->salt, SHA1_LEN, (const unsigned char *)hs, hl, mac, &ml) ||
        ml != SHA1_LEN)
        return 0;
    return !CRYPTO_memcmp(mac, e->hash, SHA1_LEN);
}

int gd_ssh_known_hosts_check(const gd_ssh_known_hosts *kh, const char *host, unsigned port,
                             const char *key_type, const unsigned char *blob, size_t blob_len,
                             struct gd_ssh_kh_result *res)
{
    int type = gd_ssh_key_type_parse(key_type);
    size_t len = host ? strlen(host) : 0;
    if (!type || !len || len > GD_SSH_KH_MAX_HOST || !port || port > 65535)
        return -EINVAL;
    /* OpenSSH looks hosts up lowercased, "[host]:port" unless the port is 22 */
    char hs[GD_SSH_KH_MAX_HOST + 16];
    size_t hl = 0;
    if (port != 22)
        hs[hl++] = '[';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)host[i];
        if (c <= 0x20 || c == 0x7f || c == ',')
            return -EINVAL;
        hs[hl++] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    if (port != 22)
        hl += (size_t)snprintf(hs + hl, sizeof(hs) - hl, "]:%u", port);
    hs[hl] = 0;

    const struct kh_entry *known = NULL, *changed = NULL;
    unsigned types = 0;
    for (size_t i = 0; i < kh->n; i++) {
        const struct kh_entry *e = &kh->e[i];
        int same = e->type == type && e->blob_len == blob_len && !memcmp(e->blob, blob, blob_len);
        if (e->revoked) {
            /* stricter than OpenSSH, which applies @revoked to the hosts the line names:
             * a revoked key is refused for every host */
            if (same) {
                *res = (struct gd_ssh_kh_result){GD_SSH_KH_REVOKED, kh->files[e->file], e->line, 0};
                return 0;
            }
            continue;
        }
        if (!(e->hashed ? hashed_match(e, hs, hl) : plain_match(e->patterns, hs, hl)))
            continue;
        types |= (unsigned)e->type;
        if (same && !known)
            known = e;
        else if (e->type == type && !same && !changed)
            changed = e;
    }
    const struct kh_entry *d = known ? known : changed;
    *res = (struct gd_ssh_kh_result){known     ? GD_SSH_KH_KNOWN
                                     : changed ? GD_SSH_KH_CHANGED
                                               : GD_SSH_KH_UNKNOWN,
                                     d ? kh->files[d->file] : NULL, d ? d->line : 0, types};
    return 0;
}
