#!/usr/bin/env python3
"""A real upstream for the egress tests: HTTP/1.1 with keep-alive, optional TLS.

  upstream.py --port N [--tls CERT KEY] [--bind 127.0.0.1]   prints "READY <port>"

Endpoints:
  /echo            JSON: method, path, headers, body length, body sha256, connection id
  /bytes?n=N       N bytes (Content-Length)
  /chunked?n=N&k=K N bytes as K chunks (Transfer-Encoding: chunked)
  /close?n=N       N bytes, close-delimited (no length)
  /die?n=N         promises 2N bytes, sends N, then drops the connection
  /status?code=C   an empty response with status C
  /ws              WebSocket echo (text and binary frames)
  /rst?n=N[&close=1] promises 1 MiB (or no length), sends N bytes, then resets (RST)
  /sink            reads nothing of the body, answers nothing; holds the connection 60 s
  /_log            JSON list of "METHOD target host" of every request so far (not itself)
"""
import argparse, base64, hashlib, json, os, socket, ssl, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs

CONN = [0]
LOG = []
RST = set()  # connections to end with a reset: no FIN first (see Srv.shutdown_request)


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        CONN[0] += 1
        self.conn_id = CONN[0]

    def q(self):
        u = urlparse(self.path)
        return u.path, {k: v[0] for k, v in parse_qs(u.query).items()}

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                line = self.rfile.readline().strip()
                n = int(line.split(b";")[0], 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out, True
                out += self.rfile.read(n)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n), False

    def send(self, code, data, ctype="application/octet-stream", extra=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def handle_any(self):
        path, q = self.q()
        if path == "/_log":
            return self.send(200, json.dumps(LOG).encode(), "application/json")
        LOG.append(f"{self.command} {self.path} {self.headers.get('Host', '')}")
        if path == "/ws":
            return self.websocket()
        if path == "/sink":
            import time
            time.sleep(60)
            self.close_connection = True
            return
        if path == "/rst":
            self.send_response(200)
            if q.get("close"):  # close-delimited: only the reset says it failed
                self.send_header("Connection", "close")
            else:
                self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            self.wfile.write(b"r" * int(q.get("n", "100000")))
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            RST.add(self.connection)
            self.close_connection = True
            return
        data, chunked = self.body()
        if path.startswith("/echo"):
            doc = {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_len": len(data),
                "body_sha256": hashlib.sha256(data).hexdigest(),
                "chunked": chunked,
                "conn": self.conn_id,
            }
            return self.send(200, json.dumps(doc).encode(), "application/json")
        n = int(q.get("n", "0"))
        if path == "/bytes":
            return self.send(200, b"x" * n)
        if path == "/status":
            code = int(q.get("code", "200"))
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/chunked":
            k = max(1, int(q.get("k", "4")))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            left = n
            for i in range(k):
                part = left if i == k - 1 else n // k
                left -= part
                if part:
                    self.wfile.write(b"%x\r\n" % part + b"y" * part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"z" * n)
            self.close_connection = True
            return
        if path == "/die":
            self.send_response(200)
            self.send_header("Content-Length", str(2 * n))
            self.end_headers()
            self.wfile.write(b"d" * n)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.send(404, b"not found\n", "text/plain")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        acc = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", acc)
        self.end_headers()
        self.wfile.flush()
        r = self.rfile
        while True:
            h = r.read(2)
            if len(h) < 2:
                break
            op, ln = h[0] & 0x0F, h[1] & 0x7F
            if ln == 126:
                ln = int.from_bytes(r.read(2), "big")
            elif ln == 127:
                ln = int.from_bytes(r.read(8), "big")
            mask = r.read(4) if h[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(r.read(ln)))
            if op == 8:
                self.wfile.write(b"\x88\x00")
                break
            hdr = bytes([0x80 | op])
            hdr += bytes([len(data)]) if len(data) < 126 else b"\x7e" + len(data).to_bytes(2, "big")
            self.wfile.write(hdr + data)
            self.wfile.flush()
        self.close_connection = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--tls", nargs=2)
    a = ap.parse_args()
    class Srv(ThreadingHTTPServer):
        request_queue_size = 256  # the default 5 drops SYNs of concurrent tests (1 s retries)

        def shutdown_request(self, request):
            if request in RST:  # the stock one sends a FIN (SHUT_WR) before closing
                RST.discard(request)
                self.close_request(request)
                return
            super().shutdown_request(request)
    srv = Srv((a.bind, a.port), H)
    srv.daemon_threads = True
    if a.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls[0], a.tls[1])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("READY", srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
