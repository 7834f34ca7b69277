#!/usr/bin/env bash
# Benchmark: installing from a local registry against what a user would run
# instead, all in the same run on the same throwaway docker-registry.
#
# Builds artifacts of FILES files of 100 KiB each (default 2,000, ~200 MiB;
# half of every file is random, half repeats, so gzip halves it), pushes
# them to a local docker-registry (scripts/registry.sh) in two layer
# formats, `tar` (uncompressed) and `gz` (tar+gzip), each as v1 and v2
# (different bytes), then times RUNS times each (default 3):
#   fresh      `stagehand install REG/bench:KIND-v1 --to DIR --plain-http`
#              into a fresh state dir and destination
#   upgrade    then the same with KIND-v2 (its blobs not cached): pull,
#              verify, extract, fsync, journaled swap, old version removed
#   skopeo     `skopeo copy docker://REG/bench:KIND-v1 oci:DIR`: only a download
#   skopeo+tar the same, then `tar -xf` of its layer into a fresh dir, then
#              `sync`: the unsafe way to get the same files
#   curl       `curl` of the raw blobs (config + layer), in parallel: the
#              loopback limit
# and prints the medians and the ratios stagehand/baseline, for a fresh
# install and for an upgrade (goals: skopeo <= 1.0, skopeo+tar <= 0.7,
# curl <= 2). Then times one `stagehand apply` of 10 packages (each a tenth
# of FILES, gzip layers) against `skopeo copy` of the same 10, one after
# the other and all at once (goal: registry install / skopeo copy <= 0.75).
# Then installs one BIG_MIB artifact (default 1024 MiB, 1 MiB
# files) once, to report stagehand's peak RSS (goal <= 64 MiB).
# `uptime` is printed before and after: the machine may be shared.
#
# Usage: scripts/bench-pull.sh [--quick] [RUNS]
#   --quick   200 files, a 128 MiB RSS artifact, 1 run unless RUNS is given
# Environment: FILES, BIG_MIB override the sizes; KINDS="tar gz" the formats;
# OLD_BIN=PATH also times another stagehand binary (say, a release build of
# the previous commit) the same way, in the same run, for "what it gained";
# BIN=PATH times that binary instead of this tree's release build (which is
# then not built: a copy keeps the bench steady while the tree changes).
# Each run's line ends with the 1-minute load average, since the machine may
# be shared: read the medians with it.
# Needs docker-registry, skopeo, curl, GNU time, python3; uses the release
# build, building it if needed.
set -euo pipefail
export LC_ALL=C

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi
if [ "$quick" = 1 ]; then
  runs=${1:-1}
  files=${FILES:-200}
  big_mib=${BIG_MIB:-128}
else
  runs=${1:-3}
  files=${FILES:-2000}
  big_mib=${BIG_MIB:-1024}
fi
kinds=${KINDS:-tar gz}
file_size=$((100 * 1024))

die() { echo "bench-pull: $*" >&2; exit 1; }
for tool in docker-registry skopeo python3 curl; do
  command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install docker-registry skopeo python3 curl)"
done
if [ ! -x /usr/bin/time ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time
  else
    die "GNU time (/usr/bin/time) is not installed (apt-get install time)"
  fi
fi

if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  (cd "$repo" && cargo build --release --quiet)
  bin="${CARGO_TARGET_DIR:-$repo/target}/release/stagehand"
fi
[ -x "$bin" ] || die "no stagehand binary at $bin"

work=$(mktemp -d "${TMPDIR:-/tmp}/stagehand-bench.XXXXXX")
run="$work/run"
cleanup() {
  "$repo/scripts/registry.sh" stop "$work/registry" >/dev/null 2>&1 || true
  if mountpoint -q "$run" 2>/dev/null; then umount "$run" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> uptime before: $(uptime)"
echo "==> building ${files}-file, $((files * file_size / 1024 / 1024)) MiB artifacts (${kinds}) and a ${big_mib} MiB one in $work"
python3 - "$work" "$files" "$file_size" "$big_mib" <<'EOF'
import gzip, hashlib, io, json, os, sys, tarfile
work, files, size, big_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
layout = os.path.join(work, "layout")
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs)
def put_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    n = os.path.getsize(path)
    os.rename(path, os.path.join(blobs, h.hexdigest()))
    return {"digest": "sha256:" + h.hexdigest(), "size": n}
def put(data):
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, h), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + h, "size": len(data)}
def make_tar(path, count, fsize, half_random):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in range((count + 99) // 100):
            info = tarfile.TarInfo(f"data/d{d:03}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for i in range(count):
            info = tarfile.TarInfo(f"data/d{i // 100:03}/f{i:05}.bin")
            info.size, info.mode, info.mtime = fsize, 0o644, 0
            if half_random:
                r = os.urandom(fsize // 2)
                data = r + (os.urandom(64) * (fsize // 128 + 1))[: fsize - len(r)]
            else:
                data = os.urandom(fsize)
            tar.addfile(info, io.BytesIO(data))
config = dict(mediaType="application/vnd.oci.empty.v1+json", **put(b"{}"))
manifests = []
def tag(name, layer_desc):
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": "application/vnd.stagehand.bench.v1", "config": config, "layers": [layer_desc]}
    m = put(json.dumps(manifest, separators=(",", ":")).encode())
    manifests.append(dict(mediaType=manifest["mediaType"], annotations={"org.opencontainers.image.ref.name": name}, **m))
    with open(os.path.join(work, f"layer-{name}"), "w") as f:
        f.write(layer_desc["digest"])
for v in ("v1", "v2"):
    tar_path = os.path.join(work, f"layer-{v}.tar")
    make_tar(tar_path, files, size, True)
    gz_path = tar_path + ".gz"
    with open(tar_path, "rb") as src, gzip.GzipFile(gz_path, "wb", compresslevel=6, mtime=0) as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            dst.write(chunk)
    tag(f"tar-{v}", dict(mediaType="application/vnd.oci.image.layer.v1.tar", **put_file(tar_path)))
    tag(f"gz-{v}", dict(mediaType="application/vnd.oci.image.layer.v1.tar+gzip", **put_file(gz_path)))
for k in range(10):
    tar_path = os.path.join(work, f"layer-pkg{k}.tar")
    make_tar(tar_path, max(1, files // 10), size, True)
    with open(tar_path, "rb") as src, gzip.GzipFile(tar_path + ".gz", "wb", compresslevel=6, mtime=0) as dst:
        dst.write(src.read())
    os.remove(tar_path)
    tag(f"pkg{k}", dict(mediaType="application/vnd.oci.image.layer.v1.tar+gzip", **put_file(tar_path + ".gz")))
big_path = os.path.join(work, "layer-big.tar")
make_tar(big_path, big_mib, 1 << 20, False)
tag("big", dict(mediaType="application/vnd.oci.image.layer.v1.tar", **put_file(big_path)))
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}, f)
with open(os.path.join(layout, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
EOF

reg=$("$repo/scripts/registry.sh" start "$work/registry")
for t in tar-v1 tar-v2 gz-v1 gz-v2 big pkg0 pkg1 pkg2 pkg3 pkg4 pkg5 pkg6 pkg7 pkg8 pkg9; do
  "$repo/scripts/registry.sh" push "$work/registry" "$work/layout" "$t" "bench:$t" >/dev/null
done
echo "==> pushed to $reg/bench"
config_digest=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["manifests"][0]["digest"])' "$work/layout/index.json")
config_digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["digest"])' "$work/layout/blobs/sha256/${config_digest#sha256:}")

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

# The baselines, as scripts GNU time can run.
cat >"$work/skopeo-tar.sh" <<'EOF'
#!/usr/bin/env bash
# skopeo-tar.sh REG TAG OCI OUT LAYER_HEX TARFLAGS
set -euo pipefail
skopeo --insecure-policy copy --quiet --src-tls-verify=false "docker://$1/bench:$2" "oci:$3:$2"
mkdir -p "$4"
tar "$6" "$3/blobs/sha256/$5" -C "$4"
sync
EOF
cat >"$work/curl.sh" <<'EOF'
#!/usr/bin/env bash
# curl.sh REG OUTDIR DIGEST...: fetches the blobs in parallel.
set -euo pipefail
reg=$1 out=$2
shift 2
mkdir -p "$out"
pids=()
for d in "$@"; do
  curl -sf -o "$out/${d#sha256:}" "http://$reg/v2/bench/blobs/$d" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
EOF
chmod +x "$work/skopeo-tar.sh" "$work/curl.sh"

# Every timed command writes under $run, a fresh ext4 (a loop file) when run
# as root: ext4 skips inodes freed in the last 60-300 s when it allocates
# new ones (fs/ext4/ialloc.c, recently_deleted), so a run that follows the
# removal of an earlier run's 2,000 files would be slowed by them. Without
# root, a plain directory, emptied.
fresh=0
if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null && command -v losetup >/dev/null; then fresh=1; fi
# new_run MIB: a new, empty $run of at least MIB MiB.
new_run() {
  # A process the last command left behind (an upgrade's removal of the old
  # version) holds the state-dir lock until it ends.
  if [ -f "$run/state/lock" ]; then flock "$run/state/lock" true; fi
  if mountpoint -q "$run"; then umount "$run"; fi
  rm -rf "$run" "$run.img"
  mkdir -p "$run"
  if [ "$fresh" = 1 ]; then
    truncate -s "$(($1 + 512))M" "$run.img" && mkfs.ext4 -q -F "$run.img" && mount -o loop "$run.img" "$run"
  fi
  sync
}
run_mib=$((files * file_size / 1048576 * 4))
if [ "$fresh" = 1 ]; then echo "==> each timed run on a fresh ext4 (loop file)"; else echo "==> not root: timed runs in a plain directory"; fi

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
med() { cut -d' ' -f1 "$1" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
maxrss() { cut -d' ' -f2 "$@" | sort -n | tail -1; }

for kind in $kinds; do
  layer=$(cat "$work/layer-$kind-v1")
  flags=-xf
  [ "$kind" = gz ] && flags=-xzf
  for f in fresh upgrade oldfresh oldupgrade skopeo skopeotar curl; do : >"$work/$kind-$f.txt"; done
  for i in $(seq 1 "$runs"); do
    # pair BIN PREFIX: a fresh install, then the upgrade, on a new $run.
    pair() {
      new_run "$run_mib"
      timed "$work/$kind-${2}fresh.txt" "$1" --state-dir "$run/state" -q install "$reg/bench:$kind-v1" --to "$run/dest/app" --plain-http
      sync
      timed "$work/$kind-${2}upgrade.txt" "$1" --state-dir "$run/state" -q install "$reg/bench:$kind-v2" --to "$run/dest/app" --plain-http
    }
    # With OLD_BIN, alternate which binary goes first (the first pair of a
    # round was seen slower, whichever binary it was).
    if [ -z "${OLD_BIN:-}" ]; then
      pair "$bin" ""
    elif [ $((i % 2)) = 1 ]; then
      pair "$bin" ""; pair "$OLD_BIN" old
    else
      pair "$OLD_BIN" old; pair "$bin" ""
    fi
    new_run "$run_mib"
    timed "$work/$kind-skopeo.txt" skopeo --insecure-policy copy --quiet --src-tls-verify=false "docker://$reg/bench:$kind-v1" "oci:$run/oci:$kind-v1"
    new_run "$run_mib"
    timed "$work/$kind-skopeotar.txt" "$work/skopeo-tar.sh" "$reg" "$kind-v1" "$run/oci" "$run/out" "${layer#sha256:}" "$flags"
    new_run "$run_mib"
    timed "$work/$kind-curl.txt" "$work/curl.sh" "$reg" "$run/curl" "$config_digest" "$layer"
    echo "    $kind run $i: fresh $(tail -1 "$work/$kind-fresh.txt" | cut -d' ' -f1)s, upgrade $(tail -1 "$work/$kind-upgrade.txt" | cut -d' ' -f1)s, skopeo $(tail -1 "$work/$kind-skopeo.txt" | cut -d' ' -f1)s, skopeo+tar+sync $(tail -1 "$work/$kind-skopeotar.txt" | cut -d' ' -f1)s, curl $(tail -1 "$work/$kind-curl.txt" | cut -d' ' -f1)s; load $(cut -d' ' -f1 /proc/loadavg)"
  done
done

# One apply of 10 packages against skopeo copy of the same 10, one after
# the other and all at once, each timed command on a fresh $run.
cat >"$work/skopeo-10.sh" <<'EOF'
#!/usr/bin/env bash
# skopeo-10.sh REG OCI seq|par: copies bench:pkg0..9 into OCI-0..9.
set -euo pipefail
pids=()
for k in 0 1 2 3 4 5 6 7 8 9; do
  if [ "$3" = par ]; then
    skopeo --insecure-policy copy --quiet --src-tls-verify=false "docker://$1/bench:pkg$k" "oci:$2-$k:pkg$k" &
    pids+=($!)
  else
    skopeo --insecure-policy copy --quiet --src-tls-verify=false "docker://$1/bench:pkg$k" "oci:$2-$k:pkg$k"
  fi
done
for p in "${pids[@]}"; do wait "$p"; done
EOF
chmod +x "$work/skopeo-10.sh"
for f in apply10 skopeo10seq skopeo10par; do : >"$work/$f.txt"; done
for i in $(seq 1 "$runs"); do
  new_run "$run_mib"
  {
    printf '[defaults]\nplain-http = true\n\n'
    for k in 0 1 2 3 4 5 6 7 8 9; do printf '[package.p%s]\nref = "%s/bench:pkg%s"\nto = "%s/dest/p%s"\n\n' "$k" "$reg" "$k" "$run" "$k"; done
  } >"$run/stagehand.toml"
  sync
  timed "$work/apply10.txt" "$bin" --state-dir "$run/state" -q apply --file "$run/stagehand.toml"
  new_run "$run_mib"
  timed "$work/skopeo10seq.txt" "$work/skopeo-10.sh" "$reg" "$run/oci" seq
  new_run "$run_mib"
  timed "$work/skopeo10par.txt" "$work/skopeo-10.sh" "$reg" "$run/oci" par
  echo "    10 packages run $i: apply $(tail -1 "$work/apply10.txt" | cut -d' ' -f1)s, skopeo x10 one by one $(tail -1 "$work/skopeo10seq.txt" | cut -d' ' -f1)s, at once $(tail -1 "$work/skopeo10par.txt" | cut -d' ' -f1)s; load $(cut -d' ' -f1 /proc/loadavg)"
done

new_run "$((big_mib * 3))"
: >"$work/big.txt"
timed "$work/big.txt" "$bin" --state-dir "$run/state" -q install "$reg/bench:big" --to "$run/dest/big" --plain-http

echo
echo "==> results (median of $runs runs; $files files; layer sizes: tar $(stat -c %s "$work/layout/blobs/sha256/$(cut -c8- "$work/layer-tar-v1")") B, gz $(stat -c %s "$work/layout/blobs/sha256/$(cut -c8- "$work/layer-gz-v1")") B)"
for kind in $kinds; do
  fr=$(med "$work/$kind-fresh.txt") up=$(med "$work/$kind-upgrade.txt")
  sk=$(med "$work/$kind-skopeo.txt") st=$(med "$work/$kind-skopeotar.txt") cu=$(med "$work/$kind-curl.txt")
  echo "[$kind] stagehand fresh ${fr}s, upgrade ${up}s; skopeo ${sk}s; skopeo+tar+sync ${st}s; curl ${cu}s"
  echo "[$kind]   fresh:   /skopeo $(ratio "$fr" "$sk")x (goal <= 1.0)   /skopeo+tar+sync $(ratio "$fr" "$st")x (goal <= 0.7)   /curl $(ratio "$fr" "$cu")x (goal <= 2)"
  echo "[$kind]   upgrade: /skopeo $(ratio "$up" "$sk")x (goal <= 1.0)   /skopeo+tar+sync $(ratio "$up" "$st")x (goal <= 0.7)   /curl $(ratio "$up" "$cu")x (goal <= 2)"
  if [ -n "${OLD_BIN:-}" ]; then
    of=$(med "$work/$kind-oldfresh.txt") ou=$(med "$work/$kind-oldupgrade.txt")
    echo "[$kind]   OLD_BIN fresh ${of}s (/skopeo $(ratio "$of" "$sk")x), upgrade ${ou}s (/skopeo $(ratio "$ou" "$sk")x); new/old: fresh $(ratio "$fr" "$of")x, upgrade $(ratio "$up" "$ou")x"
  fi
  echo "[$kind]   peak RSS: stagehand $(($(maxrss "$work/$kind-fresh.txt" "$work/$kind-upgrade.txt") / 1024)) MiB, skopeo $(($(maxrss "$work/$kind-skopeo.txt") / 1024)) MiB"
done
ap=$(med "$work/apply10.txt") sq=$(med "$work/skopeo10seq.txt") sp=$(med "$work/skopeo10par.txt")
echo "[10 packages] stagehand apply ${ap}s; skopeo copy x10 one by one ${sq}s, all at once ${sp}s"
echo "[10 packages]   apply / skopeo one by one $(ratio "$ap" "$sq")x, / skopeo at once $(ratio "$ap" "$sp")x (goal <= 0.75)"
echo "[big] ${big_mib} MiB install: $(med "$work/big.txt")s, peak RSS $(($(maxrss "$work/big.txt") / 1024)) MiB (goal <= 64 MiB)"
echo "==> uptime after: $(uptime)"
