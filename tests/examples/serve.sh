# Sourced by the example scripts beside it: a temp dir removed at exit with
# the server still running killed, and start_server, which runs
# examples/http_server (--port 0, then the arguments given) and waits for its
# "listening on" line (bounded: 400 polls), setting server_pid and url.
# Expects $build (the build dir) to be set.
# shellcheck shell=bash
dir=$(mktemp -d /tmp/hop-example-XXXXXX)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill -KILL "$server_pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

start_server() {
    "$build/examples/http_server" --port 0 "$@" >"$dir/server.out" 2>"$dir/server.err" &
    server_pid=$!
    for _ in $(seq 1 400); do
        grep -q "listening on" "$dir/server.out" 2>/dev/null && break
        kill -0 "$server_pid" 2>/dev/null || { echo "http_server died:"; cat "$dir/server.err"; exit 1; }
        sleep 0.05
    done
    url=$(grep -o 'https\?://[^ ]*' "$dir/server.out" | head -1)
    [ -n "$url" ] || { echo "http_server did not say where it listens:"; cat "$dir/server.out" "$dir/server.err"; exit 1; }
}
