#!/usr/bin/env bash
# The base image every ainode image can be built on where no image registry is reachable: Debian bookworm
# (minbase) made with debootstrap from a Debian mirror and imported into the engine. Does nothing when the
# image is already there. Needs root and debootstrap; the engine is the docker CLI's (DOCKER_HOST).
#   docker/build-base.sh [IMAGE]      (default ainode-base:bookworm; DEBIAN_MIRROR picks the mirror)
set -euo pipefail
image=${1:-ainode-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image is already there"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is needed (apt-get install debootstrap)" >&2; exit 1; }
root=$(mktemp -d /tmp/ainode-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# the security and point-release updates too, as the official Debian images have them
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main
SOURCES
# as in Debian's own images: no recommended packages, no documentation, no apt caches in layers
cat >"$root/etc/apt/apt.conf.d/90ainode" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
APT
printf 'path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n' \
    >"$root/etc/dpkg/dpkg.cfg.d/90ainode-nodoc"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/var/log/* "$root"/tmp/* "$root"/proc/* "$root"/sys/* "$root"/dev/*
tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
    --change 'CMD ["bash"]' - "$image" >/dev/null
echo "$image built ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
