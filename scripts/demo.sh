#!/usr/bin/env bash
# Installs the shipped example artifact (examples/demo, an OCI image layout)
# offline into a scratch directory, upgrades it, and shows list/verify/history.
# Usage: scripts/demo.sh [DIR]   (default: a new temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo.sh: cargo is needed (install Rust)" >&2; exit 1; }
cargo build --quiet --bin stagehand
bin=$PWD/target/debug/stagehand
root=${1:-$(mktemp -d -t stagehand-demo.XXXXXX)}
state=$root/state
dest=$root/dest
mkdir -p "$dest"
# Each command removes what it replaced before it exits (by default a process
# it leaves behind does, after it reports), so the tree listed at the end is final.
export STAGEHAND_CLEANUP=wait
sh() { echo "+ stagehand $*"; "$bin" --state-dir "$state" "$@"; }
maps=(--to "$dest/app" --map "*.so=$dest/lib" --map "*.control=$dest/share/extension" --map "*.sql=$dest/share/extension")

sh install oci-layout:examples/demo:v1 "${maps[@]}"
sh list
sh verify
sh install oci-layout:examples/demo:v2 "${maps[@]}"
sh list
sh history
echo
echo "Installed tree under $dest:"
find "$dest" | sort | sed "s|^$root/||"
