#!/usr/bin/env bash
# Build the autotune image without a registry: debootstrap a Debian bookworm minbase with
# python3 into a directory, import it as the base, then build deploy/container/Containerfile
# FROM it with the autotune wheel and the pinned dependency wheels (constraints.txt).
#
#   sudo deploy/container/build.sh            # -> localhost/autotune:<version>
#
# Needs root, podman (or buildah), debootstrap, python3 with pip and setuptools>=68; reaches
# the Debian mirror and the Python package index. Env: BUILD_DIR (scratch, default
# /var/tmp/autotune-build), MIRROR, IMAGE, BASE_IMAGE, REBUILD_BASE=1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
version=$(python3 -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$repo/pyproject.toml")
BUILD_DIR=${BUILD_DIR:-/var/tmp/autotune-build}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
BASE_IMAGE=${BASE_IMAGE:-localhost/autotune-base:$SUITE}
IMAGE=${IMAGE:-localhost/autotune:$version}
engine=$(command -v podman || command -v buildah) || { echo "build.sh: needs podman or buildah" >&2; exit 2; }
mkdir -p "$BUILD_DIR"

# 1. Base image: minbase + python3 (3.11) + python3-venv, apt lists/caches and docs removed.
if [ "${REBUILD_BASE:-0}" = 1 ] || ! "$engine" image exists "$BASE_IMAGE" 2>/dev/null; then
  rootfs="$BUILD_DIR/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$rootfs" "$MIRROR"
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
         "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
         "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
  chroot "$rootfs" dpkg-query -W -f '${Package}=${Version}\n' > "$BUILD_DIR/base-packages.txt"
  tar -C "$rootfs" --numeric-owner -c . | podman import \
      --change 'CMD ["/bin/bash"]' \
      --message "debootstrap --variant=minbase --include=python3,python3-venv $SUITE ($MIRROR)" \
      - "$BASE_IMAGE"
fi

# 2. Build context: the autotune wheel (from a copy of the tracked tree, so the checkout gets no
#    build/ or egg-info) and every dependency as a wheel, at the pinned versions.
ctx="$BUILD_DIR/ctx"
rm -rf "$ctx" && mkdir -p "$ctx/wheels"
rm -rf "$BUILD_DIR/src" && mkdir -p "$BUILD_DIR/src"
(cd "$repo" && tar -c --exclude=__pycache__ pyproject.toml setup.py README.md autotune rules) | tar -C "$BUILD_DIR/src" -x
python3 -m pip wheel -q --no-deps --no-build-isolation -w "$ctx/wheels" "$BUILD_DIR/src"
python3 -m pip wheel -q -w "$ctx/wheels" --constraint "$here/constraints.txt" "$ctx"/wheels/autotune_node-*.whl
cp "$here/constraints.txt" "$ctx/wheels/constraints.txt"

# 3. The image. ISOLATION=chroot (default) runs the RUN step without an OCI runtime, so the
#    build works where crun/runc cannot start containers (e.g. cgroup v1+v2 hybrid hosts).
"$(basename "$engine")" build --pull=never --isolation "${ISOLATION:-chroot}" --build-arg "BASE=$BASE_IMAGE" \
    -t "$IMAGE" -f "$here/Containerfile" "$ctx"
echo "built $IMAGE"
