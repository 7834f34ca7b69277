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
  cdn_challenge     Basic-auth registry whose blobs redirect to a "CDN" on
                    127.0.0.2 that answers 401 Bearer with a realm on 127.0.0.3
  cdn_ok            Basic-auth registry whose blobs redirect to a CDN on
                    127.0.0.2 that serves them (logs Referer/Authorization)
  off_machine       plain-http registry whose blobs redirect to plain http
                    at 0.0.0.0 (not loopback; never actually reached)
  identity_token    Bearer registry whose realm takes only an OAuth2
                    refresh_token POST (logs the form), then 404s manifests
  identity_token_redirect  the same, whose realm redirects the POST (307)
"""
import base64
import hashlib
import json
import threading
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

# One small artifact: a title-annotated layer and an empty config.
LAYER = b"hello from the registry\n"
CONFIG = b"{}"


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


MANIFEST = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(CONFIG), "size": len(CONFIG)},
    "layers": [{
        "mediaType": "application/octet-stream", "digest": sha(LAYER), "size": len(LAYER),
        "annotations": {"org.opencontainers.image.title": "hello.txt"},
    }],
}).encode()
BLOBS = {sha(LAYER): LAYER, sha(CONFIG): CONFIG}
PORTS = {}


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

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode("latin-1")
        self.log_line(f" body={body}")
        if MODE == "identity_token_redirect" and self.path.startswith("/token"):
            return self.send(307, b"", [("Location", f"http://127.0.0.2:{CLOSED}/steal")])
        if MODE == "identity_token" and self.path.startswith("/token"):
            if "grant_type=refresh_token" in body and "refresh_token=refresh-xyz" in body:
                return self.send(200, b'{"access_token":"AT-from-refresh"}')
            return self.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad refresh token"}]}')
        return self.send(404, b"")

    def log_line(self, extra=""):
        host = self.server.server_address[0]
        ref = "yes" if self.headers.get("Referer") else "no"
        auth = "yes" if self.headers.get("Authorization") else "no"
        with open(LOG, "a") as f:
            f.write(f"{self.command} {self.path} host={host} referer={ref}{extra} auth={auth}\n")

    def do_GET(self):
        self.log_line()
        host = self.server.server_address[0]
        if MODE in ("cdn_challenge", "cdn_ok") and host == "127.0.0.2":
            if MODE == "cdn_challenge":
                realm = f"http://127.0.0.3:{PORTS['127.0.0.3']}/evil"
                return self.send(401, b"{}", [("WWW-Authenticate", f'Bearer realm="{realm}",service="cdn"')])
            blob = BLOBS.get(self.path.split("?")[0].rsplit("/", 1)[-1])
            return self.send(200, blob) if blob is not None else self.send(404, b"")
        if MODE == "cdn_challenge" and host == "127.0.0.3":
            return self.send(200, b'{"token":"stolen"}')
        if MODE in ("cdn_challenge", "cdn_ok") and self.path.startswith("/v2/demo/"):
            if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"alice:hunter2-secret").decode():
                return self.send(401, b"{}", [("WWW-Authenticate", 'Basic realm="registry"')])
        if MODE in ("cdn_challenge", "cdn_ok", "off_machine") and "/manifests/" in self.path:
            return self.send(200, MANIFEST, [("Content-Type", "application/vnd.oci.image.manifest.v1+json")])
        if MODE in ("cdn_challenge", "cdn_ok") and "/blobs/" in self.path:
            digest = self.path.rsplit("/", 1)[-1]
            return self.send(307, b"", [("Location", f"http://127.0.0.2:{PORTS['127.0.0.2']}/cdn/{digest}?sig=S")])
        if MODE == "off_machine" and "/blobs/" in self.path:
            return self.send(307, b"", [("Location", f"http://0.0.0.0:{CLOSED}/blob?sig=SECRET-SIGNATURE")])
        if MODE in ("identity_token", "identity_token_redirect") and self.path.startswith("/v2/demo/"):
            if self.headers.get("Authorization") != "Bearer AT-from-refresh":
                port = self.server.server_address[1]
                realm = f"http://127.0.0.1:{port}/token"
                return self.send(401, b"{}", [("WWW-Authenticate", f'Bearer realm="{realm}",service="reg"')])
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
if MODE in ("cdn_challenge", "cdn_ok"):
    # "Other hosts", still on loopback: nothing here ever leaves the machine.
    for other in ("127.0.0.2", "127.0.0.3"):
        extra = ThreadingHTTPServer((other, 0), Handler)
        extra.daemon_threads = True
        PORTS[other] = extra.server_address[1]
        threading.Thread(target=extra.serve_forever, daemon=True).start()
print(server.server_address[1], flush=True)
server.serve_forever()
