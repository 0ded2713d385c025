/* dns.c - DNS query parsing and reply building (see dns.h). */
#include "dns/dns.h"

#include <string.h>

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

int gd_dns_parse(const uint8_t *p, size_t n, struct gd_dns_q *q)
{
    memset(q, 0, sizeof(*q));
    if (n < 12)
        return -2;
    q->id = rd16(p);
    q->flags = rd16(p + 2);
    if (q->flags & 0x8000)
        return -2; /* a response: never answer those */
    uint16_t qd = rd16(p + 4), an = rd16(p + 6), ns = rd16(p + 8);
    if ((q->flags >> 11 & 0xf) != 0 || qd < 1 || qd > 16 || an || ns)
        return -1;
    size_t off = 12, k = 0;
    for (;;) {
        if (off >= n)
            return -1;
        uint8_t l = p[off++];
        if (!l)
            break;
        if (l & 0xc0)
            return -1; /* compression pointer or reserved label type */
        if (off + l > n || k + l + 1 > 253)
            return -1;
        if (k)
            q->name[k++] = '.';
        for (uint8_t i = 0; i < l; i++) {
            uint8_t c = p[off + i];
            if (c >= 'A' && c <= 'Z')
                c = (uint8_t)(c + 32);
            /* names we can put in a Host header; anything else is not ours to answer */
            if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
                return -1;
            q->name[k++] = (char)c;
        }
        off += l;
    }
    q->name[k] = 0;
    if (off + 4 > n)
        return -1;
    q->qtype = rd16(p + off);
    q->qclass = rd16(p + off + 2);
    q->qend = off + 4;
    return 0;
}

size_t gd_dns_reply(const uint8_t *pkt, const struct gd_dns_q *q, int rcode, const uint8_t (*a4)[4],
                    size_t n4, const uint8_t (*a6)[16], size_t n6, uint32_t ttl, uint8_t *out,
                    size_t cap)
{
    size_t need = q->qend + n4 * 16 + n6 * 28;
    if (need > cap || q->qend < 12)
        return 0;
    memcpy(out, pkt, q->qend);
    /* QR, opcode 0, AA, RD copied, RA */
    wr16(out + 2, (uint16_t)(0x8000 | 0x0400 | (q->flags & 0x0100) | 0x0080 | (rcode & 0xf)));
    wr16(out + 4, 1);
    wr16(out + 6, (uint16_t)(n4 + n6));
    wr16(out + 8, 0);
    wr16(out + 10, 0);
    size_t off = q->qend;
    for (size_t i = 0; i < n4 + n6; i++) {
        int v6 = i >= n4;
        wr16(out + off, 0xc00c); /* the name of the first question */
        wr16(out + off + 2, v6 ? GD_DNS_AAAA : GD_DNS_A);
        wr16(out + off + 4, 1);
        wr16(out + off + 6, (uint16_t)(ttl >> 16));
        wr16(out + off + 8, (uint16_t)ttl);
        wr16(out + off + 10, v6 ? 16 : 4);
        memcpy(out + off + 12, v6 ? a6[i - n4] : a4[i], v6 ? 16 : 4);
        off += 12 + (v6 ? 16 : 4);
    }
    return off;
}

size_t gd_dns_formerr(const uint8_t *pkt, size_t n, uint8_t *out, size_t cap)
{
    if (n < 12 || cap < 12)
        return 0;
    memset(out, 0, 12);
    out[0] = pkt[0];
    out[1] = pkt[1];
    wr16(out + 2, (uint16_t)(0x8000 | (rd16(pkt + 2) & 0x0100) | GD_DNS_FORMERR));
    return 12;
}
