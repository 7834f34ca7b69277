#!/usr/bin/env bash
# Builds small Steampipe example artifacts, with Steampipe's real media
# types, as OCI image layouts under examples/steampipe-{plugin,db,fdw}/, each
# with tags v1 and v2. The source files are written first under
# examples/src/steampipe/<kind>/<ver>/ (tests compare installed files with
# them), then packed deterministically: same script, same bytes.
#
# Usage: scripts/make-steampipe-examples.sh          rebuild
#        scripts/make-steampipe-examples.sh --check  fail if the committed output differs
#
# Needs only bash, GNU tar, gzip, sha256sum, find, sort, stat. No network.
set -euo pipefail
export LC_ALL=C TZ=UTC
umask 022

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
die() { echo "make-steampipe-examples: $*" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out_root="$repo/examples"
src_root="$repo/examples/src/steampipe"
if [ "$check" = 1 ]; then
  out_root="$work/out"
  src_root="$work/out/src/steampipe"
fi

mt_manifest="application/vnd.oci.image.manifest.v1+json"
mt_index="application/vnd.oci.image.index.v1+json"
mt_config="application/vnd.turbot.steampipe.config.v1+json"
platforms=(linux-amd64 linux-arm64 darwin-amd64)
db_version=14.19.0

put_blob() { # FILE -> "sha256:<hex> <size>", moved into $build
  local hex size
  hex=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv -f "$1" "$build/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}
descriptor() { # MEDIA_TYPE DIGEST SIZE [TITLE]
  if [ -n "${4:-}" ]; then
    printf '{"mediaType":"%s","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.title":"%s"}}' "$1" "$2" "$3" "$4"
  else
    printf '{"mediaType":"%s","digest":"%s","size":%s}' "$1" "$2" "$3"
  fi
}
tar_dir() { # DIR OUT: deterministic tar of DIR's contents, no "./" entry
  (cd "$1" && find . -mindepth 1 -printf '%P\n' | sort) > "$work/list"
  tar --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
      --no-recursion -C "$1" -cf "$2" -T "$work/list"
}
layer_file() { # MEDIA_TYPE FILE [TITLE] -> appends a descriptor to $layers
  cp "$2" "$work/blob"
  local d n
  read -r d n < <(put_blob "$work/blob")
  layers+="${layers:+,}$(descriptor "$1" "$d" "$n" "${3:-}")"
}
layer_gzip() { # MEDIA_TYPE FILE TITLE
  gzip -n -9 -c "$2" > "$work/blob.gz"
  local d n
  read -r d n < <(put_blob "$work/blob.gz")
  layers+="${layers:+,}$(descriptor "$1" "$d" "$n" "$3")"
}
layer_tar() { # MEDIA_TYPE DIR
  tar_dir "$2" "$work/blob.tar"
  local d n
  read -r d n < <(put_blob "$work/blob.tar")
  layers+="${layers:+,}$(descriptor "$1" "$d" "$n")"
}

# ---- sources ---------------------------------------------------------------
write_sources() {
  local k ver s
  for ver in v1 v2; do
    s="$src_root/plugin/$ver"
    rm -rf "$s"; mkdir -p "$s/docs/tables" "$s/config"
    printf '#!/bin/sh\necho "steampipe-plugin-demo %s"\n' "$ver" > "$s/steampipe-plugin-demo.plugin"
    printf 'Apache License 2.0 (demo plugin %s)\n' "$ver" > "$s/LICENSE"
    printf '# Demo plugin %s\n' "$ver" > "$s/docs/index.md"
    printf '# Table: demo_table (%s)\n' "$ver" > "$s/docs/tables/demo_table.md"
    printf 'connection "demo" {\n  plugin = "demo"\n  # %s\n}\n' "$ver" > "$s/config/demo.spc"

    s="$src_root/db/$ver"
    rm -rf "$s"; mkdir -p "$s/postgres/bin" "$s/postgres/lib/postgresql" "$s/postgres/share/postgresql/extension"
    printf '#!/bin/sh\necho "postgres (steampipe db %s)"\n' "$ver" > "$s/postgres/bin/postgres"
    printf 'plpgsql library %s\n' "$ver" > "$s/postgres/lib/postgresql/plpgsql.so"
    printf "comment = 'PL/pgSQL %s'\n" "$ver" > "$s/postgres/share/postgresql/extension/plpgsql.control"
    printf 'PostgreSQL License (%s)\n' "$ver" > "$s/LICENSE"

    s="$src_root/fdw/$ver"
    rm -rf "$s"; mkdir -p "$s"
    printf 'steampipe_postgres_fdw binary %s\n' "$ver" > "$s/steampipe_postgres_fdw.so"
    printf "comment = 'Steampipe FDW %s'\ndefault_version = '1.0'\n" "$ver" > "$s/steampipe_postgres_fdw.control"
    printf -- '-- steampipe_postgres_fdw--1.0.sql (%s)\nCREATE FUNCTION fdw_handler() RETURNS fdw_handler;\n' "$ver" > "$s/steampipe_postgres_fdw--1.0.sql"
  done
  find "$src_root" -type d -exec chmod 0755 {} +
  find "$src_root" -type f -exec chmod 0644 {} +
  chmod 0755 "$src_root"/plugin/v*/steampipe-plugin-demo.plugin "$src_root"/db/v*/postgres/bin/postgres "$src_root"/fdw/v*/steampipe_postgres_fdw.so
}

# ---- layouts ----------------------------------------------------------------
build_layout() { # KIND
  local kind=$1 ver p s entries=() config_json
  build="$work/steampipe-$kind"
  rm -rf "$build"; mkdir -p "$build/blobs/sha256"
  printf '{"imageLayoutVersion":"1.0.0"}\n' > "$build/oci-layout"
  for ver in v1 v2; do
    s="$src_root/$kind/$ver"
    layers=""
    case $kind in
      plugin)
        for p in "${platforms[@]}"; do
          layer_gzip "application/vnd.turbot.steampipe.plugin.$p.layer.v1+gzip" "$s/steampipe-plugin-demo.plugin" steampipe-plugin-demo.plugin.gz
        done
        layer_file application/vnd.turbot.steampipe.plugin.license.layer.v1+text "$s/LICENSE" LICENSE
        layer_tar application/vnd.turbot.steampipe.plugin.docs.layer.v1+tar "$s/docs"
        layer_tar application/vnd.turbot.steampipe.plugin.spc.layer.v1+tar "$s/config"
        config_json=$(printf '{"plugin":{"name":"demo","organization":"turbot","version":"%s.0.0"}}' "${ver#v}")
        ;;
      db)
        for p in "${platforms[@]}"; do
          layer_tar "application/vnd.turbot.steampipe.db.$p.layer.v1+tar" "$s/postgres"
        done
        layer_file application/vnd.turbot.steampipe.db.license.layer.v1+text "$s/LICENSE" LICENSE
        config_json=$(printf '{"db":{"name":"embedded-postgres","version":"%s"}}' "$db_version")
        ;;
      fdw)
        for p in "${platforms[@]}"; do
          layer_gzip "application/vnd.turbot.steampipe.fdw.$p.layer.v1+gzip" "$s/steampipe_postgres_fdw.so" steampipe_postgres_fdw.so.gz
        done
        layer_file application/vnd.turbot.steampipe.fdw.control.layer.v1+text "$s/steampipe_postgres_fdw.control" steampipe_postgres_fdw.control
        layer_file application/vnd.turbot.steampipe.fdw.sql.layer.v1+text "$s/steampipe_postgres_fdw--1.0.sql" steampipe_postgres_fdw--1.0.sql
        config_json=$(printf '{"fdw":{"name":"fdw","version":"%s.0.0"}}' "${ver#v}")
        ;;
    esac
    printf '%s' "$config_json" > "$work/config"
    read -r cd cs < <(put_blob "$work/config")
    local annotations=""
    [ "$kind" = db ] && annotations=$(printf ',"annotations":{"org.opencontainers.image.version":"%s"}' "$db_version")
    printf '{"schemaVersion":2,"mediaType":"%s","config":%s,"layers":[%s]%s}\n' \
      "$mt_manifest" "$(descriptor "$mt_config" "$cd" "$cs")" "$layers" "$annotations" > "$work/manifest"
    read -r md ms < <(put_blob "$work/manifest")
    entries+=("$(printf '{"mediaType":"%s","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}' "$mt_manifest" "$md" "$ms" "$ver")")
  done
  printf '{"schemaVersion":2,"mediaType":"%s","manifests":[%s]}\n' "$mt_index" "$(IFS=,; echo "${entries[*]}")" > "$build/index.json"
  chmod -R u=rwX,go=rX "$build"
  rm -rf "$out_root/steampipe-$kind"
  mkdir -p "$out_root"
  mv "$build" "$out_root/steampipe-$kind"
}

write_sources
for kind in plugin db fdw; do build_layout "$kind"; done

if [ "$check" = 1 ]; then
  for kind in plugin db fdw; do
    diff -r "$out_root/steampipe-$kind" "$repo/examples/steampipe-$kind" || die "examples/steampipe-$kind is stale; run $0"
  done
  diff -r "$src_root" "$repo/examples/src/steampipe" || die "examples/src/steampipe is stale; run $0"
  echo "steampipe examples are up to date"
else
  du -sh "$repo"/examples/steampipe-*
fi
