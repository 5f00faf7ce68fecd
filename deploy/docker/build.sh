#!/usr/bin/env bash
# Builds rfleet's two images from prebuilt binaries and prints their sizes:
#   rfleet-dispatcher:<version>  (deploy/docker/dispatcher.Dockerfile; no R, no shell)
#   rfleet-worker:<version>      (deploy/docker/worker.Dockerfile; R from Debian)
# <version> is the workspace version in Cargo.toml. Build the binaries first:
#   cargo build --profile image -p rfleet -p rhost && deploy/docker/build.sh
#   deploy/docker/build.sh [--bin-dir target/debug]
# Environment: DOCKER, the docker client command (default `docker`; e.g.
# "/usr/bin/docker -H unix:///path/docker.sock" for a private daemon). Needs BuildKit
# (Docker 20.10 or newer; DOCKER_BUILDKIT=1 is set here) and debian:bookworm-slim, pulled or
# made by deploy/docker/base.sh. apt-get runs with the host's network (--network=host), so a
# daemon started with --bridge=none can build too.
set -euo pipefail
cd "$(dirname "$0")/../.."

read -r -a docker <<<"${DOCKER:-docker}"
bin_dir=target/image
while [ $# -gt 0 ]; do
    case "$1" in
    --bin-dir) bin_dir="${2%/}"; shift 2 ;;
    *) echo "build.sh: unknown argument $1 (usage: build.sh [--bin-dir DIR])" >&2; exit 2 ;;
    esac
done
# The context is the repository root, and .dockerignore lets in only target/<profile>/'s
# two binaries.
case "$bin_dir" in
target/*/*|target/) echo "build.sh: --bin-dir must be target/<profile> (the build context admits only those binaries), not $bin_dir" >&2; exit 2 ;;
target/*) ;;
*) echo "build.sh: --bin-dir must be target/<profile> under the repository (the build context admits only those binaries), not $bin_dir" >&2; exit 2 ;;
esac
for binary in rfleet rfleet-rhost; do
    [ -x "$bin_dir/$binary" ] || { echo "build.sh: $bin_dir/$binary is missing: cargo build --profile image -p rfleet -p rhost first" >&2; exit 1; }
done

version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "build.sh: no version in Cargo.toml's [workspace.package]" >&2; exit 1; }
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# The repository the images are built from: SOURCE_URL, else git's origin.
source_url="${SOURCE_URL:-$(git remote get-url origin 2>/dev/null || echo unknown)}"

for image in dispatcher worker; do
    echo "build.sh: building rfleet-$image:$version from $bin_dir" >&2
    DOCKER_BUILDKIT=1 "${docker[@]}" build --network=host --progress=plain \
        --file "deploy/docker/$image.Dockerfile" \
        --build-arg "BIN_DIR=$bin_dir" --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
        --build-arg "CREATED=$created" --build-arg "SOURCE=$source_url" \
        --tag "rfleet-$image:$version" . >&2
done
for image in dispatcher worker; do
    "${docker[@]}" image inspect --format "rfleet-$image:$version {{.Size}}" "rfleet-$image:$version" |
        awk '{ printf "%s %d bytes (%.0f MB)\n", $1, $2, $2 / 1e6 }'
done
