#!/usr/bin/env bash
# Random-kill stress test: SIGKILLs (a real `kill -9`, at random delays) a
# large install / upgrade / uninstall N times, recovering in between, and
# checks the invariants with independent sha256sum-based tree hashes.
#
# Usage: scripts/stress-kill.sh [N]          N kills (default 1000)
# Environment:
#   STRESS_FILES=2000   files in the artifact's directory tree
#   STRESS_MB=50        total size of those files (MiB)
#   STRESS_SEED=1       seed of the kill delays and the operation choice
#   STAGEHAND_BIN=PATH  binary to test (default: target/release/stagehand,
#                       built if missing)
#   KEEP=1              keep the work directory
#
# The artifact (two versions, v1 and v2) is generated here and built into an
# OCI image layout with tar, sha256sum and printf only: one uncompressed tar
# layer (the tree, installed with --to DEST/app) and two title-annotated file
# layers (installed with --map into DEST/lib). v2 changes 10% of the files,
# drops 5% and adds 100.
#
# After every kill: `status --json` must succeed (it recovers) with nothing
# pending; DEST must hash exactly to "nothing installed", v1 or v2, and be
# the version before the kill or the one the killed command was installing;
# no `.stagehand-` name may be left; `list --json` must list the digest of
# the version on disk (or nothing). A command that finished before its kill
# must have taken effect. Prints counts of kills and outcomes; exits 1 at
# the first violation (keeping the work directory for inspection).
set -euo pipefail
export LC_ALL=C
umask 022

N="${1:-1000}"
FILES="${STRESS_FILES:-2000}"
MB="${STRESS_MB:-50}"
SEED="${STRESS_SEED:-1}"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="${STAGEHAND_BIN:-$repo/target/release/stagehand}"
if [ ! -x "$bin" ]; then
    echo "stress-kill: building $bin" >&2
    (cd "$repo" && cargo build --release --bin stagehand >&2)
fi
ulimit -c 0 || true

work=$(mktemp -d "${TMPDIR:-/tmp}/stagehand-stress.XXXXXX")
work=$(cd "$work" && pwd -P)
cleanup() { if [ "${KEEP:-0}" != 1 ] && [ "${failed:-0}" = 0 ]; then rm -rf "$work"; fi; }
trap cleanup EXIT
failed=0
die() {
    failed=1
    echo "stress-kill: VIOLATION: $*" >&2
    echo "stress-kill: work directory kept at $work" >&2
    exit 1
}

RANDOM="$SEED"
# rnd N: a random number in [0, N) (30 bits of $RANDOM).
rnd() { echo $(((RANDOM << 15 | RANDOM) % $1)); }

# ---------------------------------------------------------------------------
# The artifact
# ---------------------------------------------------------------------------
src="$work/src"
echo "stress-kill: generating $FILES files, $MB MiB, in $src" >&2
avg=$((MB * 1024 * 1024 / FILES))
mkdir -p "$src/v1/app" "$src/v1/files"
for ((i = 0; i < FILES; i++)); do
    d="$src/v1/app/d$((i % 40))/e$((i % 7))"
    mkdir -p "$d"
    head -c $((avg / 2 + $(rnd "$avg"))) /dev/urandom > "$d/f$i.dat"
done
chmod 0755 "$src/v1/app/d0/e0/f0.dat"
head -c 1048576 /dev/urandom > "$src/v1/files/big.so"
printf 'version 1\n' > "$src/v1/files/big.control"
cp -a "$src/v1" "$src/v2"
for ((i = 0; i < FILES; i += 10)); do
    f="$src/v2/app/d$((i % 40))/e$((i % 7))/f$i.dat"
    head -c $((avg / 2 + $(rnd "$avg"))) /dev/urandom > "$f"
done
for ((i = 5; i < FILES; i += 20)); do rm -f "$src/v2/app/d$((i % 40))/e$((i % 7))/f$i.dat"; done
mkdir -p "$src/v2/app/new"
for ((i = 0; i < 100; i++)); do head -c 2048 /dev/urandom > "$src/v2/app/new/n$i.dat"; done
head -c 1048576 /dev/urandom > "$src/v2/files/big.so"
printf 'version 2\n' > "$src/v2/files/big.control"

layout="$work/layout"
mkdir -p "$layout/blobs/sha256"
printf '{"imageLayoutVersion":"1.0.0"}\n' > "$layout/oci-layout"
# put FILE: moves FILE into the blob store; prints "sha256:HEX SIZE".
put() {
    local h s
    h=$(sha256sum "$1" | cut -d' ' -f1)
    s=$(stat -c %s "$1")
    mv -f "$1" "$layout/blobs/sha256/$h"
    echo "sha256:$h $s"
}
printf '{}' > "$work/cfg"
read -r cfgd cfgs < <(put "$work/cfg")
entries=()
declare -A digest_of
for v in v1 v2; do
    (cd "$src/$v/app" && find . -mindepth 1 -printf '%P\n' | sort) > "$work/list"
    tar --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --no-recursion \
        -C "$src/$v/app" -cf "$work/layer.tar" -T "$work/list"
    read -r td ts < <(put "$work/layer.tar")
    layers=$(printf '{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}' "$td" "$ts")
    for f in big.so big.control; do
        cp "$src/$v/files/$f" "$work/file"
        read -r fd fs < <(put "$work/file")
        layers+=$(printf ',{"mediaType":"application/octet-stream","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.title":"%s"}}' "$fd" "$fs" "$f")
    done
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.stagehand.stress.v1","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
        "$cfgd" "$cfgs" "$layers" > "$work/manifest"
    read -r md ms < <(put "$work/manifest")
    digest_of[$v]="$md"
    entries+=("$(printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}' "$md" "$ms" "$v")")
done
joined=$(IFS=,; echo "${entries[*]}")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}\n' "$joined" > "$layout/index.json"

# ---------------------------------------------------------------------------
# Independent tree hashes
# ---------------------------------------------------------------------------
# tree_hash DIR: one sha256 over every file's and symlink's path, type,
# permission bits and content (empty directories are not part of the claim).
tree_hash() {
    if [ ! -d "$1" ]; then
        echo none
        return
    fi
    (
        cd "$1"
        find . -mindepth 1 \( -type f -printf '%P f %m\n' -o -type l -printf '%P l %l\n' -o -type d -printf '' \) | sort
        find . -type f -print0 | sort -z | xargs -0 -r sha256sum
    ) | sha256sum | cut -d' ' -f1
}
expect="$work/expect"
empty_hash=$(mkdir -p "$expect/none" && tree_hash "$expect/none")
declare -A hash_of
for v in v1 v2; do
    mkdir -p "$expect/$v/lib"
    cp -a "$src/$v/app" "$expect/$v/app"
    cp -a "$src/$v/files/big.so" "$src/$v/files/big.control" "$expect/$v/lib/"
    chmod 0644 "$expect/$v/lib/"*
    hash_of[$v]=$(tree_hash "$expect/$v")
done
[ "${hash_of[v1]}" != "${hash_of[v2]}" ] || die "v1 and v2 hash the same"

dest="$work/dest"
state="$work/state"
mkdir -p "$dest"
args_for() { # VERSION -> install arguments
    echo install "oci-layout:$layout:$1" --name big --to "$dest/app" --map "big.*=$dest/lib"
}
shd() { "$bin" --state-dir "$state" "$@"; }

which_world() {
    local h
    h=$(tree_hash "$dest")
    case "$h" in
        "$empty_hash") echo none ;;
        "${hash_of[v1]}") echo v1 ;;
        "${hash_of[v2]}") echo v2 ;;
        *) echo "mixed:$h" ;;
    esac
}

# One clean pass to check the expectations and measure each kind of
# operation (the kills are spread over the duration of the kind killed);
# each is checked once the process it left behind, if any, has ended.
ms() { echo $(($(date +%s%N) / 1000000)); }
t0=$(ms)
# shellcheck disable=SC2046
shd $(args_for v1) > /dev/null
t1=$(ms)
flock "$state/lock" true
[ "$(which_world)" = v1 ] || die "a clean install of v1 does not hash as v1 ($(which_world))"
# shellcheck disable=SC2046
shd $(args_for v2) > /dev/null
t2=$(ms)
flock "$state/lock" true
[ "$(which_world)" = v2 ] || die "a clean upgrade to v2 does not hash as v2"
shd uninstall big > /dev/null
t3=$(ms)
flock "$state/lock" true
[ "$(which_world)" = none ] || die "a clean uninstall does not hash as nothing"
declare -A est=([install]=$((t1 - t0)) [upgrade]=$((t2 - t1)) [uninstall]=$((t3 - t2)))
echo "stress-kill: install ${est[install]} ms, upgrade ${est[upgrade]} ms, uninstall ${est[uninstall]} ms; killing $N times" >&2

cur=none
killed=0 finished=0 ended_old=0 ended_new=0 recovered_fwd=0 recovered_back=0
start=$SECONDS
for ((k = 1; k <= N; k++)); do
    r=$(rnd 4)
    case "$cur:$r" in
        none:*) op="install v1"; new=v1 ;;
        v1:0) op="uninstall"; new=none ;;
        v1:*) op="install v2"; new=v2 ;;
        v2:0 | v2:1) op="install v1"; new=v1 ;;
        v2:*) op="uninstall"; new=none ;;
    esac
    # The binary itself runs in the background (not a subshell), so that
    # $! is its pid and the kill lands on it.
    if [ "$op" = uninstall ]; then
        "$bin" --state-dir "$state" uninstall big > "$work/op.log" 2>&1 &
    else
        # shellcheck disable=SC2046
        "$bin" --state-dir "$state" $(args_for "${op#install }") > "$work/op.log" 2>&1 &
    fi
    pid=$!
    # The kill lands anywhere in [0, 1.2 x the kind's duration]. Durations
    # vary (syncfs flushes whatever else is dirty on the filesystem), so the
    # estimate follows the runs: a run that finished sets it, a kill late in
    # the window without the run finishing raises it.
    case "$cur:$new" in
        none:*) kind=install ;;
        *:none) kind=uninstall ;;
        *) kind=upgrade ;;
    esac
    op_ms=${est[$kind]}
    delay=$(rnd $((op_ms * 12 / 10 + 1)))
    started=$(ms)
    sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    kill -9 "$pid" 2> /dev/null || true
    rc=0
    wait "$pid" 2> /dev/null || rc=$?
    if [ "$rc" = 137 ]; then
        killed=$((killed + 1))
        if ((delay * 10 >= op_ms * 9)); then est[$kind]=$((op_ms * 5 / 4)); fi
    elif [ "$rc" = 0 ]; then
        finished=$((finished + 1))
        est[$kind]=$(($(ms) - started))
    else
        die "kill $k: '$op' failed by itself (exit $rc): $(cat "$work/op.log")"
    fi
    # A finished command may have left a process behind removing what it
    # replaced (it holds the lock): recovery is checked once it has ended.
    flock "$state/lock" true
    shd status --json > "$work/status.json" 2> "$work/status.err" ||
        die "kill $k: recovery failed: $(cat "$work/status.err")"
    grep -q '"pending": \[\]' "$work/status.json" || die "kill $k: pending after recovery: $(cat "$work/status.json")"
    grep -q 'rolled forward' "$work/status.json" && recovered_fwd=$((recovered_fwd + 1))
    grep -q 'rolled back' "$work/status.json" && recovered_back=$((recovered_back + 1))
    left=$(find "$dest" -name '*.stagehand-*' | head -3)
    [ -z "$left" ] || die "kill $k: leftovers after recovery: $left"
    now=$(which_world)
    case "$now" in
        mixed:*) die "kill $k ('$op' from $cur, ${delay} ms): DEST is neither nothing, v1 nor v2" ;;
    esac
    [ "$now" = "$cur" ] || [ "$now" = "$new" ] || die "kill $k: '$op' from $cur ended at $now"
    [ "$rc" != 0 ] || [ "$now" = "$new" ] || die "kill $k: '$op' exited 0 but DEST is $now"
    shd list --json > "$work/list.json" || die "kill $k: list failed"
    if [ "$now" = none ]; then
        ! grep -q '"name": "big"' "$work/list.json" || die "kill $k: nothing on disk, but big is listed"
    else
        grep -q "\"digest\": \"${digest_of[$now]}\"" "$work/list.json" ||
            die "kill $k: $now on disk, but the registry says: $(cat "$work/list.json")"
    fi
    if [ "$now" = "$new" ] && [ "$new" != "$cur" ]; then
        ended_new=$((ended_new + 1))
    else
        ended_old=$((ended_old + 1))
    fi
    cur=$now
    if ((k % 50 == 0)); then
        echo "stress-kill: $k/$N kills ($killed mid-run, $finished finished first; old $ended_old, new $ended_new; estimates ${est[install]}/${est[upgrade]}/${est[uninstall]} ms), $((SECONDS - start)) s" >&2
    fi
done
echo "stress-kill: $N kills of a $FILES-file, $MB MiB artifact: $killed killed mid-run, $finished finished before the kill; after recovery old $ended_old, new $ended_new (recovery rolled forward $recovered_fwd, back $recovered_back); 0 violations; $((SECONDS - start)) s"
