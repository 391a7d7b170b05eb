#!/usr/bin/env bash
# Container checks, run by .ci/run after the Rust tests (which have built
# target/release/dynakv with `cargo build --release --locked`):
#
#   1. manifests   validate deploy/kubernetes offline (kubernetes-validate's
#                  bundled schemas, strict, plus structural checks)
#   2. images      build the base image and the dynakv image with no registry
#                  (docker/build-images.sh: mmdebstrap + docker import, and the
#                  Dockerfile's `prebuilt` target with the host's binary)
#   3. fault suite a compose cluster under kill, pause, partition, wiped
#                  volume and scale faults (tests/containers/fault_suite.py)
#
# Every container, network and volume of its compose project and every image
# tag it created are removed at the end, also on failure or Ctrl-C. Prints how
# long each phase took and the fault suite's counts; exits non-zero if any
# phase failed.
#
# Environment:
#   DYNAKV_BINARY       binary to ship (default target/release/dynakv)
#   DYNAKV_CI_CACHE     cache dir for the validator's virtualenv and the root
#                       filesystem tarball (default ~/.cache/dynakv; not Docker
#                       objects, they only save downloads on the next run)
#   DYNAKV_CI_CASES     fault cases to run (default all)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

binary=${DYNAKV_BINARY:-target/release/dynakv}
cache=${DYNAKV_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dynakv}
suffix=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
project=dynakv-ci-$suffix
image=dynakv:ci-$suffix
base=debian:bookworm-slim
created_base=0
work=$(mktemp -d "${TMPDIR:-/tmp}/dynakv-ci.XXXXXX")
declare -a summary=()
status=0

say() { printf '\n==> %s\n' "$*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }

# shellcheck disable=SC2317  # invoked by the traps
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  say "cleanup: project $project, image $image$( ((created_base)) && echo ", base $base")"
  local label=com.docker.compose.project=$project
  docker ps -aq --filter "label=$label" | xargs -r docker rm -f -v >/dev/null
  docker network ls -q --filter "label=$label" | xargs -r docker network rm >/dev/null
  docker volume ls -q --filter "label=$label" | xargs -r docker volume rm >/dev/null
  if docker image inspect "$image" >/dev/null 2>&1; then
    docker rmi "$image" >/dev/null
  fi
  if ((created_base)) && docker image inspect "$base" >/dev/null 2>&1; then
    docker rmi "$base" >/dev/null
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

phase() { # name, seconds, ok|FAILED
  summary+=("$(printf '  %-12s %5ss  %s' "$1" "$2" "$3")")
}

# --- 1. manifests -------------------------------------------------------------
say "manifests: kubernetes-validate (offline) + structural checks"
t0=$(now)
venv=$cache/venv-containers
ok=1
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check 'kubernetes-validate==1.37.0' \
    || ok=0
fi
if ((ok)) && "$venv/bin/python" tests/containers/validate_manifests.py >"$work/manifests.log" 2>&1; then
  grep -v '^ok ' "$work/manifests.log"
  phase manifests "$(secs "$t0")" ok
else
  cat "$work/manifests.log" 2>/dev/null
  phase manifests "$(secs "$t0")" FAILED
  status=1
fi

# --- 2. images ------------------------------------------------------------------
say "images: $base (made locally if absent) and $image from $binary"
t0=$(now)
docker image inspect "$base" >/dev/null 2>&1 || created_base=1
if DYNAKV_BINARY=$binary DYNAKV_IMAGE=$image DYNAKV_BASE_IMAGE=$base \
  DYNAKV_ROOTFS_CACHE=$cache/bookworm-slim-rootfs.tar \
  docker/build-images.sh 2>&1 | tee "$work/images.log"; then
  phase images "$(secs "$t0")" ok
  size=$(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.1f MB", $1 / 1e6 }')
  summary+=("               image size: $size")
else
  phase images "$(secs "$t0")" FAILED
  status=1
fi

# --- 3. fault suite ---------------------------------------------------------------
if docker image inspect "$image" >/dev/null 2>&1; then
  say "fault suite: project $project"
  t0=$(now)
  cases=()
  [[ -n ${DYNAKV_CI_CASES:-} ]] && cases=(--cases "$DYNAKV_CI_CASES")
  if python3 tests/containers/fault_suite.py --image "$image" --project "$project" "${cases[@]}" 2>&1 \
    | tee "$work/suite.log"; then
    phase "fault suite" "$(secs "$t0")" ok
  else
    phase "fault suite" "$(secs "$t0")" FAILED
    status=1
  fi
else
  phase "fault suite" 0 "not run (no image)"
  status=1
fi

say "containers summary"
printf '%s\n' "${summary[@]}"
grep -E 'built in' "$work/images.log" 2>/dev/null | sed 's/^==> /  /'
sed -n '/^fault suite: /,$p' "$work/suite.log" 2>/dev/null
exit "$status"
