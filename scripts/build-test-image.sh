#!/usr/bin/env bash
# Builds the tiny busybox image the Docker tests run, without any registry or base image:
# a rootfs made from Debian's static busybox, loaded with `docker import`.
#
# Usage: scripts/build-test-image.sh [IMAGE] [--force] [--healthcheck]
#   IMAGE          defaults to dockyard-test:latest (dockyard-test-healthcheck:latest with --healthcheck)
#   --force        rebuilds even when the image already exists
#   --healthcheck  gives the image a HEALTHCHECK of its own: `echo image-check` every 100 ms, which passes
#                  (agent.testing.conformance.IMAGE_CHECK); the health tests use it
# The docker CLI honours DOCKER_HOST, so this can load the image into any dockerd.
# BUSYBOX=/path/to/busybox overrides where the static busybox is taken from.
set -euo pipefail

image=""
force=0
healthcheck=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --healthcheck) healthcheck=1 ;;
        -h | --help)
            sed -n '2,11p' "$0"
            exit 0
            ;;
        -*)
            echo "build-test-image: unknown option $arg" >&2
            exit 2
            ;;
        *) image="$arg" ;;
    esac
done

if [[ -z "$image" ]]; then
    image="dockyard-test:latest"
    [[ "$healthcheck" -eq 1 ]] && image="dockyard-test-healthcheck:latest"
fi
changes=(--change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin')
if [[ "$healthcheck" -eq 1 ]]; then
    changes+=(--change 'HEALTHCHECK --interval=100ms --timeout=2s --retries=2 CMD echo image-check; exit 0')
fi

die() {
    echo "build-test-image: $*" >&2
    exit 1
}

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed"

busybox=""
for candidate in ${BUSYBOX:-/bin/busybox /usr/bin/busybox}; do
    if [[ -x "$candidate" ]]; then
        busybox="$candidate"
        break
    fi
done
[[ -n "$busybox" ]] || die "no busybox at ${BUSYBOX:-/bin/busybox or /usr/bin/busybox}; install Debian's busybox-static"

# A dynamically linked busybox would need the host's libc inside the image, which we do not copy.
is_static() {
    if command -v file >/dev/null 2>&1; then
        file -L "$1" | grep -q 'statically linked'
    else
        ! ldd "$1" >/dev/null 2>&1
    fi
}
is_static "$busybox" || die "$busybox is not statically linked; install Debian's busybox-static"

previous="$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
if [[ "$force" -eq 0 && -n "$previous" ]]; then
    echo "build-test-image: $image already exists (use --force to rebuild)"
    exit 0
fi

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT

mkdir -p "$rootfs"/{bin,etc,tmp,root,var/www,proc,sys,dev}
chmod 1777 "$rootfs/tmp"
cp "$busybox" "$rootfs/bin/busybox"
chmod 0755 "$rootfs/bin/busybox"

applets=(
    sh ash sleep httpd echo cat ls env kill wget mkdir hostname
    true false printf test '[' ps grep touch rm id nc sed head tail wc date
)
for applet in "${applets[@]}"; do
    ln -s busybox "$rootfs/bin/$applet"
done

# httpd looks its user up; without root in /etc/passwd it refuses to start.
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"

# Fixed owners, order and times make the layer reproducible across hosts.
tar -C "$rootfs" --owner=0 --group=0 --numeric-owner --sort=name --mtime='@0' -cf - . |
    docker import "${changes[@]}" - "$image" >/dev/null

# A rebuild would otherwise leave the old image behind untagged; one still used by a container stays.
current="$(docker image inspect --format '{{.Id}}' "$image")"
if [[ -n "$previous" && "$previous" != "$current" ]]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
fi

echo "build-test-image: built $image"
