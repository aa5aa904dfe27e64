#!/usr/bin/env bash
# A minimal Debian bookworm base image made with debootstrap, for hosts that can reach a Debian mirror
# but no image registry (then: docker build --build-arg BASE_IMAGE=tuneloop-base:bookworm ...).
# Needs root, debootstrap and a Docker engine. Usage: container/debian-base.sh [TAG] [MIRROR]
set -euo pipefail
tag=${1:-tuneloop-base:bookworm}
mirror=${2:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror"
# What debian:bookworm-slim leaves out too: package lists, caches, docs, man pages.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$tag"
docker image ls "$tag"
