/*
 * dns.h - the guest's DNS, answered by the host. Pure packet functions (no I/O): the
 * network layer feeds them UDP payloads from the guest and sends back what they build.
 *
 * Queries are accepted only in their plain form: QR=0, opcode QUERY, 1..16 questions,
 * no answer/authority records, no compression pointers (a query has no reason to use
 * them, and refusing them removes pointer loops). Only the first question is answered.
 */
#ifndef GD_DNS_H
#define GD_DNS_H

#include <stddef.h>
#include <stdint.h>

enum { GD_DNS_A = 1, GD_DNS_AAAA = 28 };
enum {
    GD_DNS_NOERROR = 0,
    GD_DNS_FORMERR = 1,
    GD_DNS_SERVFAIL = 2,
    GD_DNS_NXDOMAIN = 3,
    GD_DNS_NOTIMP = 4,
    GD_DNS_REFUSED = 5
};

struct gd_dns_q {
    uint16_t id, flags;
    char name[256]; /* lowercase, dotted, no trailing dot; "" for the root */
    uint16_t qtype, qclass;
    size_t qend; /* offset just past the first question */
};

/* 0: a query we answer; -1: malformed but has a header (reply FORMERR); -2: drop
 * (shorter than a header, or a response). */
int gd_dns_parse(const uint8_t *p, size_t n, struct gd_dns_q *q);

/* Builds a reply to q (whose packet is `pkt`) with rcode and the given A/AAAA records
 * (network byte order). Returns its length, or 0 if it does not fit in cap. */
size_t gd_dns_reply(const uint8_t *pkt, const struct gd_dns_q *q, int rcode, const uint8_t (*a4)[4],
                    size_t n4, const uint8_t (*a6)[16], size_t n6, uint32_t ttl, uint8_t *out,
                    size_t cap);

/* FORMERR for a packet that has at least a header: id copied, no question. */
size_t gd_dns_formerr(const uint8_t *pkt, size_t n, uint8_t *out, size_t cap);

#endif
