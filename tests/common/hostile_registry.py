#!/usr/bin/env python3
"""A hostile "registry" on loopback for stagehand's tests.

Usage: hostile_registry.py MODE LOGFILE [CERT KEY]
Prints the port it listens on (one line), then serves until killed.
Every request line is appended to LOGFILE, so a test can check what was
asked and what was not.

Modes:
  endless_manifest  a manifest body that never ends (no Content-Length)
  trickle           a manifest body sent one byte a second
  http_realm        401 with a Bearer realm on plain http off loopback
  redirect_secret   manifests redirect to /slow?sig=SECRET, which trickles
  escape_error      404 whose error message holds terminal escapes
  anonymous_404     404 manifest unknown (to see a request arrive)
  https_to_http     (with CERT KEY: TLS) manifests redirect to plain http
"""
import socket
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE = sys.argv[1]
LOG = sys.argv[2]


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


CLOSED = closed_port()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def trickle(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            while True:
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(1)
        except (BrokenPipeError, ConnectionResetError):
            return

    def do_GET(self):
        with open(LOG, "a") as f:
            f.write(f"{self.command} {self.path} auth={'yes' if self.headers.get('Authorization') else 'no'}\n")
        if self.path == "/v2/" or self.path == "/v2":
            return self.send(200, b"{}")
        if MODE == "endless_manifest" and "/manifests/" in self.path:
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            self.send_header("Connection", "close")
            self.end_headers()
            chunk = b" " * 65536
            try:
                while True:
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return
        if MODE == "trickle" and "/manifests/" in self.path:
            return self.trickle()
        if MODE == "http_realm":
            return self.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}', [
                ("WWW-Authenticate", 'Bearer realm="http://192.0.2.1/token",service="x",scope="repository:demo:pull"')
            ])
        if MODE == "redirect_secret" and self.path.startswith("/slow"):
            return self.trickle()
        if MODE == "redirect_secret":
            port = self.server.server_address[1]
            return self.send(307, b"", [("Location", f"http://127.0.0.1:{port}/slow?sig=SECRET-SIGNATURE")])
        if MODE == "escape_error":
            body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"gone \\u001b[2J\\u001b]0;pwned\\u0007 now"}]}'
            if "/tags/list" in self.path:
                return self.send(200, b'{"name":"demo","tags":["ok","evil\\u001b[31m"]}')
            return self.send(404, body)
        if MODE == "https_to_http" and "/manifests/" in self.path:
            return self.send(302, b"", [("Location", f"http://127.0.0.1:{CLOSED}{self.path}")])
        return self.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
if len(sys.argv) >= 5:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
