#!/usr/bin/env bash
# Builds every image dynakv's containers need from what this machine has, for a
# Docker engine that cannot pull anything (no registry, no images at start):
#
#   1. the base image: a minimal Debian bookworm root filesystem made with
#      mmdebstrap from Debian's packages (the apt mirrors must be reachable),
#      trimmed like the official slim image and loaded with `docker import` as
#      debian:bookworm-slim, the name the Dockerfile starts from. Skipped when
#      an image of that name already exists (a real one or an earlier import).
#   2. the dynakv image: the Dockerfile's `prebuilt` target, which is the
#      runtime image with a binary built on this host (Debian 12 bookworm, so
#      the same glibc as the image) instead of one compiled in the rust image.
#
# Usage (from anywhere in a clone):
#   docker/build-images.sh [--binary PATH] [--tag IMAGE] [--base-image NAME]
#
#   --binary PATH      the dynakv binary to ship (env DYNAKV_BINARY, default
#                      target/release/dynakv: run `cargo build --release --locked`
#                      first; this script never compiles).
#   --tag IMAGE        the image to build (env DYNAKV_IMAGE, default
#                      dynakv:latest, the name docker-compose.yml uses).
#   --base-image NAME  the base image (env DYNAKV_BASE_IMAGE, default
#                      debian:bookworm-slim).
#
# Environment: DYNAKV_ROOTFS_CACHE, a file to keep the root filesystem tarball
# in between runs (default ~/.cache/dynakv/bookworm-slim-rootfs.tar, reused
# while younger than 7 days; empty to never cache); DYNAKV_DEBIAN_MIRROR
# (default http://deb.debian.org/debian) and DYNAKV_DEBIAN_SECURITY_MIRROR
# (default http://deb.debian.org/debian-security).
#
# mmdebstrap is installed with apt-get when missing and running as root. As root
# it builds in a chroot; otherwise it uses an unprivileged user namespace.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
binary=${DYNAKV_BINARY:-}
tag=${DYNAKV_IMAGE:-dynakv:latest}
base=${DYNAKV_BASE_IMAGE:-debian:bookworm-slim}
cache=${DYNAKV_ROOTFS_CACHE-${XDG_CACHE_HOME:-$HOME/.cache}/dynakv/bookworm-slim-rootfs.tar}
mirror=${DYNAKV_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DYNAKV_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

while (($#)); do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --base-image) base=$2; shift 2 ;;
    -h | --help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "build-images.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-images.sh: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

work=$(mktemp -d "${TMPDIR:-/tmp}/dynakv-images.XXXXXX")
trap 'rm -rf "$work"' EXIT

binary=${binary:-$repo/target/release/dynakv}
[[ -f $binary && -x $binary ]] \
  || die "no dynakv binary at $binary: run \`cargo build --release --locked\` first or pass --binary PATH"

docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine (is it running, may this user use it?)"

# --- 1. base image ----------------------------------------------------------
build_rootfs() { # $1: output tarball
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
      say "installing mmdebstrap with apt-get"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap >"$work/apt.log" 2>&1 \
        || { cat "$work/apt.log" >&2; die "apt-get install mmdebstrap failed"; }
    else
      die "mmdebstrap is missing: sudo apt-get install mmdebstrap"
    fi
  fi
  # minbase = Essential + apt, like the official image. merged-usr without the
  # usrmerge package (which would pull in perl), no device nodes (the runtime
  # provides /dev), and the official slim image's dpkg filters (no man pages,
  # docs but copyright files, info pages or translations), which also stay
  # in the image for packages installed later.
  local -a slim=(
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/groff/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
    --dpkgopt='path-exclude=/usr/share/linda/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-include=/usr/share/locale/locale.alias'
  )
  mmdebstrap --variant=minbase --format=tar --skip=output/dev \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr "${slim[@]}" \
    bookworm "$1" \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main" >"$work/mmdebstrap.log" 2>&1 \
    || { tail -n 30 "$work/mmdebstrap.log" >&2; die "mmdebstrap failed (log above)"; }
}

if docker image inspect "$base" >/dev/null 2>&1; then
  say "base image $base already present: reusing it"
else
  t0=$(now)
  rootfs=$work/rootfs.tar
  if [[ -n $cache && -s $cache && -n $(find "$cache" -mtime -7 2>/dev/null) ]]; then
    say "root filesystem from the cache $cache"
    rootfs=$cache
  else
    say "building a Debian bookworm root filesystem with mmdebstrap"
    build_rootfs "$rootfs"
    if [[ -n $cache ]] && mkdir -p "$(dirname "$cache")" 2>/dev/null; then
      if ! { cp "$rootfs" "$cache.tmp.$$" && mv "$cache.tmp.$$" "$cache"; }; then
        rm -f "$cache.tmp.$$"
      fi
    fi
  fi
  say "importing it as $base"
  docker import \
    -c 'CMD ["bash"]' \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'LABEL org.opencontainers.image.description="Debian bookworm minbase made locally with mmdebstrap by dynakv docker/build-images.sh"' \
    "$rootfs" "$base" >/dev/null
  say "base image $base built in $(elapsed "$t0") s"
fi

# --- 2. dynakv image ----------------------------------------------------------

t0=$(now)
ctx=$work/context
mkdir -p "$ctx/docker" "$ctx/prebuilt"
cp -p "$repo/docker/dynakv-healthcheck" "$repo/docker/dynakv-leave" "$ctx/docker/"
# The release profile keeps debug info for profiling: ~55 MB. Stripped: ~7 MB.
if command -v strip >/dev/null 2>&1; then
  strip --strip-all -o "$ctx/prebuilt/dynakv" "$binary"
else
  say "no strip (binutils) here: shipping the binary with its debug info"
  cp "$binary" "$ctx/prebuilt/dynakv"
fi
chmod 0755 "$ctx/prebuilt/dynakv"

revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
say "building $tag (Dockerfile target prebuilt, base $base)"
# The legacy builder (there is no buildx here) stops at the target stage, so
# the rust image of the `build` stage is never needed.
DOCKER_BUILDKIT=0 docker build --quiet \
  -f "$repo/Dockerfile" --target prebuilt \
  --build-arg DEBIAN_IMAGE="$base" \
  --label org.opencontainers.image.revision="$revision" \
  --label org.opencontainers.image.source=dynakv \
  -t "$tag" "$ctx" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; die "docker build failed"; }

# The binary must run in the image (same glibc): a clear error here beats a
# crash-looping cluster.
version=$(docker run --rm --network none "$tag" --version 2>&1) \
  || die "the binary does not run in $base: $version (built on another glibc?)"
size=$(docker image inspect -f '{{.Size}}' "$tag")
say "image $tag ($version) built in $(elapsed "$t0") s, $(awk -v s="$size" 'BEGIN { printf "%.1f MB", s / 1e6 }')"
