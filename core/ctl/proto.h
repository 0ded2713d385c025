/*
 * proto.h - the gondolin control-channel wire format (see docs/protocol.md).
 *
 * Shared verbatim by the host (core/) and the guest agent (guest/sandboxd), so it
 * depends on libc only. Encoders write into caller-owned buffers; decoders borrow
 * the frame they parse and never allocate. Every decoder validates every length
 * against the frame it was given: malformed input yields a negative errno
 * (-EBADMSG, -EMSGSIZE, -EPROTO), never a read out of bounds.
 */
#ifndef GD_PROTO_H
#define GD_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define GD_PROTO_MAJOR 1
#define GD_PROTO_MINOR 3

#define GD_PROTO_HDR_LEN 12u
/* Largest body a peer may send; a bigger length field is a protocol error. */
#define GD_PROTO_MAX_BODY (1u << 20)
/* Largest data chunk in one OUTPUT or STDIN frame. */
#define GD_PROTO_MAX_CHUNK (64u * 1024u)
/* Limits on an EXEC request. */
#define GD_PROTO_MAX_ARGS 4096u
#define GD_PROTO_MAX_STR (256u * 1024u)

enum gd_msg_type {
    GD_MSG_HELLO = 1,        /* both: version handshake, guest speaks first */
    GD_MSG_EXEC = 2,         /* h->g: start a process */
    GD_MSG_STARTED = 3,      /* g->h: process started, pid */
    GD_MSG_STDIN = 4,        /* h->g: stdin bytes (flag EOF) */
    GD_MSG_STDIN_WINDOW = 5, /* g->h: stdin credit grant */
    GD_MSG_OUTPUT = 6,       /* g->h: stdout/stderr bytes (flags = stream) */
    GD_MSG_WINDOW = 7,       /* h->g: stdout/stderr credit grant */
    GD_MSG_RESIZE = 8,       /* h->g: pty window size */
    GD_MSG_SIGNAL = 9,       /* h->g: deliver a signal to the process group */
    GD_MSG_EXIT = 10,        /* g->h: process ended (terminal) */
    GD_MSG_ERROR = 11,       /* both: error; terminal for the session it names */
    GD_MSG_PING = 12,        /* h->g: echo request */
    GD_MSG_PONG = 13,        /* g->h: echo reply */
    GD_MSG_SHUTDOWN = 14,    /* h->g: sync and power off */
    GD_MSG_RESUME = 15,      /* h->g: restored from a snapshot (1.2): reseed, set the clock,
                                answer with a new HELLO */
    GD_MSG_TYPE_MAX = 15,
};

/* EXEC flags */
#define GD_EXEC_PTY 0x1u   /* run on a pseudo-terminal (stdout carries both streams) */
#define GD_EXEC_STDIN 0x2u /* host will stream stdin; else stdin is /dev/null */
#define GD_EXEC_SHELL 0x4u /* argv[0] is a string for /bin/sh -lc */
/* No process: a TCP connection to the guest's loopback, port argv[0] (decimal), is the
 * session's stdin and stdout (protocol 1.1). Implies STDIN; not with PTY or SHELL. */
#define GD_EXEC_CONNECT 0x8u

/* STDIN flags */
#define GD_STDIN_EOF 0x1u

/* OUTPUT flags: the stream */
#define GD_STREAM_STDOUT 1u
#define GD_STREAM_STDERR 2u

/* ERROR codes */
enum gd_err_code {
    GD_ERR_INVALID = 1,     /* malformed or unexpected message */
    GD_ERR_EXEC_FAILED = 2, /* could not start the process (message says why) */
    GD_ERR_UNKNOWN_ID = 3,  /* message for a session that does not exist */
    GD_ERR_BUSY = 4,        /* too many sessions, or a duplicate id */
    GD_ERR_VERSION = 5,     /* incompatible protocol major version */
    GD_ERR_INTERNAL = 6,
};

struct gd_hdr {
    uint32_t len; /* body length, excluding the 12-byte header */
    uint8_t type;
    uint8_t flags;
    uint16_t rsvd;
    uint32_t id; /* session id; 0 = the channel itself */
};

struct gd_str {
    const char *p; /* borrowed, not NUL-terminated */
    uint32_t len;
};

struct gd_msg_hello {
    uint16_t major, minor;
    uint32_t features;
    struct gd_str agent;
};

/* Decoded EXEC. argv/env strings are borrowed from the frame: the decoder stores up
 * to `cap` entries in the caller's arrays and fails with -E2BIG beyond that. */
struct gd_msg_exec {
    uint32_t flags;
    uint32_t stdout_window, stderr_window;
    uint16_t rows, cols;
    uint32_t argc, envc;
    struct gd_str *argv, *env;
    struct gd_str cwd;
};

/* RESUME: the host's wall clock and fresh random bytes. Sent as the first frame after
 * a VM was restored from a memory snapshot (and after a snapshot was saved from a
 * running one): the agent mixes the bytes into the kernel's entropy pool, forces a CRNG
 * reseed, sets CLOCK_REALTIME, then says HELLO again. */
#define GD_RESUME_MIN_ENTROPY 32u
#define GD_RESUME_MAX_ENTROPY 512u
/* RESUME flags (1.3): the guest was resumed by a host other than the one that ran it
 * (a memory snapshot of a session): the agent drops its exec sessions (their processes
 * run on; a pty keeps its terminal), sends PONG(id 0, token) and then HELLO. Every
 * byte before that PONG belongs to the old host and is skipped by the new one. */
#define GD_RESUME_NEW_HOST 0x1u
#define GD_RESUME_TOKEN_LEN 16u

struct gd_msg_resume {
    uint32_t flags; /* 0 or GD_RESUME_NEW_HOST */
    uint64_t realtime_ns;
    const uint8_t *token;   /* NEW_HOST: GD_RESUME_TOKEN_LEN bytes after the clock, else NULL */
    const uint8_t *entropy; /* borrowed */
    uint32_t entropy_len;   /* GD_RESUME_MIN_ENTROPY..GD_RESUME_MAX_ENTROPY */
};

struct gd_msg_exit {
    int32_t code;
    uint32_t signal; /* nonzero when the process was killed by a signal */
};

struct gd_msg_error {
    uint32_t code;
    struct gd_str message;
};

/* Framing. gd_hdr_parse checks a full 12-byte header: known type, zero reserved
 * field, len <= GD_PROTO_MAX_BODY. Returns 0 or -EPROTO / -EMSGSIZE. */
int gd_hdr_parse(const uint8_t *buf, struct gd_hdr *out);
void gd_hdr_write(uint8_t *buf, uint8_t type, uint8_t flags, uint32_t id, uint32_t len);

/* A growable-by-caller encoder: writes into [buf, buf+cap). After encoding, `err`
 * is nonzero if anything did not fit; `len` counts the bytes written. */
struct gd_enc {
    uint8_t *buf;
    size_t cap, len;
    int err;
};
void gd_enc_init(struct gd_enc *e, uint8_t *buf, size_t cap, uint8_t type, uint8_t flags,
                 uint32_t id);
void gd_enc_u16(struct gd_enc *e, uint16_t v);
void gd_enc_u32(struct gd_enc *e, uint32_t v);
void gd_enc_bytes(struct gd_enc *e, const void *p, size_t n);
void gd_enc_str(struct gd_enc *e, const char *s, size_t n);
/* Patches the header length; returns total frame length or -EMSGSIZE. */
long gd_enc_finish(struct gd_enc *e);

/* Body decoders: `body` is the frame body (after the header), `len` its length. */
int gd_dec_hello(const uint8_t *body, uint32_t len, struct gd_msg_hello *out);
int gd_dec_exec(const uint8_t *body, uint32_t len, struct gd_msg_exec *out, uint32_t cap);
int gd_dec_u32(const uint8_t *body, uint32_t len, uint32_t *out);
int gd_dec_u32x2(const uint8_t *body, uint32_t len, uint32_t *a, uint32_t *b);
int gd_dec_resize(const uint8_t *body, uint32_t len, uint16_t *rows, uint16_t *cols);
int gd_dec_resume(const uint8_t *body, uint32_t len, struct gd_msg_resume *out);
int gd_dec_exit(const uint8_t *body, uint32_t len, struct gd_msg_exit *out);
int gd_dec_error(const uint8_t *body, uint32_t len, struct gd_msg_error *out);
/* A CONNECT session's port: decimal digits only, 1..65535. 0 or -EBADMSG. */
int gd_dec_port(const struct gd_str *s, uint16_t *port);

/* Incremental frame reader over a fixed buffer (no allocation after init).
 * Feed bytes in; take complete frames out. A bad header poisons the reader:
 * every later call returns the same error. */
struct gd_reader {
    uint8_t *buf;
    size_t cap, len, off;
    int err;
};
/* buf must hold GD_PROTO_HDR_LEN + GD_PROTO_MAX_BODY bytes. */
void gd_reader_init(struct gd_reader *r, uint8_t *buf, size_t cap);
/* Space to read into: returns pointer and sets *room (compacts first). */
uint8_t *gd_reader_space(struct gd_reader *r, size_t *room);
void gd_reader_commit(struct gd_reader *r, size_t n);
/* Returns 1 and fills hdr/body for a complete frame, 0 if more bytes are needed,
 * or a negative errno (sticky) for a malformed frame. */
int gd_reader_next(struct gd_reader *r, struct gd_hdr *hdr, const uint8_t **body);
/* Skips buffered bytes up to and including the first occurrence of mark (n bytes, 1 <=
 * n <= 64): 1 when found (frames resume right after it), 0 when not yet (all but the
 * last n - 1 bytes are dropped, so the buffer never fills). */
int gd_reader_skip_to(struct gd_reader *r, const uint8_t *mark, size_t n);

const char *gd_msg_type_name(unsigned type);

#endif
