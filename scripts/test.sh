#!/usr/bin/env bash
# The one command that runs every check of stagehand on a fresh Debian
# machine (as root, as CI does): formatting, clippy, every test target
# (unit, integration, crash matrix) and the doc tests. Prints a summary and
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
# when CI is set.
registry_pkgs=()
command -v docker-registry >/dev/null 2>&1 || registry_pkgs+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || registry_pkgs+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || registry_pkgs+=(apache2-utils)
# HOSTILE-SERVER TESTS (tests/hostile.rs): python3 runs the hostile loopback
# server, openssl makes its TLS certificate, setpriv (util-linux) runs the
# binary as uid 65534 for the state-dir cases.
command -v python3 >/dev/null 2>&1 || registry_pkgs+=(python3)
command -v openssl >/dev/null 2>&1 || registry_pkgs+=(openssl)
command -v setpriv >/dev/null 2>&1 || registry_pkgs+=(util-linux)
if [ "${#registry_pkgs[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing ${registry_pkgs[*]} for the registry tests"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${registry_pkgs[@]}"
    else
        echo "test.sh: ${registry_pkgs[*]} missing and not installable here (needs root and apt-get)" >&2
    fi
fi
# ---------------------------------------------------------------------------

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
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

# Sum the test counts of every `test result:` line.
read -r passed failed_tests ignored < <(
    cat "${log_dir}/tests.log" "${log_dir}/doctests.log" 2>/dev/null |
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
