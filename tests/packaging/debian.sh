#!/usr/bin/env bash
# Builds libhop0 and libhop-dev from debian/ (the library only), checks them
# with lintian (errors fail), installs them into /usr, builds and runs
# tests/packaging/app through pkg-config and CMake against them, and removes
# them again so they cannot shadow a build tree afterwards.
# usage: tests/packaging/debian.sh WORKDIR      (as root: it installs packages)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work=$1
version="$(dpkg-parsechangelog -l "$root/debian/changelog" -S Version)"
rm -rf "$work" && mkdir -p "$work/hop-${version%-*}"
src="$work/hop-${version%-*}"
# The tracked files as they are in the working tree (no build directories).
(cd "$root" && git ls-files -z | xargs -0 cp --parents -t "$src")

echo "dpkg-buildpackage -us -uc -b (log: $work/build.log)"
# parallel: dh runs ninja -j1 without it; nocheck: no tests are built here.
(cd "$src" && DEB_BUILD_OPTIONS="parallel=$(nproc) nocheck" dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || { tail -40 "$work/build.log"; exit 1; }
changes="$work/hop_${version}_$(dpkg --print-architecture).changes"
ls "$work"/*.deb

echo "lintian"
# Errors fail; warnings and notes are printed.
lintian --fail-on error --tag-display-limit 0 "$changes"

debs=("$work"/libhop0_*.deb "$work"/libhop-dev_*.deb)
cleanup() { apt-get remove -y -qq libhop-dev libhop0 >/dev/null 2>&1 || true; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null
dpkg -L libhop-dev | grep -E 'hop.pc|hopConfig|version.hpp'
"$here/consume" /usr "$work/consume"
