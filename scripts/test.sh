#!/usr/bin/env bash
# The one command that runs every check of stagehand on a fresh Debian
# machine (as root, as CI does): formatting, clippy, every test target
# (unit, integration, crash matrix), the doc tests, and the CLI and crash
# matrix tests once more as an ordinary user (uid 65534). Prints a summary and
# exits non-zero if any step failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found; install the Rust toolchain (rustup) first" >&2
    exit 1
fi

# ---------------------------------------------------------------------------
# System packages.
# REGISTRY TESTS: Debian's docker-registry (the real registry the tests
# start, one per test, on free loopback ports: no service is started here),
# skopeo (pushes the test artifacts) and htpasswd (apache2-utils, for the
# credentials test). tests/registry.rs skips loudly without them, and fails
# when CI is set. tests/mirrors.rs also needs openssl (its CAs and certificates).
# SIGNATURE TESTS: openssl makes the keys and signs the cosign payloads
# (tests/signature.rs), an independent signer; it also signs the DSSE of the
# cosign 3 bundles (tests/signature_bundle.rs, whose referrers-API proxy is python3).
registry_pkgs=()
command -v openssl >/dev/null 2>&1 || registry_pkgs+=(openssl)
command -v docker-registry >/dev/null 2>&1 || registry_pkgs+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || registry_pkgs+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || registry_pkgs+=(apache2-utils)
# POWER-CUT TEST (tests/powercut.rs, scripts/powercut.sh): qemu, busybox
# for the guest's /init, btrfs-progs for the btrfs state disk. The guest's
# kernel is Debian's linux-image-amd64 .deb, which the script downloads
# (apt-get download) and extracts; nothing of it is installed on the host.
command -v qemu-system-x86_64 >/dev/null 2>&1 || registry_pkgs+=(qemu-system-x86)
command -v busybox >/dev/null 2>&1 || registry_pkgs+=(busybox-static)
command -v mkfs.btrfs >/dev/null 2>&1 || registry_pkgs+=(btrfs-progs)
# BLOCK-REPLAY TEST (tests/blockreplay.rs, scripts/blockreplay.sh): dmsetup
# goes into the guest (dm-log-writes), xfsprogs makes the XFS images.
command -v dmsetup >/dev/null 2>&1 || registry_pkgs+=(dmsetup)
command -v mkfs.xfs >/dev/null 2>&1 || registry_pkgs+=(xfsprogs)
# HOSTILE-SERVER TESTS (tests/hostile.rs, tests/client_safety.rs): python3 runs the hostile loopback
# server, openssl makes its TLS certificate, setpriv (util-linux) runs the
# binary as uid 65534 for the state-dir cases.
command -v python3 >/dev/null 2>&1 || registry_pkgs+=(python3)
command -v openssl >/dev/null 2>&1 || registry_pkgs+=(openssl)
command -v setpriv >/dev/null 2>&1 || registry_pkgs+=(util-linux)
# SCHEMA TESTS (tests/schemas.rs): python3's jsonschema (draft 2020-12)
# validates every command's --json output against docs/schemas/.
python3 -c 'from jsonschema import Draft202012Validator' >/dev/null 2>&1 || registry_pkgs+=(python3-jsonschema)
if [ "${#registry_pkgs[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing ${registry_pkgs[*]} for the registry and power-cut tests"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${registry_pkgs[@]}"
    else
        echo "test.sh: ${registry_pkgs[*]} missing and not installable here (needs root and apt-get)" >&2
    fi
fi
# CONTAINMENT TESTS: mkfs.ext4 (e2fsprogs) for the full-disk test's loop
# mount, setpriv (util-linux) for the unprivileged pass below.
fs_pkgs=()
command -v mkfs.ext4 >/dev/null 2>&1 || fs_pkgs+=(e2fsprogs)
command -v setpriv >/dev/null 2>&1 || fs_pkgs+=(util-linux)
if [ "${#fs_pkgs[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${fs_pkgs[*]} for the containment tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${fs_pkgs[@]}"
fi
# OUTPUT AND HELP TESTS (tests/output.rs, tests/help_examples.rs): man-db runs
# `man -l` of a help example, groff (groff-base) renders every man page and
# must not warn, script (bsdutils) gives the colour and progress tests a terminal.
doc_pkgs=()
command -v man >/dev/null 2>&1 || doc_pkgs+=(man-db)
command -v groff >/dev/null 2>&1 || doc_pkgs+=(groff-base)
command -v script >/dev/null 2>&1 || doc_pkgs+=(bsdutils)
if [ "${#doc_pkgs[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${doc_pkgs[*]} for the output and help tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${doc_pkgs[@]}"
fi
# KEYLESS SIGNATURE TEST (tests/signature_keyless.rs): python3's cryptography
# makes a private Sigstore trust root and bundles; Python sigstore 4.x (from
# PyPI) is the independent verifier stagehand's verdicts are compared with.
if ! python3 -c 'import cryptography, rfc8785, sigstore.verify' >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    if ! python3 -m pip --version >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip
    fi
    echo "test.sh: installing Python sigstore 4.x for the keyless signature test"
    python3 -m pip install -q --break-system-packages "sigstore>=4,<5" ||
        python3 -m pip install -q "sigstore>=4,<5"
fi
# ---------------------------------------------------------------------------

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# One build from scratch gains nothing from cargo's incremental cache, which
# costs gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# The build and the tests' scratch files need disk: say so up front when it is
# short, so a "No space left on device" later is not a mystery.
need_gib=6
for d in target "${TMPDIR:-/tmp}"; do
    [ -d "$d" ] || d=.
    free_gib=$(($(df -Pk "$d" | awk 'NR == 2 { print $4 }') / 1048576))
    if [ "$free_gib" -lt "$need_gib" ]; then
        echo "test.sh: warning: only ${free_gib} GiB free on the file system of ${d}; a clean run needs about ${need_gib} GiB: free some space if a step fails with 'No space left on device'" >&2
    fi
done
# Crash tests abort the binary thousands of times: never write core files.
ulimit -c 0 || true

log_dir="$(mktemp -d "${TMPDIR:-/tmp}/stagehand-test.XXXXXX")"
trap 'rm -rf "$log_dir"' EXIT

summary=()
failed=0

# step NAME CMD...: runs CMD, records pass/fail and the time it took.
step() {
    local name="$1"
    shift
    echo
    echo "==> ${name}: $*"
    local start=$SECONDS rc=0
    "$@" 2>&1 | tee "${log_dir}/${name}.log" || rc=$?
    local took=$((SECONDS - start))
    if [ "$rc" -eq 0 ]; then
        summary+=("ok     ${name} (${took}s)")
    else
        summary+=("FAILED ${name} (${took}s, exit ${rc})")
        failed=$((failed + 1))
    fi
}

if cargo fmt --version >/dev/null 2>&1; then
    step fmt cargo fmt --all -- --check
else
    summary+=("FAILED fmt (rustfmt is not installed: rustup component add rustfmt)")
    failed=$((failed + 1))
fi

if cargo clippy --version >/dev/null 2>&1; then
    step clippy cargo clippy --all-targets -- -D warnings
else
    summary+=("FAILED clippy (clippy is not installed: rustup component add clippy)")
    failed=$((failed + 1))
fi

step tests cargo test --all-targets --no-fail-fast -- --test-threads=2
step doctests cargo test --doc

# ---------------------------------------------------------------------------
# The same CLI and crash-matrix tests again as an ordinary user (uid 65534,
# "nobody"), as most people run stagehand (state in ~/.local/state): the
# test binaries built above run through setpriv, without rebuilding, with a
# HOME and a scratch dir that user owns. The binaries read the repository
# (examples/) and run target/debug/stagehand by absolute path, so those
# must be readable by that user; the run says so and fails when they are
# not. Root-only cases (mounts) skip loudly in this pass
# (STAGEHAND_TEST_UNPRIVILEGED), having run as root above.
unprivileged_tests=(cli_basic cli_commands crash_matrix containment safety adopt placement power_loss_journal)
run_unprivileged() {
    if [ "$(id -u)" != 0 ]; then
        echo "already an ordinary user ($(id -u)): the run above was unprivileged"
        return 0
    fi
    local args=() t
    for t in "${unprivileged_tests[@]}"; do args+=(--test "$t"); done
    local exes
    exes="$(cargo test --no-run --message-format=json "${args[@]}" 2>/dev/null |
        grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//' | grep '/deps/')"
    local scratch
    scratch="$(mktemp -d "${TMPDIR:-/tmp}/stagehand-nobody.XXXXXX")"
    mkdir -p "$scratch/home" "$scratch/tmp"
    chown -R 65534:65534 "$scratch"
    local as_nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups --
        env HOME="$scratch/home" TMPDIR="$scratch/tmp" STAGEHAND_TEST_UNPRIVILEGED=1 PATH="$PATH")
    # A checkout under a private directory (e.g. /root/...) cannot be
    # reached by that user: grant search (o+x, not read) on each ancestor
    # that lacks it, for this pass only, and put the modes back after.
    local d restore=()
    d="$(pwd)"
    while [ "$d" != / ]; do
        if [ "$(( $(stat -c '%#a' "$d") & 1 ))" = 0 ]; then
            restore+=("$(stat -c '%a' "$d"):$d")
            chmod o+x "$d"
        fi
        d="$(dirname "$d")"
    done
    # shellcheck disable=SC2317
    restore_modes() { local r; for r in "${restore[@]}"; do chmod "${r%%:*}" "${r#*:}"; done; }
    if ! "${as_nobody[@]}" test -r examples/demo/index.json -a -x target/debug/stagehand; then
        restore_modes
        echo "uid 65534 cannot read $(pwd)/examples or run target/debug/stagehand: make the checkout world-readable (chmod o+rx on its path)" >&2
        rm -rf "$scratch"
        return 1
    fi
    local rc=0 exe
    for exe in $exes; do
        echo "--- as uid 65534: $(basename "$exe")"
        "${as_nobody[@]}" "$exe" --test-threads=2 || rc=1
    done
    restore_modes
    rm -rf "$scratch"
    return "$rc"
}
step unprivileged run_unprivileged

# Sum the test counts of every `test result:` line.
read -r passed failed_tests ignored < <(
    cat "${log_dir}/tests.log" "${log_dir}/doctests.log" "${log_dir}/unprivileged.log" 2>/dev/null |
        awk '/^test result:/ {
                for (i = 1; i <= NF; i++) {
                    if ($(i) ~ /^passed;?$/) p += $(i - 1)
                    if ($(i) ~ /^failed;?$/) f += $(i - 1)
                    if ($(i) ~ /^ignored;?$/) g += $(i - 1)
                }
             }
             END { printf "%d %d %d\n", p, f, g }'
)

echo
echo "==> summary"
for line in "${summary[@]}"; do
    echo "  ${line}"
done
echo "tests: ${passed} passed, ${failed_tests} failed, ${ignored} skipped"

if [ "$failed" -ne 0 ]; then
    echo "test.sh: ${failed} step(s) failed" >&2
    exit 1
fi
