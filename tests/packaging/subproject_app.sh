#!/usr/bin/env bash
# Builds tests/packaging/subproject_app with this checkout as its
# subprojects/hop, and runs it: only libhop and the app are compiled
# (hop's tests, examples and benchmarks are off in a subproject).
# usage: tests/packaging/subproject_app.sh WORKDIR [meson setup options...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work=$1
shift
rm -rf "$work" && mkdir -p "$work"
cp -rL "$here/subproject_app" "$work/src"
mkdir -p "$work/src/subprojects"
ln -s "$root" "$work/src/subprojects/hop"
meson setup "$work/build" "$work/src" "$@" >"$work/setup.log" || { cat "$work/setup.log"; exit 1; }
ninja -C "$work/build" | tail -1
# Nothing of hop's but the library was built.
if find "$work/build/subprojects/hop" -name '*_test' -o -name requests -o -name '*_bench' | grep -q .; then
    echo "hop built tests, examples or benchmarks as a subproject" >&2
    exit 1
fi
"$work/build/app"
