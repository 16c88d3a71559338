#!/usr/bin/env bash
# examples/http_server --loops 2 end to end: it says it serves on 2 loops,
# examples/requests fetches from it (every request must succeed), curl
# POSTs to /echo, and SIGTERM shuts it down gracefully (exit 0), after
# which it reports the requests each loop served: both loops must have.
# Usage: http_server_loops.sh BUILD_DIR BACKEND ACCEPT_MODE
set -euo pipefail
build=$1
backend=$2
mode=$3
source "$(dirname "$0")/serve.sh"
start_server --backend "$backend" --loops 2 --accept "$mode"
grep -q "2 loops, $mode)" "$dir/server.out" || { echo "FAIL: not on 2 loops ($mode):"; cat "$dir/server.out"; exit 1; }

echo "== requests against $url ($backend, 2 loops, $mode)"
"$build/examples/requests" --backend "$backend" --url "$url" --requests 400 --concurrency 20 | tee "$dir/ok.out"
grep -q "^errors: *0$" "$dir/ok.out" || { echo "FAIL: errors"; exit 1; }
grep -q "200 x 400" "$dir/ok.out" || { echo "FAIL: not 400 answers of 200"; exit 1; }

echo "== curl POST /echo"
got=$(curl -sS --max-time 20 --data-binary 'hello loops' "${url}echo")
[ "$got" = "hello loops" ] || { echo "FAIL: /echo answered '$got'"; exit 1; }

echo "== SIGTERM: graceful shutdown"
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=
cat "$dir/server.err"
[ "$status" -eq 0 ] || { echo "FAIL: exit status $status"; exit 1; }
line=$(grep "stopped after 401 requests (per loop: " "$dir/server.err") \
    || { echo "FAIL: no 'stopped after 401 requests (per loop: ...)' line"; exit 1; }
read -r a b < <(echo "$line" | sed 's/.*per loop: \([0-9]*\) \([0-9]*\)).*/\1 \2/')
[ "$a" -gt 0 ] && [ "$b" -gt 0 ] || { echo "FAIL: a loop served nothing: $line"; exit 1; }
echo "ok"
