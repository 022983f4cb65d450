#!/usr/bin/env bash
# Builds the compose stack's images where no image registry is reachable (air-gapped hosts,
# CI on these machines), with podman. Production builds do not need this script: the
# Dockerfiles pull their official base images as usual (`docker compose build`).
#
#   deploy/local-images.sh base                      # Python 3.11 and Redis 7 base images
#   deploy/local-images.sh build [--torch-wheels D]  # tfllmer-server-cpu and tfllmer-trainer
#   deploy/local-images.sh all   [--torch-wheels D]  # both steps
#
# `base` makes the base images from Debian bookworm packages (debootstrap --variant=minbase,
# then `podman import`) and tags them with the names that deploy/Dockerfile.* (ARG
# PYTHON_IMAGE) and docker-compose.yml (services.redis.image) use, so that those files build
# and run unchanged. The content is Debian's, not the official image's: python3 3.11.2 and
# redis-server 7.0.15 under the official names; `podman inspect` shows the label
# org.tfllmer.local-base=debian-bookworm on them. A base image that already exists is kept.
#
# `build` runs `podman build` on the Dockerfiles with the host's network (to reach PyPI) and,
# for the build only, the host's CA certificates and a pip.conf mounted in; nothing of them
# is written into an image (tests/test_compose_stack.py scans the images' files). It needs
# the base images locally (`base`, or pulled ones). --torch-wheels DIR (a folder holding the
# torch CPU wheel, e.g. the one pip's find-links names here) installs torch from that folder
# instead of PyTorch's CPU index (TORCH_INDEX_URL=https://pypi.org/simple plus find-links:
# pip prefers the local `+cpu` build; torch's own dependencies still come from PyPI).
#
# Environment: PODMAN (default `podman`; add `--runtime runc --cgroup-manager cgroupfs` where
# containers.conf does not set them), MIRROR (Debian mirror, default deb.debian.org),
# TAG (application image tag, default latest).
set -euo pipefail
cd "$(dirname "$0")/.."

PODMAN=${PODMAN:-podman}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TAG=${TAG:-latest}
SUITE=bookworm
LABEL=org.tfllmer.local-base=debian-$SUITE

log() { printf '[local-images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# The names come from the files that use them, so they cannot drift apart.
python_image() {
  sed -n 's/^ARG PYTHON_IMAGE=\(.*\)$/\1/p' deploy/Dockerfile.server-cpu | head -n1
}
redis_image() {
  awk '/^  redis:/{found=1} found && /^    image:/{print $2; exit}' docker-compose.yml
}
qualified() {  # podman and Docker both read a bare official name as docker.io/library/NAME
  case $1 in
    */*) echo "$1" ;;
    *) echo "docker.io/library/$1" ;;
  esac
}
exists() { $PODMAN image exists "$(qualified "$1")"; }

# An interrupted debootstrap leaves /proc and /sys mounted inside its tree: unmount first.
remove_tree() {
  local mount
  awk -v dir="$1/" 'index($2, dir) == 1 {print $2}' /proc/mounts | sort -r |
    while read -r mount; do umount -l "$mount"; done
  rm -rf "$1"
}
trap 'exit 130' INT TERM  # so that the EXIT traps run

# debootstrap a minimal bookworm with PACKAGES, let SETUP run in the tree, strip what an
# image does not need, import it as NAME with the given --change instructions.
make_base() {
  local name=$1 packages=$2 setup=$3; shift 3
  local root
  root=$(mktemp -d /var/tmp/tfllmer-rootfs.XXXXXX)
  # shellcheck disable=SC2064
  trap "remove_tree '$root'" RETURN EXIT
  log "debootstrap $SUITE ($packages) for $name"
  mkdir -p /var/cache/tfllmer-debootstrap
  debootstrap --variant=minbase --include="$packages" \
    --cache-dir=/var/cache/tfllmer-debootstrap "$SUITE" "$root" "$MIRROR" >/dev/null
  chroot "$root" /bin/sh -eu -c "$setup"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* "$root"/root/.cache
  find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
  # debootstrap copies the host's resolver and hostname; a container gets its own.
  : >"$root"/etc/resolv.conf
  : >"$root"/etc/hostname
  log "podman import $(qualified "$name")"
  tar --numeric-owner -C "$root" -c . |
    $PODMAN import --change "LABEL $LABEL" "$@" - "$(qualified "$name")" >/dev/null
}

base() {
  local python redis
  python=$(python_image)
  redis=$(redis_image)
  [[ -n $python && -n $redis ]] || { echo "cannot read the base image names" >&2; exit 2; }
  if exists "$python"; then
    log "$python exists; kept"
  else
    # `python` on PATH and a working `python -m venv`, as in the official slim image.
    make_base "$python" python3,python3-venv,python-is-python3 'python -m venv --help >/dev/null' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]'
  fi
  if exists "$redis"; then
    log "$redis exists; kept"
  else
    # The official image's layout: /data (owned by the redis user) as the working directory
    # and volume, and `redis-server` on PATH.
    make_base "$redis" redis-server \
      'install -d -o redis -g redis -m 0750 /data && install -d /usr/local/etc/redis' \
      --change 'WORKDIR /data' --change 'VOLUME /data' --change 'EXPOSE 6379' \
      --change 'CMD ["redis-server"]'
  fi
}

build() {
  local torch_wheels=""
  while (($#)); do
    case $1 in
      --torch-wheels) torch_wheels=$(realpath "$2"); shift 2 ;;
      *) echo "unknown option $1" >&2; exit 2 ;;
    esac
  done
  local home
  home=$(mktemp -d /var/tmp/tfllmer-build.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$home'" RETURN
  # For the build only, mounted where the base images already have an (empty) directory, so
  # that no mount point is left in an image: the host's CA bundle (a proxy may re-sign TLS
  # here), a pip.conf as root's user configuration (/root), the torch wheels (/mnt).
  local -a mounts=(-v /etc/ssl/certs:/etc/ssl/certs:ro -v "$home:/root:ro") args=()
  mkdir -p "$home/.config/pip"
  {
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    if [[ -n $torch_wheels ]]; then echo "find-links = /mnt"; fi
  } >"$home/.config/pip/pip.conf"
  if [[ -n $torch_wheels ]]; then
    mounts+=(-v "$torch_wheels:/mnt:ro")
    args+=(--build-arg TORCH_INDEX_URL=https://pypi.org/simple)
  fi
  local image dockerfile
  for image in server-cpu trainer; do
    dockerfile=deploy/Dockerfile.$image
    log "podman build $dockerfile -> tfllmer-$image:$TAG"
    local start=$SECONDS
    $PODMAN build --pull=never --network host "${mounts[@]}" "${args[@]}" -f "$dockerfile" -t "localhost/tfllmer-$image:$TAG" .
    log "tfllmer-$image:$TAG built in $((SECONDS - start)) s"
  done
}

case ${1:-} in
  base) base ;;
  build) shift; build "$@" ;;
  all) shift; base; build "$@" ;;
  *) sed -n '2,28p' "$0" >&2; exit 2 ;;
esac
