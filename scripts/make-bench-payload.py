#!/usr/bin/env python3
"""Builds the benchmark payload P as an OCI image layout.

P: one tar+gzip layer of N files of mixed sizes (~TOTAL MiB), plus three
title-annotated files (mapped by the benchmark to two other directories);
tags v1 and v2 (v2 changes a tenth of the files, adds and drops a few).
Also writes the layer's tree to DIR/tree-<tag>/ for the baselines.

Usage: make-bench-payload.py DIR [--files 2000] [--mib 200]
"""
import argparse, gzip, hashlib, io, json, os, random, shutil, tarfile

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--files", type=int, default=2000)
ap.add_argument("--mib", type=int, default=200)
a = ap.parse_args()
root = os.path.abspath(a.dir)
layout = os.path.join(root, "layout")
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
rng = random.Random(42)

def put(data: bytes) -> dict:
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, h), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + h, "size": len(data)}

def sizes(n, total):
    # 1% large files carry 3/4 of the bytes; the rest are small and mixed.
    large = max(1, n // 100)
    big = total * 3 // 4 // large
    small_total = total - big * large
    small = [rng.randint(1, 2 * small_total // (n - large)) for _ in range(n - large)]
    return [big] * large + small

def tree(tag, n, total):
    d = os.path.join(root, "tree-" + tag)
    shutil.rmtree(d, ignore_errors=True)
    szs = sizes(n, total)
    for i, sz in enumerate(szs):
        if tag == "v2" and i % 100 == 99:
            continue  # dropped in v2
        p = os.path.join(d, f"dir{i % 20:02d}", f"sub{i % 7}", f"file{i:05d}.bin")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        seed = i if (tag == "v1" or i % 10) else i + 1_000_000
        r = random.Random(seed)
        with open(p, "wb") as f:
            left = sz
            while left > 0:  # randbytes takes at most ~256 MiB at once
                n = min(left, 16 << 20)
                f.write(r.randbytes(n))
                left -= n
    if tag == "v2":
        for i in range(n // 100):
            p = os.path.join(d, "added", f"new{i:04d}.bin")
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(random.Random(-i).randbytes(4096))
    return d

def layer(d):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for dp, dns, fns in os.walk(d):
            dns.sort()
            for name in sorted(dns) + sorted(fns):
                full = os.path.join(dp, name)
                ti = t.gettarinfo(full, arcname=os.path.relpath(full, d))
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                ti.mtime = 0
                if ti.isfile():
                    with open(full, "rb") as f:
                        t.addfile(ti, f)
                else:
                    t.addfile(ti)
    raw = buf.getvalue()
    z = gzip.compress(raw, compresslevel=1, mtime=0)
    with open(os.path.join(root, f"layer-{os.path.basename(d)}.tar.gz"), "wb") as f:
        f.write(z)
    return z

total = a.mib * 1024 * 1024
cfg = put(b"{}")
cfg["mediaType"] = "application/vnd.oci.empty.v1+json"
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
for tag in ("v1", "v2"):
    d = tree(tag, a.files, total)
    lay = put(layer(d))
    lay["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    layers = [lay]
    extra = os.path.join(root, "files-" + tag)
    os.makedirs(extra, exist_ok=True)
    for name, sz in (("p.so", 1 << 20), ("p.control", 200), ("p--1.0.sql", 4000)):
        data = random.Random(name + tag).randbytes(sz)
        with open(os.path.join(extra, name), "wb") as f:
            f.write(data)
        desc = put(data)
        desc["mediaType"] = "application/octet-stream"
        desc["annotations"] = {"org.opencontainers.image.title": name}
        layers.append(desc)
    m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfg, "layers": layers}
    mb = json.dumps(m, sort_keys=True).encode()
    md = put(mb)
    md["mediaType"] = m["mediaType"]
    md["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index["manifests"].append(md)
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f)
with open(os.path.join(layout, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
print(f"payload: {a.files} files, {a.mib} MiB, in {root}")
