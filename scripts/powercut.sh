#!/usr/bin/env bash
# Real power cuts: a qemu guest (Debian's kernel, busybox, the stagehand
# binary) upgrades a 2,000-file artifact on its own kernel and page cache,
# and the host SIGKILLs qemu at random instants, some right after the guest
# reported success. The disk images are then loop-mounted on the host,
# recovery runs (`status --json`), and the trees are hashed with Python's
# hashlib. See docs/proofs.md ("Real power cuts") for the model and the
# invariants; scripts/powercut.py does the work.
#
# Usage: scripts/powercut.sh [CUTS]      CUTS per configuration (default 10)
# Environment:
#   POWERCUT_CONFIGS=ext4-same,ext4-split,btrfs-state
#   POWERCUT_FILES=2000  POWERCUT_MIB=4   the artifact (files in the tar layer, MiB)
#   POWERCUT_IMAGE_MIB=256                 size of each disk image (more for a 20,000-file artifact)
#   POWERCUT_JOBS=0                        configurations cut at once, one guest each (0: one per core)
#   POWERCUT_SEED=1                        seed of the kill instants
#   POWERCUT_BUDGET=0                      seconds after which no new round starts (0: none)
#   POWERCUT_CACHE=DIR                     keeps the kernel .deb (default ~/.cache/stagehand-powercut)
#   POWERCUT_ACCEL=tcg                     or kvm, where /dev/kvm really boots a guest
#   POWERCUT_JSON=FILE                     every cut's outcome, as JSON
#   STAGEHAND_BIN=PATH                     binary under test (default target/release/stagehand, built if missing)
#   KEEP=1                                 keep the work directory even when all is well
# Needs root (loop mounts). Prints one line per configuration, e.g.
#   powercut ext4-same: 24 cuts, 0 violations, 3 reported-success (...)
# and exits 1 if any cut violated an invariant (the work directory, with
# the images and console of the violating cuts, is then kept).
set -euo pipefail
export LC_ALL=C
umask 022

CUTS="${1:-10}"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ "$(id -u)" != 0 ]; then
    echo "powercut: needs root (it loop-mounts the guest's disk images)" >&2
    exit 2
fi
pkgs=()
command -v qemu-system-x86_64 > /dev/null 2>&1 || pkgs+=(qemu-system-x86)
command -v busybox > /dev/null 2>&1 || pkgs+=(busybox-static)
command -v mkfs.btrfs > /dev/null 2>&1 || pkgs+=(btrfs-progs)
command -v mkfs.ext4 > /dev/null 2>&1 || pkgs+=(e2fsprogs)
command -v python3 > /dev/null 2>&1 || pkgs+=(python3)
if [ "${#pkgs[@]}" -gt 0 ] || ! apt-cache show linux-image-amd64 > /dev/null 2>&1; then
    echo "powercut: installing ${pkgs[*]:-nothing} (and refreshing the package lists for the kernel)" >&2
    apt-get update -qq
    if [ "${#pkgs[@]}" -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" > /dev/null
    fi
fi
if ! busybox --list | grep -x depmod > /dev/null; then
    echo "powercut: this busybox has no depmod applet; install busybox-static" >&2
    exit 2
fi

bin="${STAGEHAND_BIN:-$repo/target/release/stagehand}"
if [ ! -x "$bin" ]; then
    echo "powercut: building $bin" >&2
    (cd "$repo" && cargo build --release --bin stagehand >&2)
fi

# The guest mounts its disks at the host's own path (the journal records
# absolute paths): keep it short and free of spaces.
work=$(mktemp -d /tmp/stagehand-powercut.XXXXXX)
rc=0
python3 "$repo/scripts/powercut.py" --cuts "$CUTS" --bin "$bin" --work "$work" \
    --configs "${POWERCUT_CONFIGS:-ext4-same,ext4-split,btrfs-state}" \
    --files "${POWERCUT_FILES:-2000}" --mib "${POWERCUT_MIB:-4}" --seed "${POWERCUT_SEED:-1}" \
    --image-mib "${POWERCUT_IMAGE_MIB:-256}" --jobs "${POWERCUT_JOBS:-0}" \
    --budget "${POWERCUT_BUDGET:-0}" --accel "${POWERCUT_ACCEL:-tcg}" --cache "${POWERCUT_CACHE:-${HOME:-/root}/.cache/stagehand-powercut}" \
    ${POWERCUT_JSON:+--json "$POWERCUT_JSON"} || rc=$?
# Never leave a mount behind, whatever happened.
for m in "$work"/*/mnt/b "$work"/*/mnt/a; do
    if mountpoint -q "$m" 2> /dev/null; then umount "$m" || true; fi
done
if [ "$rc" = 0 ] && [ "${KEEP:-0}" != 1 ]; then
    rm -rf "$work"
else
    # The pristine and last cut's images are large and say nothing more.
    rm -f "$work"/*/pristine-*.img "$work"/*/cut-*.img "$work"/*/precut-*.img
    echo "powercut: work directory kept at $work" >&2
fi
exit "$rc"
