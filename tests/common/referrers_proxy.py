#!/usr/bin/env python3
"""An OCI 1.1 referrers API in front of a real registry, for stagehand's tests.

Usage: referrers_proxy.py UPSTREAM_PORT REFERRERS_DIR LOGFILE
Prints the port it listens on (one line), then serves until killed.

Debian's docker-registry (distribution 2.8) has no referrers API. This
proxy answers GET /v2/<name>/referrers/<digest> itself, with the image
index in REFERRERS_DIR/<algo>-<hex> (written by the test) or, as the OCI
distribution spec says for a subject without referrers, an empty index;
every other request is forwarded to the registry unchanged (a request in
absolute form, as an HTTP proxy gets it, is forwarded as it is: the
registry accepts that form too, so this also serves as a forward proxy).
A CONNECT to a loopback address is tunnelled (an HTTPS proxy's work).
Every request line is appended to LOGFILE, followed by each `X-` header it
carried as `  NAME: VALUE`.
"""
import http.client
import json
import os
import re
import select
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UPSTREAM = int(sys.argv[1])
REFERRERS = sys.argv[2]
LOG = sys.argv[3]
INDEX = "application/vnd.oci.image.index.v1+json"
ROUTE = re.compile(r"^/v2/(.+)/referrers/(sha256:[0-9a-f]{64})(\?.*)?$")
HOP = {"connection", "keep-alive", "transfer-encoding", "host"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_one(self):
        with open(LOG, "a") as f:
            f.write(f"{self.command} {self.path}\n")
            for k, v in self.headers.items():
                if k.lower().startswith("x-"):
                    f.write(f"  {k}: {v}\n")
        if self.command == "CONNECT":
            self.tunnel()
            return
        m = ROUTE.match(self.path)
        if m and self.command in ("GET", "HEAD"):
            path = os.path.join(REFERRERS, m.group(2).replace(":", "-"))
            if os.path.exists(path):
                with open(path, "rb") as f:
                    body = f.read()
            else:
                body = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", INDEX)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    def tunnel(self):
        host, _, port = self.path.rpartition(":")
        if host not in ("127.0.0.1", "localhost"):
            self.send_error(403)
            return
        upstream = socket.create_connection((host, int(port)), timeout=30)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        ends = [self.connection, upstream]
        while True:
            ready, _, _ = select.select(ends, [], [], 30)
            if not ready:
                break
            for r in ready:
                data = r.recv(65536)
                if not data:
                    upstream.close()
                    return
                (upstream if r is self.connection else self.connection).sendall(data)
        upstream.close()

    do_CONNECT = do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_one


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
