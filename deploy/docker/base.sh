#!/usr/bin/env bash
# Makes debian:bookworm-slim on a machine that cannot pull it (no registry): debootstrap a
# minimal Debian 12 into a folder and `docker import` it under that tag. Skipped when the tag
# exists already. The images' Dockerfiles then build FROM it exactly as they would FROM the
# pulled image.
#   deploy/docker/base.sh [--work DIR]    (default DIR: .rfleet/docker/base)
# Environment: DOCKER, the docker client command (default `docker`; e.g.
# "/usr/bin/docker -H unix:///path/docker.sock" for a private daemon); MIRROR, the Debian
# mirror (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/../.."

read -r -a docker <<<"${DOCKER:-docker}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
work=.rfleet/docker/base
while [ $# -gt 0 ]; do
    case "$1" in
    --work) work="$2"; shift 2 ;;
    *) echo "base.sh: unknown argument $1 (usage: base.sh [--work DIR])" >&2; exit 2 ;;
    esac
done
tag=debian:bookworm-slim

if "${docker[@]}" image inspect "$tag" >/dev/null 2>&1; then
    echo "base.sh: $tag exists already" >&2
    exit 0
fi
command -v debootstrap >/dev/null || { echo "base.sh: debootstrap not found (apt-get install debootstrap)" >&2; exit 1; }

root="$work/rootfs"
rm -rf "$root"
mkdir -p "$root"
# A half-made root is removed, so a failed run cannot leave an image-shaped folder behind.
trap 'rm -rf "$root"' EXIT
echo "base.sh: debootstrap --variant=minbase bookworm into $root" >&2
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; echo "base.sh: debootstrap failed (log: $work/debootstrap.log)" >&2; exit 1; }

# What Debian's own slim image does: the same apt sources (with updates and security), no
# documentation or locales installed by later apt-get runs, and no apt caches in the image.
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
DPKG
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
find "$root/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
       "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
       "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old

echo "base.sh: importing $root as $tag" >&2
tar --numeric-owner -C "$root" -c . |
    "${docker[@]}" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$tag" >/dev/null
"${docker[@]}" image inspect --format "base.sh: $tag {{.Id}} {{.Size}} bytes" "$tag" >&2
