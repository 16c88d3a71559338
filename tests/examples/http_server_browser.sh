#!/usr/bin/env bash
# examples/http_server as a browser and ab see it: ab -k (HTTP/1.0 with
# keep-alive) keeps every connection alive; the /echo link is a page, not
# an empty download; a 404 says its Content-Type; a method / does not take
# gets 405 with Allow; POST /echo still echoes.
# Usage: http_server_browser.sh BUILD_DIR BACKEND
set -euo pipefail
build=$1
backend=$2
source "$(dirname "$0")/serve.sh"
start_server --backend "$backend"

echo "== ab -k -n 2000 -c 10 $url ($backend)"
ab -k -n 2000 -c 10 "$url" >"$dir/ab.out" 2>&1 || { cat "$dir/ab.out"; echo "FAIL: ab"; exit 1; }
complete=$(sed -n 's/^Complete requests: *\([0-9]*\).*/\1/p' "$dir/ab.out")
kept=$(sed -n 's/^Keep-Alive requests: *\([0-9]*\).*/\1/p' "$dir/ab.out")
failed=$(sed -n 's/^Failed requests: *\([0-9]*\).*/\1/p' "$dir/ab.out")
echo "complete=$complete keep-alive=$kept failed=$failed"
[ "$complete" = 2000 ] && [ "$failed" = 0 ] || { cat "$dir/ab.out"; echo "FAIL: not 2000 clean requests"; exit 1; }
[ "$kept" = "$complete" ] || { cat "$dir/ab.out"; echo "FAIL: keep-alive requests $kept of $complete"; exit 1; }

echo "== GET /echo (the link on the page)"
curl -sS --max-time 20 -D "$dir/echo.head" -o "$dir/echo.body" "${url}echo"
grep -qi '^content-type: text/html' "$dir/echo.head" || { cat "$dir/echo.head"; echo "FAIL: /echo is not a page"; exit 1; }
grep -q '<form' "$dir/echo.body" || { echo "FAIL: /echo has no form"; exit 1; }

echo "== POST /echo"
got=$(curl -sS --max-time 20 --data-binary 'hello browser' "${url}echo")
[ "$got" = "hello browser" ] || { echo "FAIL: /echo answered '$got'"; exit 1; }

echo "== 404"
code=$(curl -sS --max-time 20 -D "$dir/404.head" -o /dev/null -w '%{http_code}' "${url}nope")
[ "$code" = 404 ] || { echo "FAIL: /nope answered $code"; exit 1; }
grep -qi '^content-type: text/plain' "$dir/404.head" || { cat "$dir/404.head"; echo "FAIL: 404 without Content-Type"; exit 1; }

echo "== DELETE /"
code=$(curl -sS --max-time 20 -X DELETE -D "$dir/405.head" -o /dev/null -w '%{http_code}' "$url")
[ "$code" = 405 ] || { echo "FAIL: DELETE / answered $code"; exit 1; }
grep -qi '^allow: GET, HEAD' "$dir/405.head" || { cat "$dir/405.head"; echo "FAIL: 405 without Allow"; exit 1; }

kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=
[ "$status" -eq 0 ] || { echo "FAIL: exit status $status"; cat "$dir/server.err"; exit 1; }
echo "ok"
