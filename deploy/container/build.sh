#!/usr/bin/env bash
# Build the autotune image without a registry: debootstrap a Debian bookworm minbase with
# python3 into a directory, import it as the base, then build deploy/container/Containerfile
# FROM it with the autotune wheel and the pinned dependency wheels (constraints.txt).
#
#   sudo deploy/container/build.sh            # -> localhost/autotune:<version>
#
# Prerequisites (Debian/Ubuntu): apt install podman debootstrap python3-pip  (buildah instead
# of podman works too). Needs root; reaches the Debian mirror and the Python package index
# (the wheel is built in an isolated environment with the setuptools>=68 pyproject.toml asks
# for: Debian's own setuptools 66 cannot build it). A preflight names everything missing in one
# line before any work. Env: BUILD_DIR (scratch, default /var/tmp/autotune-build), MIRROR,
# IMAGE, BASE_IMAGE, REBUILD_BASE=1, ENGINE=podman|buildah, PYTHON (default python3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PYTHON=${PYTHON:-python3}

# 0. Preflight: every missing prerequisite, in one line, with the package that brings it.
missing=()
[ "$(id -u)" = 0 ] || missing+=("root (run it with sudo)")
if [ -n "${ENGINE:-}" ]; then
  command -v "$ENGINE" >/dev/null 2>&1 || missing+=("$ENGINE (apt install $ENGINE)")
  engine=${ENGINE:-}
else
  engine=$(command -v podman || command -v buildah || true)
  engine=${engine##*/}
  [ -n "$engine" ] || missing+=("podman or buildah (apt install podman)")
fi
for tool in debootstrap chroot tar; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool (apt install $([ "$tool" = debootstrap ] && echo debootstrap || echo coreutils))")
done
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  missing+=("$PYTHON >= 3.11 (apt install python3)")
elif ! "$PYTHON" -c 'import sys, tomllib' 2>/dev/null; then
  missing+=("$PYTHON >= 3.11 (has $("$PYTHON" -c 'import platform; print(platform.python_version())'))")
elif ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
  missing+=("pip for $PYTHON (apt install python3-pip)")
fi
if [ ${#missing[@]} -gt 0 ]; then
  (IFS=';'; echo "build.sh: missing:${missing[*]/#/ }; see docs/deploy.md (The container image)" >&2)
  exit 2
fi

version=$("$PYTHON" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$repo/pyproject.toml")
BUILD_DIR=${BUILD_DIR:-/var/tmp/autotune-build}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
BASE_IMAGE=${BASE_IMAGE:-localhost/autotune-base:$SUITE}
IMAGE=${IMAGE:-localhost/autotune:$version}

image_exists() {
  if [ "$engine" = podman ]; then podman image exists "$1"; else buildah inspect --type image "$1" >/dev/null 2>&1; fi
}

# A directory tree as an image with no parent: `podman import`, or with buildah alone a scratch
# container the tree is copied into, then committed.
import_rootfs() {  # rootfs image message
  if [ "$engine" = podman ]; then
    tar -C "$1" --numeric-owner -c . | podman import --change 'CMD ["/bin/bash"]' --message "$3" - "$2"
  else
    local ctr mnt
    ctr=$(buildah from scratch)
    mnt=$(buildah mount "$ctr")
    tar -C "$1" --numeric-owner -c . | tar -C "$mnt" --numeric-owner -x
    buildah umount "$ctr" >/dev/null
    buildah config --cmd '["/bin/bash"]' --created-by "$3" "$ctr"
    buildah commit --rm "$ctr" "$2" >/dev/null
  fi
}
mkdir -p "$BUILD_DIR"

# 1. Base image: minbase + python3 (3.11) + python3-venv, apt lists/caches and docs removed.
if [ "${REBUILD_BASE:-0}" = 1 ] || ! image_exists "$BASE_IMAGE"; then
  rootfs="$BUILD_DIR/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$rootfs" "$MIRROR"
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
         "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
         "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
  chroot "$rootfs" dpkg-query -W -f '${Package}=${Version}\n' > "$BUILD_DIR/base-packages.txt"
  import_rootfs "$rootfs" "$BASE_IMAGE" "debootstrap --variant=minbase --include=python3,python3-venv $SUITE ($MIRROR)"
fi

# 2. Build context: the autotune wheel (from a copy of the tracked tree, so the checkout gets no
#    build/ or egg-info) and every dependency as a wheel, at the pinned versions.
ctx="$BUILD_DIR/ctx"
rm -rf "$ctx" && mkdir -p "$ctx/wheels"
rm -rf "$BUILD_DIR/src" && mkdir -p "$BUILD_DIR/src"
(cd "$repo" && tar -c --exclude=__pycache__ pyproject.toml setup.py README.md autotune rules) | tar -C "$BUILD_DIR/src" -x
# build isolation: pip brings the setuptools/wheel pyproject.toml's [build-system] names
"$PYTHON" -m pip wheel -q --no-deps -w "$ctx/wheels" "$BUILD_DIR/src"
"$PYTHON" -m pip wheel -q -w "$ctx/wheels" --constraint "$here/constraints.txt" "$ctx"/wheels/autotune_node-*.whl
cp "$here/constraints.txt" "$ctx/wheels/constraints.txt"

# 3. The image. ISOLATION=chroot (default) runs the RUN step without an OCI runtime, so the
#    build works where crun/runc cannot start containers (e.g. cgroup v1+v2 hybrid hosts).
"$engine" build --pull=never --isolation "${ISOLATION:-chroot}" --build-arg "BASE=$BASE_IMAGE" \
    -t "$IMAGE" -f "$here/Containerfile" "$ctx"
echo "built $IMAGE"
