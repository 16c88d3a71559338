#!/usr/bin/env bash
# The flagship over https, end to end, between two example programs:
# examples/http_server --cert/--key serves a certificate made here for
# localhost; examples/requests fetches from it with --cacert (every request
# must succeed) and without (every request must fail verification).
# Usage: https_flagship.sh BUILD_DIR BACKEND
set -euo pipefail
build=$1
backend=$2
source "$(dirname "$0")/serve.sh"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>"$dir/openssl.log" \
    || { cat "$dir/openssl.log"; exit 1; }

start_server --backend "$backend" --cert "$dir/cert.pem" --key "$dir/key.pem"
url=${url/127.0.0.1/localhost}

echo "== requests --cacert against $url ($backend)"
"$build/examples/requests" --backend "$backend" --url "$url" --requests 300 --concurrency 20 --cacert "$dir/cert.pem" \
    | tee "$dir/ok.out"
grep -q "^errors: *0$" "$dir/ok.out" || { echo "FAIL: errors with --cacert"; exit 1; }
grep -q "200 x 300" "$dir/ok.out" || { echo "FAIL: not 300 answers of 200"; exit 1; }

echo "== requests without --cacert: the private certificate must be refused"
if "$build/examples/requests" --backend "$backend" --url "$url" --requests 5 --concurrency 1 >"$dir/bad.out" 2>&1; then
    cat "$dir/bad.out"; echo "FAIL: an unknown certificate was accepted"; exit 1
fi
grep -q "certificate verify failed: self-signed certificate" "$dir/bad.out" \
    || { cat "$dir/bad.out"; echo "FAIL: no verification error"; exit 1; }
echo "ok"
