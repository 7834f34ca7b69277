#!/usr/bin/env bash
# Block-level crash states (issue 27): a qemu guest (Debian's kernel,
# busybox, dmsetup, the stagehand binary) installs, upgrades and uninstalls
# an artifact on a dm-log-writes device; the host rebuilds the disk at every
# flush and FUA point and at a seeded sample of states between two flushes,
# loop-mounts each (the file system replays its journal), runs recovery and
# checks the trees with hashlib. See docs/proofs.md ("Block-level crash
# states"); scripts/blockreplay.py does the work, scripts/blocklog.py reads
# the log.
#
# Usage: scripts/blockreplay.sh [FS [LAYOUT [SAMPLES [SEED]]]]
#   FS       ext4, xfs, btrfs or a comma-separated list (default ext4,xfs,btrfs)
#   LAYOUT   same (state dir beside the targets), split (on a second file
#            system), or both: same,split (default)
#   SAMPLES  states between flushes per recording (default 50)
#   SEED     seed of those samples (default 1)
# Environment:
#   BLOCKREPLAY_SKIPS=P1,P2   also one recording per STAGEHAND_SKIP_FSYNC value
#                             (e.g. fsops.fsync.journal:*), reported caught or not
#   BLOCKREPLAY_SKIPS_ONLY=1  only those recordings
#   BLOCKREPLAY_FILES=2000 BLOCKREPLAY_MIB=4   the artifact
#   BLOCKREPLAY_STOP=1        stop replaying a recording at its first violation
#   BLOCKREPLAY_JSON=FILE     every recording's summary, as JSON
#   BLOCKREPLAY_ACCEL=tcg     or kvm where it boots
#   BLOCKFAULT=1              instead of recording and replaying, write errors
#                             (scripts/blockfault.py): the upgrade runs into
#                             dm-flakey error_writes under the targets or the
#                             state dir; LAYOUT and SAMPLES are not used
#   BLOCKFAULT_UPS=0,1,2,3,4,6   seconds of healthy writes before the errors
#                             start, or @POINT[:N]: where stagehand reaches
#                             that kill point (e.g. @fsops.fsync_dir.cleanup:1)
#   BLOCKFAULT_PLACES=same:a,split:a,split:b   LAYOUT:DEVICE (a targets, b state dir)
#   BLOCKFAULT_SKIP=POINT:*   STAGEHAND_SKIP_FSYNC in the guest (a fix's control)
#   STAGEHAND_BIN=PATH        binary under test (default target/release/stagehand)
#   KEEP=1                    keep the work directory
# Needs root (loop mounts). Exits 1 if a recording without a skipped fsync
# has a violating state.
set -euo pipefail
export LC_ALL=C
umask 022

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
    echo "blockreplay: needs root (it loop-mounts the disk images)" >&2
    exit 2
fi
pkgs=()
command -v qemu-system-x86_64 > /dev/null 2>&1 || pkgs+=(qemu-system-x86)
command -v busybox > /dev/null 2>&1 || pkgs+=(busybox-static)
command -v mkfs.btrfs > /dev/null 2>&1 || pkgs+=(btrfs-progs)
command -v mkfs.xfs > /dev/null 2>&1 || pkgs+=(xfsprogs)
command -v mkfs.ext4 > /dev/null 2>&1 || pkgs+=(e2fsprogs)
command -v dmsetup > /dev/null 2>&1 || pkgs+=(dmsetup)
command -v python3 > /dev/null 2>&1 || pkgs+=(python3)
if [ "${#pkgs[@]}" -gt 0 ] || ! apt-cache show linux-image-amd64 > /dev/null 2>&1; then
    echo "blockreplay: installing ${pkgs[*]:-nothing} (and refreshing the package lists for the kernel)" >&2
    apt-get update -qq
    if [ "${#pkgs[@]}" -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" > /dev/null
    fi
fi

bin="${STAGEHAND_BIN:-$repo/target/release/stagehand}"
if [ ! -x "$bin" ]; then
    echo "blockreplay: building $bin" >&2
    (cd "$repo" && cargo build --release --bin stagehand >&2)
fi

work=$(mktemp -d /tmp/stagehand-blockreplay.XXXXXX)
extra=()
if [ "${BLOCKREPLAY_SKIPS_ONLY:-0}" = 1 ]; then extra+=(--no-clean); fi
if [ "${BLOCKREPLAY_STOP:-0}" = 1 ]; then extra+=(--stop-at-first); fi
rc=0
common=(--bin "$bin" --work "$work" --files "${BLOCKREPLAY_FILES:-2000}" --mib "${BLOCKREPLAY_MIB:-4}"
    --accel "${BLOCKREPLAY_ACCEL:-tcg}" --cache "${POWERCUT_CACHE:-${HOME:-/root}/.cache/stagehand-powercut}"
    ${BLOCKREPLAY_JSON:+--json "$BLOCKREPLAY_JSON"})
if [ "${BLOCKFAULT:-0}" = 1 ]; then
    python3 "$repo/scripts/blockfault.py" "${common[@]}" --fs "${1:-ext4,xfs,btrfs}" \
        --ups "${BLOCKFAULT_UPS:-0,1,2,3,4,6}" --places "${BLOCKFAULT_PLACES:-same:a,split:a,split:b}" \
        --skip "${BLOCKFAULT_SKIP:-}" || rc=$?
else
    python3 "$repo/scripts/blockreplay.py" "${common[@]}" \
        --fs "${1:-ext4,xfs,btrfs}" --layout "${2:-same,split}" --samples "${3:-50}" --seed "${4:-1}" \
        --skips "${BLOCKREPLAY_SKIPS:-}" "${extra[@]}" || rc=$?
fi
# Never leave a mount behind, whatever happened.
for m in "$work"/*/mnt/b "$work"/*/mnt/a; do
    if mountpoint -q "$m" 2> /dev/null; then umount "$m" || true; fi
done
if [ "$rc" = 0 ] && [ "${KEEP:-0}" != 1 ]; then
    rm -rf "$work"
else
    echo "blockreplay: work directory kept at $work" >&2
fi
exit "$rc"
