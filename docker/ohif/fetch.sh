#!/usr/bin/env bash
# Puts the OHIF viewer package (@ohif/app 3.13.2 from the npm registry) beside docker/ohif/Dockerfile,
# checked against the integrity tests/test_ohif.py pins. Takes the copy that test caches
# (~/.cache/ainode-tests) when there is one, else asks npm.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tarball=ohif-app-3.13.2.tgz
sha512=5997719a9986eeba85816f5924b71b82bdd70ad2e2d4a0cd3e831a798e4f3deea3e06e1f8c48e393271933a0ba664d85f3b04ac457e9abe8dde715d907d13c10
good() { [ -f "$1" ] && echo "$sha512  $1" | sha512sum --check --quiet --status; }
good "$here/$tarball" && exit 0
cached="$HOME/.cache/ainode-tests/$tarball"
if good "$cached"; then
    cp "$cached" "$here/$tarball"
else
    command -v npm >/dev/null || { echo "npm is needed to fetch $tarball" >&2; exit 1; }
    npm pack --silent @ohif/app@3.13.2 --pack-destination "$here" >/dev/null
fi
good "$here/$tarball" || { echo "$here/$tarball does not match the pinned integrity" >&2; rm -f "$here/$tarball"; exit 1; }
