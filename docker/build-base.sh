#!/usr/bin/env bash
# The base image the ainode images can be built on where no image registry is reachable: Debian bookworm
# (minbase) made with debootstrap from a Debian mirror (debootstrap's default, or DEBIAN_MIRROR) and
# imported into the engine the docker CLI talks to (DOCKER_HOST). Does nothing when the image is there.
# Needs root and debootstrap; takes about a minute.
#   docker/build-base.sh [IMAGE]      (default ainode-base:bookworm)
set -euo pipefail
image=${1:-ainode-base:bookworm}
if docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image is already there"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is needed (apt-get install debootstrap)" >&2; exit 1; }
root=$(mktemp -d /tmp/ainode-base.XXXXXX)
unmount() { grep -o " $root/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l || true; }
trap 'unmount; rm -rf "$root" "$root.log"' EXIT
debootstrap --variant=minbase bookworm "$root" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; exit 1; }
unmount
# the point-release and security updates too, as Debian's own images have them
mirror=$(awk '$1 == "deb" { print $2; exit }' "$root/etc/apt/sources.list")
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${DEBIAN_SECURITY_MIRROR:-$mirror-security} bookworm-security main
SOURCES
# as in Debian's own images: no recommended packages, no documentation, no apt lists in the layers
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/90ainode"
printf 'path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n' \
    >"$root/etc/dpkg/dpkg.cfg.d/90ainode-nodoc"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/man/* "$root"/var/log/* \
    "$root"/tmp/* "$root"/proc/* "$root"/sys/* "$root"/dev/*
find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
    --change 'CMD ["bash"]' - "$image" >/dev/null
echo "$image built ($(($(docker image inspect -f '{{.Size}}' "$image") / 1000000)) MB)"
