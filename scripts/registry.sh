#!/usr/bin/env bash
# Starts and stops a throwaway local OCI registry (Debian's docker-registry)
# for manual tests and benchmarks. The Rust tests (tests/registry.rs) start
# their own registries; this is for people and for scripts/bench-pull.sh.
#
# Usage:
#   scripts/registry.sh start DIR [PORT]   start a registry storing under DIR/root,
#                                          on 127.0.0.1:PORT (default: a free port);
#                                          prints 127.0.0.1:PORT when it answers /v2/
#   scripts/registry.sh stop DIR           kill the registry started with DIR
#   scripts/registry.sh push DIR LAYOUT TAG REPO:TAG
#                                          skopeo copy oci:LAYOUT:TAG to it
#
# Plain HTTP, no auth: use it with `stagehand install --plain-http`.
set -euo pipefail

die() { echo "registry.sh: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# answers PORT: true once GET /v2/ gets an HTTP answer.
answers() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" &&
      printf 'GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 &&
      IFS= read -r -t 2 reply <&3 &&
      [[ "$reply" == HTTP/* ]]
  ) 2>/dev/null
}

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start DIR [PORT] | stop DIR | push DIR LAYOUT TAG REPO:TAG"

case "$cmd" in
  start)
    command -v docker-registry >/dev/null || die "docker-registry is not installed (apt-get install docker-registry)"
    mkdir -p "$dir/root"
    dir=$(cd "$dir" && pwd)
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      die "a registry is already running for $dir (pid $(cat "$dir/pid"))"
    fi
    port=${3:-$(free_port)}
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/root
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  secret: stagehand-local-registry
EOF
    nohup docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    echo $! >"$dir/pid"
    echo "$port" >"$dir/port"
    for _ in $(seq 1 200); do
      if answers "$port"; then
        echo "127.0.0.1:$port"
        exit 0
      fi
      kill -0 "$(cat "$dir/pid")" 2>/dev/null || die "docker-registry exited; see $dir/registry.log"
      sleep 0.05
    done
    die "docker-registry did not answer on 127.0.0.1:$port; see $dir/registry.log"
    ;;
  stop)
    [ -f "$dir/pid" ] || die "no registry was started for $dir"
    pid=$(cat "$dir/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/pid"
    ;;
  push)
    [ $# -eq 5 ] || die "usage: $0 push DIR LAYOUT TAG REPO:TAG"
    port=$(cat "$dir/port")
    skopeo --insecure-policy copy --quiet --dest-tls-verify=false "oci:$3:$4" "docker://127.0.0.1:$port/$5"
    ;;
  *)
    die "unknown command $cmd"
    ;;
esac
