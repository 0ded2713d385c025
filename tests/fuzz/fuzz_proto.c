/* libFuzzer target: every parser of guest input, fed arbitrary bytes.
 * (1) the frame reader and each body decoder; (2) the host channel itself, through
 * gd_vm_inject on a live (fake) VM. Build with clang: cmake -DCMAKE_C_COMPILER=clang. */
#include "ctl/proto.h"
#include "vm/vm.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void decode_all(const uint8_t *d, size_t n)
{
    static struct gd_str av[64], ev[64];
    struct gd_msg_exec m = {.argv = av, .env = ev};
    struct gd_msg_hello h;
    struct gd_msg_exit x;
    struct gd_msg_error e;
    uint32_t a, b;
    uint16_t r, c;
    uint32_t len = (uint32_t)(n > GD_PROTO_MAX_BODY ? GD_PROTO_MAX_BODY : n);
    gd_dec_exec(d, len, &m, 64);
    gd_dec_hello(d, len, &h);
    gd_dec_exit(d, len, &x);
    gd_dec_error(d, len, &e);
    gd_dec_u32(d, len, &a);
    gd_dec_u32x2(d, len, &a, &b);
    gd_dec_resize(d, len, &r, &c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t *rb;
    if (!rb)
        rb = malloc(GD_PROTO_HDR_LEN + GD_PROTO_MAX_BODY);
    struct gd_reader rd;
    gd_reader_init(&rd, rb, GD_PROTO_HDR_LEN + GD_PROTO_MAX_BODY);
    size_t off = 0;
    while (off < size) {
        size_t room;
        uint8_t *p = gd_reader_space(&rd, &room);
        size_t k = size - off < room ? size - off : room;
        if (k > 7)
            k = 7 + (data[off] & 63); /* vary chunking */
        if (k > size - off)
            k = size - off;
        memcpy(p, data + off, k);
        gd_reader_commit(&rd, k);
        off += k;
        struct gd_hdr h;
        const uint8_t *body;
        int rc;
        while ((rc = gd_reader_next(&rd, &h, &body)) == 1)
            decode_all(body, h.len);
        if (rc < 0)
            break;
    }
    decode_all(data, size);

    /* the host channel: a fake VM, a valid HELLO, then the fuzz bytes as guest output */
    uv_loop_t loop;
    uv_loop_init(&loop);
    int sp[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
    gd_vm *vm;
    if (gd__vm_attach_fd(&loop, sp[0], &vm, NULL, NULL, NULL) == 0) {
        uint8_t hello[64];
        struct gd_enc e;
        gd_enc_init(&e, hello, sizeof(hello), GD_MSG_HELLO, 0, 0);
        gd_enc_u16(&e, GD_PROTO_MAJOR);
        gd_enc_u16(&e, GD_PROTO_MINOR);
        gd_enc_u32(&e, 0);
        gd_enc_str(&e, "f", 1);
        gd_vm_inject(vm, hello, (size_t)gd_enc_finish(&e));
        static const char *argv[] = {"x", NULL};
        struct gd_exec_opts o = {.argv = argv, .window = 64};
        struct gd_exec_cbs cbs = {0};
        gd_exec_start(vm, &o, &cbs, NULL, NULL);
        /* and a tunnel (session 2): its frames take the same paths */
        struct gd_exec_opts t = {.connect_port = 8000, .window = 64};
        gd_exec_start(vm, &t, &cbs, NULL, NULL);
        gd_vm_inject(vm, data, size);
        gd_vm_close(vm);
        uv_run(&loop, UV_RUN_DEFAULT);
        gd_vm_free(vm);
    }
    close(sp[1]);
    uv_loop_close(&loop);
    return 0;
}
