#!/usr/bin/env bash
# Benchmark: pulling a ~200 MiB, 2,000-file artifact from a local registry.
#
# Builds an OCI layout whose one layer is an uncompressed tar of 2,000
# random 100 KiB files (~200 MiB), pushes it to a throwaway local
# docker-registry (scripts/registry.sh), then times, RUNS times each (default 3):
#   stagehand  `stagehand install REG/bench:v1 --to DIR --plain-http` into a
#              fresh state dir and destination (pull + verify + extract +
#              fsync + journaled swap)
#   cached     the same install with the blobs already in the cache (the part
#              that is not network: extract + fsync + swap)
#   skopeo     `skopeo copy docker://REG/bench:v1 oci:DIR` into a fresh dir
# and prints the medians, the stagehand/skopeo ratio (goal <= 1.0) and
# stagehand's peak RSS (/usr/bin/time -v).
#
# Usage: scripts/bench-pull.sh [RUNS]      (needs docker-registry, skopeo,
#        GNU time, python3; uses the release build, building it if needed)
set -euo pipefail
export LC_ALL=C

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${1:-3}
files=2000
file_size=$((100 * 1024))

die() { echo "bench-pull: $*" >&2; exit 1; }
for tool in docker-registry skopeo python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install docker-registry skopeo python3)"
done
if [ ! -x /usr/bin/time ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time
  else
    die "GNU time (/usr/bin/time) is not installed (apt-get install time)"
  fi
fi

(cd "$repo" && cargo build --release --quiet)
bin="$repo/target/release/stagehand"

work=$(mktemp -d "${TMPDIR:-/tmp}/stagehand-bench.XXXXXX")
cleanup() {
  "$repo/scripts/registry.sh" stop "$work/registry" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> building a ${files}-file, $((files * file_size / 1024 / 1024)) MiB artifact in $work"
python3 - "$work" "$files" "$file_size" <<'EOF'
import hashlib, io, json, os, sys, tarfile
work, files, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
layout = os.path.join(work, "layout")
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs)
def put(data):
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, h), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + h, "size": len(data)}
tar_path = os.path.join(work, "layer.tar")
with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
    for d in range(files // 100):
        info = tarfile.TarInfo(f"data/d{d:03}")
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
        tar.addfile(info)
    for i in range(files):
        info = tarfile.TarInfo(f"data/d{i // 100:03}/f{i:05}.bin")
        info.size, info.mode, info.mtime = size, 0o644, 0
        tar.addfile(info, io.BytesIO(os.urandom(size)))
h = hashlib.sha256()
with open(tar_path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + h.hexdigest(),
         "size": os.path.getsize(tar_path)}
os.rename(tar_path, os.path.join(blobs, h.hexdigest()))
config = dict(mediaType="application/vnd.oci.empty.v1+json", **put(b"{}"))
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.stagehand.bench.v1", "config": config, "layers": [layer]}
m = put(json.dumps(manifest, separators=(",", ":")).encode())
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [dict(mediaType=manifest["mediaType"], annotations={"org.opencontainers.image.ref.name": "v1"}, **m)]}
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f)
with open(os.path.join(layout, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
EOF

reg=$("$repo/scripts/registry.sh" start "$work/registry")
"$repo/scripts/registry.sh" push "$work/registry" "$work/layout" v1 bench:v1
echo "==> pushed to $reg/bench:v1"

# timed OUTFILE CMD...: runs CMD under GNU time, appends "seconds rss_kib" to OUTFILE.
timed() {
  local out=$1
  shift
  /usr/bin/time -v -o "$work/time.txt" "$@" >/dev/null
  local secs rss
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$work/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
  echo "$secs $rss" >>"$out"
}

: >"$work/stagehand.txt"
: >"$work/cached.txt"
: >"$work/skopeo.txt"
for i in $(seq 1 "$runs"); do
  rm -rf "$work/state" "$work/dest" "$work/oci"
  sync
  timed "$work/stagehand.txt" "$bin" --state-dir "$work/state" -q install "$reg/bench:v1" --to "$work/dest/app" --plain-http
  # Same install again, blobs cached: uninstall first so it is a fresh install.
  "$bin" --state-dir "$work/state" -q uninstall bench
  sync
  timed "$work/cached.txt" "$bin" --state-dir "$work/state" -q install "$reg/bench:v1" --to "$work/dest/app" --plain-http
  sync
  timed "$work/skopeo.txt" skopeo --insecure-policy copy --quiet --src-tls-verify=false "docker://$reg/bench:v1" "oci:$work/oci:v1"
  echo "    run $i: stagehand $(tail -1 "$work/stagehand.txt" | cut -d' ' -f1)s, cached $(tail -1 "$work/cached.txt" | cut -d' ' -f1)s, skopeo $(tail -1 "$work/skopeo.txt" | cut -d' ' -f1)s"
done

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
s_med=$(cut -d' ' -f1 "$work/stagehand.txt" | median)
c_med=$(cut -d' ' -f1 "$work/cached.txt" | median)
k_med=$(cut -d' ' -f1 "$work/skopeo.txt" | median)
rss_max=$(cut -d' ' -f2 "$work/stagehand.txt" | sort -n | tail -1)
k_rss=$(cut -d' ' -f2 "$work/skopeo.txt" | sort -n | tail -1)
ratio=$(awk -v a="$s_med" -v b="$k_med" 'BEGIN {printf "%.2f", a / b}')

echo
echo "==> results (median of $runs runs, $files files, $(stat -c %s "$work"/layout/blobs/sha256/* | sort -n | tail -1) byte layer)"
echo "stagehand install from registry: ${s_med}s   peak RSS $((rss_max / 1024)) MiB"
echo "stagehand install, blobs cached: ${c_med}s"
echo "skopeo copy to an OCI dir:       ${k_med}s   peak RSS $((k_rss / 1024)) MiB"
echo "ratio stagehand/skopeo:          ${ratio}x (goal <= 1.0)"
