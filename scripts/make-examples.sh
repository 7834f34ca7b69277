#!/usr/bin/env bash
# Builds the example OCI image layout examples/demo/ from the source trees in
# examples/src/demo/<ver>/ (v1 and v2), deterministically: the same sources
# give byte-identical blobs, manifests and index.json on every run.
#
# Usage: scripts/make-examples.sh          rebuild examples/demo/
#        scripts/make-examples.sh --check  rebuild into a temp dir and fail if
#                                          it differs from examples/demo/
#
# Needs only bash, GNU tar, gzip, sha256sum, find, sort, stat. No network.
set -euo pipefail
export LC_ALL=C TZ=UTC
umask 022

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$repo/examples/src/demo"
out="$repo/examples/demo"
versions=(v1 v2)
artifact_type="application/vnd.stagehand.demo.v1"
mt_manifest="application/vnd.oci.image.manifest.v1+json"
mt_index="application/vnd.oci.image.index.v1+json"
mt_empty="application/vnd.oci.empty.v1+json"
mt_tar_gzip="application/vnd.oci.image.layer.v1.tar+gzip"
mt_file="application/octet-stream"
# Plain-file layers, in manifest order, each annotated with its title.
files=(demo_fdw.so demo_fdw.control demo_fdw--1.0.sql)

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

die() { echo "make-examples: $*" >&2; exit 1; }

# put_blob FILE: moves FILE into the layout's blob store and prints
# "sha256:<hex> <size>".
put_blob() {
  local hex size
  hex=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv -f "$1" "$build/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}

# descriptor MEDIA_TYPE DIGEST SIZE [ANNOTATIONS_JSON]: one JSON descriptor.
descriptor() {
  if [ -n "${4:-}" ]; then
    printf '{"mediaType":"%s","digest":"%s","size":%s,"annotations":%s}' "$1" "$2" "$3" "$4"
  else
    printf '{"mediaType":"%s","digest":"%s","size":%s}' "$1" "$2" "$3"
  fi
}

# Names go into JSON unescaped: refuse anything that would need escaping.
json_safe() { [[ "$1" =~ ^[A-Za-z0-9._+-]+$ ]] || die "name needs JSON escaping: $1"; }

[ -d "$src" ] || die "missing $src"
for ver in "${versions[@]}"; do
  [ -d "$src/$ver/app" ] || die "missing $src/$ver/app"
  for f in "${files[@]}"; do
    [ -f "$src/$ver/files/$f" ] || die "missing $src/$ver/files/$f"
  done
done

# Fix the source modes so the tar is the same whatever the checkout's umask
# or core.fileMode: directories 0755, files 0644, bin/* 0755.
for ver in "${versions[@]}"; do
  find "$src/$ver" -type d -exec chmod 0755 {} +
  find "$src/$ver" -type f -exec chmod 0644 {} +
  if [ -d "$src/$ver/app/bin" ]; then
    find "$src/$ver/app/bin" -type f -exec chmod 0755 {} +
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
build="$work/demo"
mkdir -p "$build/blobs/sha256"
printf '{"imageLayoutVersion":"1.0.0"}\n' > "$build/oci-layout"

# The empty config blob: exactly the two bytes "{}".
printf '{}' > "$work/config"
read -r config_digest config_size < <(put_blob "$work/config")
config=$(descriptor "$mt_empty" "$config_digest" "$config_size")

index_entries=()
for ver in "${versions[@]}"; do
  app="$src/$ver/app"
  # Every entry below app/, directories included, as relative paths with no
  # "./" root entry, in byte order.
  (cd "$app" && find . -mindepth 1 -printf '%P\n' | sort) > "$work/list"
  tar --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
      --no-recursion -C "$app" -cf - -T "$work/list" | gzip -n -9 > "$work/app.tar.gz"
  read -r d s < <(put_blob "$work/app.tar.gz")
  layers=$(descriptor "$mt_tar_gzip" "$d" "$s")

  for f in "${files[@]}"; do
    json_safe "$f"
    cp "$src/$ver/files/$f" "$work/file"
    read -r d s < <(put_blob "$work/file")
    layers+=",$(descriptor "$mt_file" "$d" "$s" "{\"org.opencontainers.image.title\":\"$f\"}")"
  done

  printf '{"schemaVersion":2,"mediaType":"%s","artifactType":"%s","config":%s,"layers":[%s],"annotations":{"org.opencontainers.image.version":"%s"}}\n' \
    "$mt_manifest" "$artifact_type" "$config" "$layers" "${ver#v}.0.0" > "$work/manifest"
  read -r d s < <(put_blob "$work/manifest")
  index_entries+=("$(printf '{"mediaType":"%s","artifactType":"%s","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}' \
    "$mt_manifest" "$artifact_type" "$d" "$s" "$ver")")
done

joined=$(IFS=,; echo "${index_entries[*]}")
printf '{"schemaVersion":2,"mediaType":"%s","manifests":[%s]}\n' "$mt_index" "$joined" > "$build/index.json"
chmod -R u=rwX,go=rX "$build"

if [ "$check" = 1 ]; then
  if diff -r "$build" "$out" > "$work/diff" 2>&1; then
    echo "examples/demo is up to date"
  else
    cat "$work/diff" >&2
    die "examples/demo differs from what the sources build; run $0"
  fi
  exit 0
fi

rm -rf "$out.old"
[ -e "$out" ] && mv "$out" "$out.old"
mv "$build" "$out"
rm -rf "$out.old"
echo "built $out:"
(cd "$out" && find . -type f | sort | xargs sha256sum)
