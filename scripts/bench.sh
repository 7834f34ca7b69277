#!/usr/bin/env bash
# Benchmarks stagehand against baselines measured in the same run and prints
# a table of medians and ratios (see BENCHMARKS.md). Machines here are shared
# and noisy: read the ratios, not the absolute times.
#
# Usage: scripts/bench.sh [--quick] [--small-files] [--runs N] [--only ROW] [--no-pull] [--profile]
#   --quick        20 MiB payload, no 1 GiB RSS row (a smoke run of the script)
#   --small-files  the 20,000 small-file shape: 20,000 files, ~5 KB each
#   --only ROW     run one section alone: install, samefs, upgrade, dpkg,
#                  status, recovery, rss, apply (10 packages vs 10 installs),
#                  pull or profile
#   --no-pull      every section but pull (scripts/bench-pull.sh, the registry rows)
#   --profile      also print where one install and one upgrade spend their
#                  time, phase by phase (from `-v`'s timestamped events)
# Environment: BIN=PATH times that stagehand binary instead of this tree's
# release build (which is then not built), to compare builds.
# As root, every timed run gets a fresh ext4 of its own (see `scratch` below),
# and the layout (with the baselines' archives) sits on another ext4 of its
# own: installing from another filesystem than the state dir's is the
# default row; `samefs` is the layout copied onto the state dir's.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
runs=3 mib=200 files=2000 big=1 only="" nopull=0 profile=0
sections="install samefs upgrade dpkg status recovery rss apply pull profile"
while [ $# -gt 0 ]; do
  case $1 in
    --quick) mib=20; files=400; big=0 ;;
    --small-files) mib=98; files=20000 ;;
    --runs) runs=$2; shift ;;
    --only)
      only=${2:-}
      case " $sections " in *" $only "*) ;; *) echo "$0: --only takes one of: $sections" >&2; exit 2 ;; esac
      shift ;;
    --no-pull) nopull=1 ;;
    --profile) profile=1 ;;
    *) echo "usage: $0 [--quick] [--small-files] [--runs N] [--only ROW] [--no-pull] [--profile]" >&2; exit 2 ;;
  esac
  shift
done

need() { command -v "$1" >/dev/null 2>&1; }
if ! need dpkg-deb || ! need python3 || [ ! -x /usr/bin/time ] || ! need docker-registry || ! need skopeo; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      dpkg python3 time docker-registry skopeo >/dev/null
  else
    echo "bench.sh: needs dpkg-deb, python3, /usr/bin/time, docker-registry and skopeo" >&2; exit 1
  fi
fi
# want SECTION: true if SECTION runs (all of them without --only; profile only with --profile or --only profile).
want() {
  if [ "$1" = profile ]; then [ "$profile" = 1 ] || [ "$only" = profile ]; return; fi
  [ -z "$only" ] || [ "$only" = "$1" ]
}
target=${CARGO_TARGET_DIR:-$repo/target}
if [ -n "${BIN:-}" ]; then
  sh=$BIN
  if want status; then cargo build --release --quiet --example fill_history; fi
else
  cargo build --release --quiet --bin stagehand --example fill_history
  sh=$target/release/stagehand
fi
fill=$target/release/examples/fill_history
[ -x "$sh" ] || { echo "bench.sh: no stagehand binary at $sh" >&2; exit 1; }

w=$(mktemp -d "${TMPDIR:-/tmp}/stagehand-bench.XXXXXX")
cleanup() {
  if [ -f "$w/mounts" ]; then while read -r m; do umount "$m" 2>/dev/null || true; done < "$w/mounts"; fi
  rm -rf "$w"
}
trap cleanup EXIT

# Each timed run, stagehand's and the baseline's, gets a fresh ext4 of its
# own (a loop file) when run as root: ext4 skips inodes freed in the last
# 60-300 s when it allocates new ones (fs/ext4/ialloc.c, recently_deleted),
# so a run that follows the removal of a 20,000-file tree is slowed by the
# tree before it, by up to 5-10x. Without root, plain directories (and the
# table says so).
fresh=0
if [ "$(id -u)" = 0 ] && need mkfs.ext4 && need losetup; then fresh=1; fi
fs_mib=$((mib * 6 + 512))
# scratch: prints a new empty directory for one timed run (a fresh ext4 if
# it can). Called as $(scratch), so it keeps no shell state: the mounts are
# listed in $w/mounts for the exit trap.
scratch() {
  local d; d=$(mktemp -d "$w/fs.XXXXXX")
  if [ "$fresh" = 1 ]; then
    truncate -s "${fs_mib}M" "$d.img" && mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$d.img" >&2 \
      && mount -o loop "$d.img" "$d" >&2 \
      && echo "$d" >> "$w/mounts"
  fi
  echo "$d"
}
# unscratch DIR: gives a scratch directory back (unmounts and deletes it).
unscratch() {
  if mountpoint -q "$1"; then umount "$1"; rm -f "$1.img"; rmdir "$1"; else rm -rf "$1"; fi
}
# The payload P, on a filesystem of its own (made once: it is only read), so
# stagehand reads its layout, and the baselines their archives, from another
# filesystem than the one they write to.
if want install || want samefs || want upgrade || want dpkg || want status || want recovery || want profile; then
  src=$(fs_mib=$((mib * 10 + 512)) scratch)
  python3 scripts/make-bench-payload.py "$src/p" --files "$files" --mib "$mib" >/dev/null
  ln -s "$src/p" "$w/p"
  sync
fi

now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.6f", a - b }'; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a - b }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
ms() { awk -v a="$1" 'BEGIN { printf "%.1f", a * 1000 }'; }
rows=()
row() { rows+=("$(printf '| %-46s | %-34s | %9s | %9s | %6s | %-8s |' "$@")"); }

# left_behind STATE: waits until the process a command leaves behind (the
# removal of what it replaced, the layout's blobs into the cache) has ended:
# it holds the state-dir lock until then.
left_behind() { flock "$1/lock" true; }
install_p() { # STATE DEST TAG (layout: $L, default the payload's)
  "$sh" --state-dir "$1" --quiet install "oci-layout:${L:-$w/p/layout}:$3" --to "$2/app" \
    --map "*.so=$2/lib" --map "*.control=$2/ext" --map "*.sql=$2/ext"
}
tar_baseline() { # TAG
  local x; x=$(scratch); sync
  local t0; t0=$(now); tar -xzf "$w/p/layer-tree-$1.tar.gz" -C "$x"; sync; since "$t0"
  unscratch "$x"
}
# The same upgrade done by hand, unsafely: v2 extracted beside v1, v1 removed.
tar_upgrade_baseline() {
  local x; x=$(scratch); mkdir "$x/v1" "$x/v2"; tar -xzf "$w/p/layer-tree-v1.tar.gz" -C "$x/v1"; sync
  local t0; t0=$(now); tar -xzf "$w/p/layer-tree-v2.tar.gz" -C "$x/v2"; sync; rm -rf "$x/v1"; sync; since "$t0"
  unscratch "$x"
}
# stagehand_run [samefs]: a scratch directory for the state dir and DEST;
# with samefs, the payload's layout copied in (so the cache import
# hard-links, as with a layout on the state dir's disk). Prints the
# directory; the layout is then at $d/layout (samefs) or $w/p/layout.
stagehand_run() {
  local d; d=$(scratch); mkdir -p "$d/dest"
  if [ "${1:-}" = samefs ]; then cp -r "$w/p/layout" "$d/layout"; ln -s "$d/layout" "$d/L"; else ln -s "$w/p/layout" "$d/L"; fi
  sync; echo "$d"
}
lay() { readlink "$1/L"; }

# 1. fresh install vs tar -xzf + sync (layout on another filesystem)
if want install; then
  s=() b=() a=()
  for i in $(seq "$runs"); do
    d=$(stagehand_run)
    t0=$(now); L=$(lay "$d") install_p "$d/state" "$d/dest" v1; s+=("$(since "$t0")")
    left_behind "$d/state"; a+=("$(since "$t0")")
    unscratch "$d"
    b+=("$(tar_baseline v1)")
  done
  S1=$(median "${s[@]}"); B1=$(median "${b[@]}"); A1=$(median "${a[@]}")
  row "install P (fresh, layout on another fs)" "tar -xzf + sync" "$(ms "$S1")" "$(ms "$B1")" "$(ratio "$S1" "$B1")" "≤ 1.00"
  row "  the same, until its process left behind ends" "tar -xzf + sync" "$(ms "$A1")" "$(ms "$B1")" "$(ratio "$A1" "$B1")" "-"
fi

# 1b. the same with the layout on the state dir's filesystem (hard links)
if want samefs; then
  s=() b=()
  for i in $(seq "$runs"); do
    d=$(stagehand_run samefs)
    t0=$(now); L=$(lay "$d") install_p "$d/state" "$d/dest" v1; s+=("$(since "$t0")")
    left_behind "$d/state"; unscratch "$d"
    b+=("$(tar_baseline v1)")
  done
  S1=$(median "${s[@]}"); B1=$(median "${b[@]}")
  row "install P (fresh, layout on the same fs)" "tar -xzf + sync" "$(ms "$S1")" "$(ms "$B1")" "$(ratio "$S1" "$B1")" "≤ 1.00"
fi

# 2. upgrade v1 -> v2 vs tar -xzf + sync of v2
if want upgrade; then
  s=() b=() u=() a=()
  for i in $(seq "$runs"); do
    d=$(stagehand_run); L=$(lay "$d") install_p "$d/state" "$d/dest" v1; left_behind "$d/state"; sync
    t0=$(now); L=$(lay "$d") install_p "$d/state" "$d/dest" v2; s+=("$(since "$t0")")
    left_behind "$d/state"; a+=("$(since "$t0")")
    unscratch "$d"
    b+=("$(tar_baseline v2)")
    u+=("$(tar_upgrade_baseline)")
  done
  S2=$(median "${s[@]}"); B2=$(median "${b[@]}"); U2=$(median "${u[@]}"); A2=$(median "${a[@]}")
  row "upgrade P v1 -> v2" "tar -xzf + sync (v2)" "$(ms "$S2")" "$(ms "$B2")" "$(ratio "$S2" "$B2")" "≤ 1.10"
  row "upgrade P v1 -> v2" "tar -xzf v2 + sync + rm -rf v1 + sync" "$(ms "$S2")" "$(ms "$U2")" "$(ratio "$S2" "$U2")" "≤ 0.90"
  row "  the same, until its process left behind ends" "tar -xzf v2 + sync + rm -rf v1 + sync" "$(ms "$A2")" "$(ms "$U2")" "$(ratio "$A2" "$U2")" "-"
fi

# 3. install vs dpkg -i of a .deb with the same files
if want dpkg; then
  pr="$w/p/pkgroot"; mkdir -p "$pr/DEBIAN" "$pr/opt/p/app" "$pr/opt/p/lib" "$pr/opt/p/ext"
  cp -r "$w/p/tree-v1/." "$pr/opt/p/app/"; cp "$w/p/files-v1/p.so" "$pr/opt/p/lib/"
  cp "$w/p/files-v1/p.control" "$w/p/files-v1/p--1.0.sql" "$pr/opt/p/ext/"
  printf 'Package: bench-p\nVersion: 1.0\nArchitecture: all\nMaintainer: bench <bench@localhost>\nDescription: benchmark payload\n' > "$pr/DEBIAN/control"
  dpkg-deb -Zgzip --root-owner-group -b "$pr" "$w/p/p.deb" >/dev/null
  rm -rf "$pr"
  s=() b=()
  for i in $(seq "$runs"); do
    d=$(stagehand_run)
    t0=$(now); L=$(lay "$d") install_p "$d/state" "$d/dest" v1; s+=("$(since "$t0")")
    left_behind "$d/state"; unscratch "$d"
    r=$(scratch); mkdir -p "$r/var/lib/dpkg/info" "$r/var/lib/dpkg/updates" "$r/var/lib/dpkg/triggers"; touch "$r/var/lib/dpkg/status"; sync
    t0=$(now); dpkg --root="$r" --force-script-chrootless --log=/dev/null -i "$w/p/p.deb" >/dev/null; b+=("$(since "$t0")")
    unscratch "$r"
  done
  S3=$(median "${s[@]}"); B3=$(median "${b[@]}")
  row "install P (fresh, layout on another fs)" "dpkg --root -i (.deb, -Zgzip)" "$(ms "$S3")" "$(ms "$B3")" "$(ratio "$S3" "$B3")" "≤ 0.90"
fi

# 4. status with a long history vs --version
if want status; then
  status_ms() { # STATE -> median ms of 30 runs
    local t=() i t0
    for i in $(seq 30); do t0=$(now); "$sh" --state-dir "$1" status >/dev/null; t+=("$(since "$t0")"); done
    median "${t[@]}"
  }
  v=() ; for i in $(seq 30); do t0=$(now); "$sh" --version >/dev/null; v+=("$(since "$t0")"); done
  V=$(median "${v[@]}")
  "$fill" "$w/h100" 100 >/dev/null; "$fill" "$w/h10k" 10000 >/dev/null
  H1=$(status_ms "$w/h100"); H2=$(status_ms "$w/h10k")
  row "status, 100 finished txns" "stagehand --version" "$(ms "$H1")" "$(ms "$V")" "+$(ms "$(minus "$H1" "$V")")ms" "≤ +15ms"
  row "status, 10,000 finished txns" "stagehand --version" "$(ms "$H2")" "$(ms "$V")" "+$(ms "$(minus "$H2" "$V")")ms" "≤ +15ms"
  # Idle status with P installed: must not grow with the package's size.
  mkdir -p "$w/stat/dest"; install_p "$w/stat/state" "$w/stat/dest" v1; left_behind "$w/stat/state"
  HP=$(status_ms "$w/stat/state")
  row "status, P installed (${files} files)" "stagehand --version" "$(ms "$HP")" "$(ms "$V")" "+$(ms "$(minus "$HP" "$V")")ms" "≤ +15ms"
  # With a cleanup pending: the upgrade's process left behind stopped
  # (SIGSTOP) before its first removal, holding the lock; status reads a copy.
  STAGEHAND_STOP_AT=fsops.remove.cleanup install_p "$w/stat/state" "$w/stat/dest" v2
  for _ in $(seq 500); do
    cleaner=$(awk '$2 == "cleanup" {print $1}' "$w/stat/state/lock")
    [ -n "$cleaner" ] && [ "$(awk '{print $3}' "/proc/$cleaner/stat" 2>/dev/null)" = T ] && break
    sleep 0.02
  done
  HC=$(status_ms "$w/stat/state")
  kill -CONT "$cleaner"; left_behind "$w/stat/state"
  row "status, P's cleanup pending" "stagehand --version" "$(ms "$HC")" "$(ms "$V")" "+$(ms "$(minus "$HC" "$V")")ms" "≤ +15ms"
  rm -rf "$w/stat"
fi

# 5. recovery of an install killed after its commit point
if want recovery; then
  d="$w/rec"; mkdir -p "$d/dest"
  STAGEHAND_CRASH_AT=journal.swapping install_p "$d/state" "$d/dest" v1 2>/dev/null || true
  left_behind "$d/state"
  t0=$(now); "$sh" --state-dir "$d/state" --quiet status >/dev/null; R=$(since "$t0")
  row "recovery of P killed after commit" "-" "$(ms "$R")" "-" "-" "≤ 1000ms"
  rm -rf "$d"
fi

# 6. peak RSS installing a 1 GiB artifact
if [ "$big" = 1 ] && want rss; then
  python3 scripts/make-bench-payload.py "$w/g" --files 64 --mib 1024 >/dev/null
  d="$w/big"; mkdir -p "$d/dest"
  /usr/bin/time -v "$sh" --state-dir "$d/state" --quiet install "oci-layout:$w/g/layout:v1" --to "$d/dest/app" \
    --map "*=$d/dest/lib" 2> "$w/time.txt"
  left_behind "$d/state"
  rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}' "$w/time.txt")
  row "peak RSS, install of a 1 GiB artifact" "-" "${rss} KiB" "-" "-" "≤ 64 MiB"
  rm -rf "$d" "$w/g"
fi

# 8. one apply of 10 packages vs 10 separate installs of the same 10 packages
# (each a tenth of P: files/10 files, mib/10 MiB, into its own DEST/pN)
if want apply; then
  python3 scripts/make-bench-payload.py "$w/s" --files "$((files / 10))" --mib "$(( (mib + 9) / 10 ))" >/dev/null
  s=() b=()
  for i in $(seq "$runs"); do
    d=$(scratch); cp -r "$w/s/layout" "$d/layout"; mkdir -p "$d/dest"; : > "$d/stagehand.toml"
    for k in $(seq 0 9); do
      printf '[package.p%s]\nref = "oci-layout:%s/layout:v1"\nto = "%s/dest/p%s/app"\nmap = ["*.so=%s/dest/p%s/lib", "*.control=%s/dest/p%s/ext", "*.sql=%s/dest/p%s/ext"]\n\n' \
        "$k" "$d" "$d" "$k" "$d" "$k" "$d" "$k" "$d" "$k" >> "$d/stagehand.toml"
    done
    e=$(scratch); cp -r "$w/s/layout" "$e/layout"; mkdir -p "$e/dest"
    apply_10() { sync; local t0; t0=$(now); "$sh" --state-dir "$d/state" --quiet apply --file "$d/stagehand.toml"; s+=("$(since "$t0")"); }
    installs_10() {
      sync; local t0 k; t0=$(now)
      for k in $(seq 0 9); do
        "$sh" --state-dir "$e/state" --quiet install "oci-layout:$e/layout:v1" --name "p$k" --to "$e/dest/p$k/app" \
          --map "*.so=$e/dest/p$k/lib" --map "*.control=$e/dest/p$k/ext" --map "*.sql=$e/dest/p$k/ext"
      done
      b+=("$(since "$t0")")
    }
    # Alternate which goes first, so neither always meets the colder cache.
    if [ $((i % 2)) = 1 ]; then apply_10; installs_10; else installs_10; apply_10; fi
    left_behind "$d/state"; left_behind "$e/state"; unscratch "$d"; unscratch "$e"
  done
  SA=$(median "${s[@]}"); BA=$(median "${b[@]}")
  row "apply of 10 packages (one txn)" "10 separate installs" "$(ms "$SA")" "$(ms "$BA")" "$(ratio "$SA" "$BA")" "≤ 1.00"
  rm -rf "$w/s"
fi

# 9. where the time goes: one install and one upgrade, layout on another
# filesystem, each on a fresh filesystem, run with -v; the phases are the
# gaps between stagehand's timestamped debug events (no cost without -v).
if want profile; then
  cat > "$w/phases.py" <<'PY'
import re, subprocess, sys, time
from datetime import datetime
# phase name, the event that ends it (a debug message of src/installer)
PHASES = [
    ("start, recovery, resolve, plan", "executing"),
    ("journal: planned", "planned"),
    ("extract (read layer, gunzip, write, hash)", "written; making durable"),
    ("syncfs of the staged tree", "durable"),
    ("file lists + journal: staged", "staged"),
    ("journal: commit", "committed"),
    ("swap (journal: swapping), settle, journal: done", "finished; its cleanup is left to run"),
    ("(an install: swap, journal: done)", "finished"),
    ("prune; the command reports", "reported"),
    ("after the report: removal of the old tree", "cleanup finished"),
    ("after the report: layout blobs into the cache", "layout blobs kept in the cache"),
]
label, cmd = sys.argv[1], sys.argv[2:]
t0 = time.time()
err = subprocess.run(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, check=True).stderr
t1 = time.time()
seen = {}
for line in err.splitlines():
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z\s+DEBUG\s+(.*?)(\s+\w+=.*)?$", line)
    if m and m.group(3) not in seen:
        frac = float(m.group(2) or 0)
        seen[m.group(3)] = datetime.fromisoformat(m.group(1) + "+00:00").timestamp() + frac
rows, last = [], t0
for name, ev in PHASES:
    if ev in seen:
        rows.append((name, seen[ev] - last))
        last = seen[ev]
rows.append(("exit", t1 - last))
print(f"{label}: {t1 - t0:.3f} s")
for name, d in rows:
    print(f"  {name:<44} {d * 1000:8.1f} ms")
PY
  d=$(stagehand_run)
  STAGEHAND_CLEANUP=wait python3 "$w/phases.py" "install P (layout on another fs)" "$sh" --state-dir "$d/state" -v install "oci-layout:$(lay "$d"):v1" \
    --to "$d/dest/app" --map "*.so=$d/dest/lib" --map "*.control=$d/dest/ext" --map "*.sql=$d/dest/ext" > "$w/profile.txt"
  unscratch "$d"
  d=$(stagehand_run); L=$(lay "$d") install_p "$d/state" "$d/dest" v1; left_behind "$d/state"; sync
  STAGEHAND_CLEANUP=wait python3 "$w/phases.py" "upgrade P v1 -> v2 (layout on another fs)" "$sh" --state-dir "$d/state" -v install "oci-layout:$(lay "$d"):v2" \
    --to "$d/dest/app" --map "*.so=$d/dest/lib" --map "*.control=$d/dest/ext" --map "*.sql=$d/dest/ext" >> "$w/profile.txt"
  unscratch "$d"
fi

# 7. registry pull vs skopeo copy (scripts/bench-pull.sh, if the registry tools are there)
pull=""
if [ -x scripts/bench-pull.sh ] && want pull && [ "$nopull" = 0 ]; then
  pull=$(scripts/bench-pull.sh 2>&1 | sed -n '/==> results/,$p') || pull="bench-pull.sh failed: $pull"
fi

echo
where="a fresh ext4 (loop file) per timed run"; [ "$fresh" = 1 ] || where="plain directories under $w (not root: no fresh filesystem per run)"
echo "stagehand benchmark — $(date -u +%Y-%m-%d) — $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, payload ${files} files / ${mib} MiB, median of ${runs}, $where"
printf '| %-46s | %-34s | %9s | %9s | %6s | %-8s |\n' "measure" "baseline (same run)" "stagehand" "baseline" "ratio" "goal"
printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..48})" "$(printf -- '-%.0s' {1..36})" "-----------" "-----------" "--------" "----------"
printf '%s\n' "${rows[@]}"
[ -n "$pull" ] && { echo; echo "registry pull (scripts/bench-pull.sh):"; echo "$pull"; }
[ -f "$w/profile.txt" ] && { echo; echo "phase profile (one run each, -v timestamps):"; cat "$w/profile.txt"; }
exit 0
