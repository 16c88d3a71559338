#!/usr/bin/env python3
"""Writes the seed corpus for the HTTP fuzz targets: fuzz/corpus/request/ and
fuzz/corpus/response/. Each file is two control bytes (the split point and the
options, see the targets) followed by what a peer would send: ordinary
messages and the request-smuggling cases the parser must refuse.
Run from the repository root: python3 fuzz/make_corpus.py
The regress_* files beside them are inputs the fuzzers once failed on; this
script leaves them alone."""
import gzip, os, zlib

def write(kind, name, body, split=0x80, options=0):
    d = os.path.join("fuzz", "corpus", kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes([split, options]) + body)

R = b"\r\n"
requests = {
    "get": b"GET /items?id=1 HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n",
    "get_http10": b"GET / HTTP/1.0\r\n\r\n",
    "get_keepalive10": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "post_length": b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
    "post_chunked_trailers": b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Checksum: abc\r\n\r\n",
    "pipelined": b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                 b"GET /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    "expect_continue": b"PUT /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\ndata",
    "upgrade": b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    "connect": b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
    "options_star": b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    "absolute_target": b"GET http://h/x?y HTTP/1.1\r\nHost: h\r\n\r\n",
    # Smuggling and malformed: each must be refused.
    "smuggle_cl_te": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
    "smuggle_te_cl": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
    "smuggle_two_cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "smuggle_cl_list": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "smuggle_lone_cr": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rTransfer-Encoding: chunked\r\n\r\n",
    "smuggle_bare_lf": b"GET / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n0\n\n",
    "smuggle_obs_fold": b"POST / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "smuggle_obs_fold_empty": b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "smuggle_bad_chunk_size": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "smuggle_chunk_overflow": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
    "smuggle_te_not_last": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "smuggle_te_gzip": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "smuggle_te_space_colon": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "smuggle_after_close": b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n",
    "smuggle_nul": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
    "http2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}
for name, body in requests.items():
    write("request", name, body)
write("request", "get_small_limits", requests["post_length"], options=1)
write("request", "post_chunked_eof", requests["post_chunked_trailers"][:-10], split=0x20, options=2)
write("request", "big_header", b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 400 + b"\r\n\r\n", options=1)

text = b"".join(b"line %d of some compressible text\n" % (i * 7919 % 1000) for i in range(200))
gz = gzip.compress(text, 9)
zl = zlib.compress(text, 9)
co = zlib.compressobj(9, zlib.DEFLATED, -15)
raw = co.compress(text) + co.flush()

def chunked(data, size=200):
    out = b""
    for i in range(0, len(data), size):
        part = data[i:i + size]
        out += b"%x\r\n" % len(part) + part + R
    return out + b"0\r\n\r\n"

responses = {
    "ok_length": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    "ok_chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2;x=y\r\nef\r\n0\r\nX-T: 1\r\n\r\n",
    "http10_close": b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.11\r\n\r\nbody until close",
    "continue_then_ok": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    "no_content": b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    "redirect": b"HTTP/1.1 302 Found\r\nLocation: /next\r\nContent-Length: 0\r\n\r\n",
    "gzip_length": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(gz) + gz,
    "gzip_chunked": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(gz),
    "deflate_zlib": b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n" % len(zl) + zl,
    "deflate_raw": b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n" % len(raw) + raw,
    "gzip_bomb": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + chunked(gzip.compress(b"\0" * (4 << 20), 9), 1000),
    "gzip_truncated": b"HTTP/1.1 200 OK\r\nContent-Encoding: x-gzip\r\nContent-Length: %d\r\n\r\n" % (len(gz) - 9) + gz[:-9],
    "smuggle_cl_te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "smuggle_two_cl": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "smuggle_obs_fold": b"HTTP/1.1 200 OK\r\nX: a\r\n\tContent-Length: 3\r\n\r\nabc",
    "bad_status": b"HTTP/1.1 20 OK\r\n\r\n",
    "te_gzip_until_close": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + gz[:40],
}
for name, body in responses.items():
    write("response", name, body)
write("response", "head_answer", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", options=1)
write("response", "until_close_eof", responses["http10_close"], split=0x40, options=2)
write("response", "small_limits", responses["ok_chunked"], options=4 | 2)
