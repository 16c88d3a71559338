// hop::http::server over HTTP/2 (lib/http/h2_server.cpp), against real
// peers: curl (prior knowledge in cleartext, ALPN over TLS), nghttp,
// h2load, Python's h2 for raw frames, and raw bytes for broken prefaces.

#include <hop/http.hpp>

#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/sync.hpp>
#include <hop/task.hpp>
#include <hop/time.hpp>
#include <hop/tls.hpp>

#include "support/backend.hpp"
#include "support/http_peers.hpp"
#include "support/http_server_fixture.hpp"
#include "support/sockets.hpp"
#include "support/tls_certs.hpp"

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using hop_test::for_each_backend;
using hop_test::options_for;
using hop_test::peer_result;
using hop_test::run_on;
using hop_test::run_peer;
namespace http = hop::http;

namespace {

std::string h2c_url(const http::server& srv, std::string_view path) { return hop_test::url_of(srv, path); }

std::string https_url(const http::server& srv, std::string_view path) {
    return "https://localhost:" + std::to_string(srv.local_endpoint().port()) + std::string(path);
}

// The lines of `text`, sorted.
std::vector<std::string> sorted_lines(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string l; std::getline(in, l);) out.push_back(l);
    std::sort(out.begin(), out.end());
    return out;
}

// The HTTP/2 frames in `bytes`: type and payload.
struct frame {
    int type;
    std::string payload;
};
std::vector<frame> frames_of(std::string_view bytes) {
    std::vector<frame> out;
    while (bytes.size() >= 9) {
        const std::size_t len = (static_cast<std::size_t>(static_cast<unsigned char>(bytes[0])) << 16) |
                                (static_cast<std::size_t>(static_cast<unsigned char>(bytes[1])) << 8) |
                                static_cast<unsigned char>(bytes[2]);
        if (bytes.size() < 9 + len) break;
        out.push_back({static_cast<unsigned char>(bytes[3]), std::string(bytes.substr(9, len))});
        bytes.remove_prefix(9 + len);
    }
    return out;
}
// A GOAWAY payload's error code.
std::uint32_t goaway_code(const std::string& payload) {
    if (payload.size() < 8) return 0xffffffff;
    std::uint32_t c = 0;
    for (int i = 4; i < 8; ++i) c = (c << 8) | static_cast<unsigned char>(payload[static_cast<std::size_t>(i)]);
    return c;
}

constexpr std::string_view preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

}  // namespace

TEST_SUITE("http2_server") {

TEST_CASE("curl --http2-prior-knowledge: GET, a POST echoed, HEAD; HTTP/1.1 on the same port") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, hop_test::with_server(hop_test::test_app, hop_test::test_options(),
                                           [](http::server& srv) -> hop::task<void> {
            auto r_run = run_peer({"curl", "-sS", "--http2-prior-knowledge", "-w", "|%{http_version}",
                                              h2c_url(srv, "/a/b?c=d")});
            peer_result r = co_await std::move(r_run);
            REQUIRE_MESSAGE(r.exited_ok(), r.describe());
            CHECK(r.out == "hello GET /a/b?c=d|2");

            const std::string body = hop_test::text_body(200 * 1024);
            auto e_run = run_peer({"curl", "-sS", "--http2-prior-knowledge", "--data-binary", "@-", "-H",
                                              "Content-Type: text/x-test", "-D", "/dev/stderr",
                                              h2c_url(srv, "/echo")},
                                             body);
            peer_result e = co_await std::move(e_run);
            REQUIRE_MESSAGE(e.exited_ok(), e.describe());
            CHECK(e.out.size() == body.size());
            CHECK(e.out == body);
            CHECK(e.err.find("HTTP/2 200") != std::string::npos);
            CHECK(e.err.find("content-type: text/x-test") != std::string::npos);
            CHECK(e.err.find("content-length: " + std::to_string(body.size())) != std::string::npos);

            auto h_run = run_peer({"curl", "-sS", "--http2-prior-knowledge", "-I", h2c_url(srv, "/h")});
            peer_result h = co_await std::move(h_run);
            REQUIRE_MESSAGE(h.exited_ok(), h.describe());
            CHECK(h.out.find("HTTP/2 200") == 0);
            CHECK(h.out.find("content-length: 13") != std::string::npos);  // "hello HEAD /h": the handler saw HEAD

            auto one_run = run_peer({"curl", "-sS", "--http1.1", "-w", "|%{http_version}",
                                                h2c_url(srv, "/one")});
            peer_result one = co_await std::move(one_run);
            REQUIRE_MESSAGE(one.exited_ok(), one.describe());
            CHECK(one.out == "hello GET /one|1.1");
            CHECK(srv.stats().connections == 0);
        }));
    });
}

TEST_CASE("curl --http2 over TLS: ALPN picks h2; --http1.1 still gets HTTP/1.1") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        auto o = hop_test::test_options();
        o.tls = hop::tls::context::server(certs.localhost.cert, certs.localhost.key);
        run_on(loop, hop_test::with_server(hop_test::test_app, std::move(o), [&certs](http::server& srv)
                                                                                  -> hop::task<void> {
            const std::string body = hop_test::text_body(100 * 1024);
            auto r_run = run_peer({"curl", "-sS", "--http2", "--cacert", certs.ca, "-w",
                                              "|%{http_version}", "--data-binary", "@-", https_url(srv, "/echo")},
                                             body);
            peer_result r = co_await std::move(r_run);
            REQUIRE_MESSAGE(r.exited_ok(), r.describe());
            CHECK(r.out == body + "|2");
            auto one_run = run_peer({"curl", "-sS", "--http1.1", "--cacert", certs.ca, "-w",
                                                "|%{http_version}", https_url(srv, "/one")});
            peer_result one = co_await std::move(one_run);
            REQUIRE_MESSAGE(one.exited_ok(), one.describe());
            CHECK(one.out == "hello GET /one|1.1");
            // Many streams at once over TLS: its reads and writes overlap.
            auto load_run = run_peer({"h2load", "-n", "1000", "-c", "2", "-m", "32", https_url(srv, "/size/5000")});
            peer_result load = co_await std::move(load_run);
            REQUIRE_MESSAGE(load.exited_ok(), load.describe());
            CHECK_MESSAGE(load.out.find("requests: 1000 total, 1000 started, 1000 done, 1000 succeeded, 0 failed") !=
                              std::string::npos,
                          load.out);
            CHECK_MESSAGE(load.out.find("Application protocol: h2") != std::string::npos, load.out);
        }));
    });
}

TEST_CASE("nghttp: 200 streams on one connection, every body checked, at most max_concurrent_streams at once") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        auto in_flight = std::make_shared<int>(0);
        auto most = std::make_shared<int>(0);
        auto handler = [in_flight, most](http::request& req) -> hop::task<http::response> {
            ++*in_flight;
            *most = std::max(*most, *in_flight);
            // Hold the stream open across a loop turn, so streams overlap.
            co_await hop::sleep_for(1ms);
            --*in_flight;
            // One line per response, ending with the path: nghttp prints the
            // DATA of every stream as it comes, and one frame stays whole.
            http::response r;
            r.body = std::string(100, 'x') + req.url.substr(1) + "\n";
            co_return r;
        };
        run_on(loop, hop_test::with_server(handler, hop_test::test_options(), [most](http::server& srv) -> hop::task<void> {
            std::vector<std::string> argv{"nghttp"};
            std::string expected;
            for (int i = 0; i < 200; ++i) {
                argv.push_back(h2c_url(srv, "/s" + std::to_string(i)));
                expected += std::string(100, 'x') + "s" + std::to_string(i) + "\n";
            }
            auto r_run = run_peer(argv);
            peer_result r = co_await std::move(r_run);
            REQUIRE_MESSAGE(r.exited_ok(), r.describe());
            CHECK_MESSAGE(r.out.size() == expected.size(), r.err.substr(0, 3000));
            CHECK(sorted_lines(r.out) == sorted_lines(expected));
            CHECK(*most <= 100);
            CHECK(*most >= 1);
            CHECK(srv.stats().accepted == 1);
            CHECK(srv.stats().requests == 200);

            auto v_run = run_peer({"nghttp", "-nv", h2c_url(srv, "/v")});
            peer_result v = co_await std::move(v_run);
            REQUIRE_MESSAGE(v.exited_ok(), v.describe());
            CHECK(v.out.find("[SETTINGS_MAX_CONCURRENT_STREAMS(0x03):100]") != std::string::npos);
        }));
    });
}

TEST_CASE("h2load -n 2000 -c 4 -m 32: every request succeeds, over 4 connections") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, hop_test::with_server(hop_test::test_app, hop_test::test_options(),
                                           [](http::server& srv) -> hop::task<void> {
            auto r_run = run_peer({"h2load", "-n", "2000", "-c", "4", "-m", "32", h2c_url(srv, "/size/1000")});
            peer_result r = co_await std::move(r_run);
            REQUIRE_MESSAGE(r.exited_ok(), r.describe());
            CHECK_MESSAGE(r.out.find("requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored") !=
                              std::string::npos,
                          r.out);
            CHECK_MESSAGE(r.out.find("status codes: 2000 2xx") != std::string::npos, r.out);
            const auto finished = r.out.find("finished in");
            if (finished != std::string::npos) MESSAGE(r.out.substr(finished, r.out.find('\n', finished) - finished));
            CHECK(srv.stats().accepted == 4);
            CHECK(srv.stats().requests == 2000);
        }));
    });
}

// Raw HTTP/2 from Python (hpack from Debian's python3-h2 stack), for what
// no well-behaved client sends. argv: port, mode.
//   limit: 4 streams at once before the server's SETTINGS are seen; prints
//          "rst <stream> <code>" for each RST_STREAM, then "status <s>" for
//          each response after the test releases the handlers, then "closed".
//   rapid: 2000 streams, each reset at once (CVE-2023-44487); prints
//          "goaway <code>" and "closed".
//   continuation: a HEADERS frame and 30 CONTINUATIONs; prints "goaway
//          <code>" and "closed".
//   zerowindow: SETTINGS_INITIAL_WINDOW_SIZE 0 and a GET it never opens
//          a window for; prints "status <s>", "goaway <code>", "closed".
//   bigbody: a POST without Content-Length whose DATA passes 1000 bytes;
//          prints "status <s>" and ends.
constexpr const char* raw_client = R"PY(
import socket, struct, sys, hpack
port, mode = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port))
enc = hpack.Encoder()
def frame(t, flags, sid, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([t, flags]) + sid.to_bytes(4, "big") + payload
def get(path):
    return enc.encode([(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "t")])
out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
if mode == "zerowindow":
    out += frame(4, 0, 0, (4).to_bytes(2, "big") + (0).to_bytes(4, "big")) + frame(1, 5, 1, get("/size/100000"))
else:
    out += frame(4, 0, 0)
if mode == "limit":
    for sid in (1, 3, 5, 7):
        out += frame(1, 5, sid, get("/block"))
elif mode == "rapid":
    for i in range(2000):
        sid = 2 * i + 1
        out += frame(1, 5, sid, get("/r")) + frame(3, 0, sid, (8).to_bytes(4, "big"))
elif mode == "bigbody":
    post = enc.encode([(":method", "POST"), (":path", "/echo"), (":scheme", "http"), (":authority", "t")])
    out += frame(1, 4, 1, post) + frame(0, 0, 1, b"d" * 600) + frame(0, 0, 1, b"d" * 600)
elif mode == "continuation":
    block = enc.encode([(":method", "GET"), (":path", "/c"), (":scheme", "http"), (":authority", "t"),
                        ("x-long", "v" * 300)])
    pieces = [block[i:i + 10] for i in range(0, len(block), 10)]
    out += frame(1, 1, 1, pieces[0])
    for p in pieces[1:-1]:
        out += frame(9, 0, 1, p)
    out += frame(9, 4, 1, pieces[-1])
try:
    s.sendall(out)
except OSError:
    pass
dec = hpack.Decoder()
buf = b""
while True:
    try:
        data = s.recv(65536)
    except OSError:
        data = b""
    if not data:
        print("closed", flush=True)
        break
    buf += data
    while len(buf) >= 9:
        n = int.from_bytes(buf[0:3], "big")
        if len(buf) < 9 + n:
            break
        t, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff
        payload = buf[9:9 + n]
        buf = buf[9 + n:]
        if t == 4 and not flags & 1:
            s.sendall(frame(4, 1, 0))
        elif t == 3:
            print("rst", sid, int.from_bytes(payload[:4], "big"), flush=True)
        elif t == 7:
            print("goaway", int.from_bytes(payload[4:8], "big"), flush=True)
        elif t == 1:
            print("status", dict(dec.decode(payload))[":status"], flush=True)
            if mode == "bigbody":
                sys.exit(0)
)PY";

TEST_CASE("limits: a body over max_body_bytes gets 413, a head over max_header_bytes 431") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        auto o = hop_test::test_options();
        o.max_body_bytes = 1000;
        o.max_header_bytes = 2000;
        run_on(loop, hop_test::with_server(hop_test::test_app, std::move(o), [](http::server& srv) -> hop::task<void> {
            // Content-Length says it: refused at the head. (Each request is a
            // curl of its own: Debian's curl 7.88 fails a second request on a
            // reused prior-knowledge connection with "Error in the HTTP2
            // framing layer", against nginx too.)
            auto r_run = run_peer({"curl", "-sS", "--http2-prior-knowledge", "-w", "|%{http_code}", "--data-binary",
                                   "@-", h2c_url(srv, "/echo")},
                                  std::string(5000, 'b'));
            peer_result r = co_await std::move(r_run);
            REQUIRE_MESSAGE(r.exited_ok(), r.describe());
            CHECK(r.out == "Content Too Large\n|413");
            // Far over it (1 MiB): the 413, then RST_STREAM NO_ERROR asks
            // the client to stop sending (nghttp reads the answer whole).
            const auto file = std::filesystem::temp_directory_path() /
                              ("hop-h2-big-" + std::to_string(srv.local_endpoint().port()));
            {
                std::ofstream f(file, std::ios::binary);
                f << std::string(1 << 20, 'B');
            }
            auto huge_run = run_peer({"nghttp", "-v", "-d", file.string(), h2c_url(srv, "/echo")});
            peer_result big_post = co_await std::move(huge_run);
            std::filesystem::remove(file);
            REQUIRE_MESSAGE(big_post.exited_ok(), big_post.describe());
            CHECK_MESSAGE(big_post.out.find(":status: 413") != std::string::npos, big_post.out);
            CHECK_MESSAGE(big_post.out.find("recv RST_STREAM frame") != std::string::npos, big_post.out);
            CHECK_MESSAGE(big_post.out.find("error_code=NO_ERROR") != std::string::npos, big_post.out);
            CHECK(big_post.out.find("Content Too Large") != std::string::npos);
            // No Content-Length: refused when the DATA passes the limit.
            const std::string port = std::to_string(srv.local_endpoint().port());
            auto raw_run = run_peer({"/usr/bin/python3", "-c", raw_client, port, "bigbody"});
            peer_result raw = co_await std::move(raw_run);
            REQUIRE_MESSAGE(raw.exited_ok(), raw.describe());
            CHECK(raw.out == "status 413\n");
            // Within the limit: echoed.
            auto ok_run = run_peer({"curl", "-sS", "--http2-prior-knowledge", "--data-binary", "@-",
                                               h2c_url(srv, "/echo")},
                                              std::string(1000, 'c'));
            peer_result ok = co_await std::move(ok_run);
            REQUIRE_MESSAGE(ok.exited_ok(), ok.describe());
            CHECK(ok.out == std::string(1000, 'c'));
            // A header list over max_header_bytes.
            auto big_run = run_peer({"curl", "-sS", "--http2-prior-knowledge", "-w", "|%{http_code}", "-H",
                                                "X-Big: " + std::string(3000, 'h'), h2c_url(srv, "/big")});
            peer_result big = co_await std::move(big_run);
            REQUIRE_MESSAGE(big.exited_ok(), big.describe());
            CHECK(big.out == "Request Header Fields Too Large\n|431");
        }));
    });
}

TEST_CASE("broken prefaces and frames: the connection closes, the server goes on") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, hop_test::with_server(hop_test::test_app, hop_test::test_options(),
                                           [](http::server& srv) -> hop::task<void> {
            const auto ep = srv.local_endpoint();
            // The preface cut short, then the client ends its side: closed,
            // nothing sent.
            {
                auto c = co_await hop::tcp_stream::connect(ep);
                const std::string part(preface.substr(0, 10));
                co_await c.write_all(part);
                ::shutdown(c.native_handle(), SHUT_WR);
                const std::string got = co_await hop_test::read_until_close(c);
                CHECK(got.empty());
            }
            // The whole preface, then bytes that are no SETTINGS frame: our
            // SETTINGS, then GOAWAY (PROTOCOL_ERROR), then the close.
            {
                std::string bytes(preface);
                bytes += std::string(40, 'Z');
                const std::string got = co_await hop_test::exchange(ep, bytes);
                const std::vector<frame> frames = frames_of(got);
                REQUIRE(!frames.empty());
                CHECK(frames.front().type == 4);  // SETTINGS
                REQUIRE(frames.back().type == 7);  // GOAWAY
                CHECK(goaway_code(frames.back().payload) == 1);  // PROTOCOL_ERROR
            }
            // Not the preface after its first line: HTTP/1 answers it (PRI is
            // no method it serves) and closes.
            {
                const std::string got = co_await hop_test::exchange(ep, "PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n");
                CHECK(hop_test::starts_with(got, "HTTP/1.1 "));
                CHECK(!hop_test::starts_with(got, "HTTP/1.1 2"));
            }
            auto r_run = run_peer({"curl", "-sS", "--http2-prior-knowledge", h2c_url(srv, "/still")});
            peer_result r = co_await std::move(r_run);
            REQUIRE_MESSAGE(r.exited_ok(), r.describe());
            CHECK(r.out == "hello GET /still");
        }));
    });
}

// A Python h2 client (Debian's python3-h2) that sends GET /slow, reports
// the GOAWAY, opens a stream past it, then reads the first stream's
// response and the close.
constexpr const char* goaway_client = R"PY(
import socket, struct, sys, hpack, h2.connection, h2.config
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
c.send_headers(1, [(":method", "GET"), (":path", "/slow"), (":scheme", "http"), (":authority", "t")], end_stream=True)
s.sendall(c.data_to_send())
dec = hpack.Decoder()
buf = b""
body = b""
while True:
    data = s.recv(65536)
    if not data:
        print("closed", flush=True)
        break
    buf += data
    while len(buf) >= 9:
        n = int.from_bytes(buf[0:3], "big")
        if len(buf) < 9 + n:
            break
        ftype, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff
        payload = buf[9:9 + n]
        buf = buf[9 + n:]
        if ftype == 4 and not flags & 1:
            s.sendall(b"\0\0\0\4\1\0\0\0\0")
        elif ftype == 7:
            last, code = struct.unpack(">II", payload[:8])
            print("goaway", last & 0x7fffffff, code, flush=True)
        elif ftype == 1 and sid == 1:
            print("status", dict(dec.decode(payload))[":status"], flush=True)
        elif ftype == 0 and sid == 1:
            body += payload
        if ftype in (0, 1) and sid == 1 and flags & 1:
            print("body", body.decode(), flush=True)
)PY";

TEST_CASE("graceful shutdown: GOAWAY with the last stream id, the stream in flight finishes, then the close") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        auto entered = std::make_shared<hop::event>();
        auto release = std::make_shared<hop::event>();
        auto handler = [entered, release](http::request& req) -> hop::task<http::response> {
            if (req.url == "/slow") {
                entered->set();
                co_await release->wait();
                co_return http::response{.status = 200, .headers = {}, .body = "finished"};
            }
            co_return http::response{.status = 200, .headers = {}, .body = "other"};
        };
        // idle_timeout far below the grace: a handler running holds it off.
        auto o = hop_test::test_options();
        o.idle_timeout = 50ms;
        auto srv = http::server::bind(hop::endpoint::loopback_v4(0), handler, std::move(o));
        const std::string port = std::to_string(srv.local_endpoint().port());
        run_on(loop, [](http::server& srv, std::string port, std::shared_ptr<hop::event> entered,
                        std::shared_ptr<hop::event> release) -> hop::task<void> {
            hop::future<void> serving = hop::current_loop()->spawn(srv.serve());
            auto client = std::make_shared<hop_test::peer_process>(
                std::vector<std::string>{"/usr/bin/python3", "-c", goaway_client, port});
            co_await entered->wait();
            srv.shutdown();
            // The GOAWAY comes while the handler still holds its stream.
            // (Each blocking call is named before its await: g++ 12.2 would
            // destroy a lambda temporary in a co_await operand twice.)
            auto read_line = [client] { return client->read_line(); };
            auto first = hop::run_blocking(read_line);
            std::string line = co_await std::move(first);
            CHECK(line == "goaway 1 0");
            release->set();
            std::vector<std::string> rest;
            for (;;) {
                auto next = hop::run_blocking(read_line);
                std::string l = co_await std::move(next);
                if (l.empty()) break;
                rest.push_back(l);
            }
            auto wait_client = [client] { return client->wait(); };
            auto ended = hop::run_blocking(wait_client);
            peer_result done = co_await std::move(ended);
            std::string all = done.describe();
            for (const auto& l : rest) all += l + ";";
            const std::vector<std::string> want{"status 200", "body finished", "closed"};
            CHECK_MESSAGE(rest == want, all);
            co_await serving;  // serve() returns normally once the stream ended
            CHECK(srv.stats().connections == 0);
        }(srv, port, entered, release));
    });
}


TEST_CASE("max_concurrent_streams: a stream past the SETTINGS limit is refused (REFUSED_STREAM), never run") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        auto entered = std::make_shared<int>(0);
        auto release = std::make_shared<hop::event>();
        auto all_in = std::make_shared<hop::event>();
        auto handler = [entered, release, all_in](http::request&) -> hop::task<http::response> {
            if (++*entered == 3) all_in->set();
            co_await release->wait();
            co_return http::response{.status = 200, .headers = {}, .body = "ok"};
        };
        auto o = hop_test::test_options();
        o.max_concurrent_streams = 3;
        run_on(loop, hop_test::with_server(handler, std::move(o), [entered, release, all_in](http::server& srv)
                                                                      -> hop::task<void> {
            const std::string port = std::to_string(srv.local_endpoint().port());
            auto client = std::make_shared<hop_test::peer_process>(
                std::vector<std::string>{"/usr/bin/python3", "-c", raw_client, port, "limit"});
            auto read_line = [client] { return client->read_line(); };
            auto first = hop::run_blocking(read_line);
            const std::string line = co_await std::move(first);
            CHECK(line == "rst 7 7");  // REFUSED_STREAM
            co_await all_in->wait();
            CHECK(*entered == 3);
            release->set();
            std::vector<std::string> statuses;
            for (int i = 0; i < 3; ++i) {
                auto next = hop::run_blocking(read_line);
                statuses.push_back(co_await std::move(next));
            }
            const std::vector<std::string> want(3, "status 200");
            CHECK(statuses == want);
            CHECK(*entered == 3);
        }));
    });
}

TEST_CASE("rapid reset and CONTINUATION floods: GOAWAY and the close; other connections are served") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        auto ran_c = std::make_shared<bool>(false);
        auto handler = [ran_c](http::request& req) -> hop::task<http::response> {
            if (req.url == "/c") *ran_c = true;
            co_return http::response{.status = 200, .headers = {}, .body = "ok"};
        };
        run_on(loop, hop_test::with_server(handler, hop_test::test_options(), [ran_c](http::server& srv)
                                                                                  -> hop::task<void> {
            const std::string port = std::to_string(srv.local_endpoint().port());
            for (const std::string mode : {"rapid", "continuation"}) {
                auto run = run_peer({"/usr/bin/python3", "-c", raw_client, port, mode});
                peer_result r = co_await std::move(run);
                REQUIRE_MESSAGE(r.exited_ok(), mode << ": " << r.describe());
                // The last two lines: the GOAWAY (an error code, not
                // NO_ERROR), then the close.
                CHECK_MESSAGE(r.out.find("goaway ") != std::string::npos, mode << ": " << r.out.substr(0, 2000));
                CHECK(r.out.find("goaway 0\n") == std::string::npos);
                CHECK(r.out.size() >= 7);
                CHECK(r.out.substr(r.out.size() - 7) == "closed\n");
                auto ok_run = run_peer({"curl", "-sS", "--http2-prior-knowledge", h2c_url(srv, "/fine")});
                peer_result ok = co_await std::move(ok_run);
                REQUIRE_MESSAGE(ok.exited_ok(), ok.describe());
                CHECK(ok.out == "ok");
            }
            CHECK(!*ran_c);
        }));
    });
}

TEST_CASE("idle_timeout: GOAWAY for a connection with no stream open, and for one whose window never opens") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        auto o = hop_test::test_options();
        o.idle_timeout = 200ms;
        run_on(loop, hop_test::with_server(hop_test::test_app, std::move(o), [](http::server& srv) -> hop::task<void> {
            // A preface and an empty SETTINGS frame, then nothing: the
            // server's SETTINGS (and its ACK), then GOAWAY NO_ERROR, then the
            // close (exchange reads until it).
            std::string bytes(preface);
            bytes += std::string("\0\0\0\4\0\0\0\0\0", 9);
            const std::string got = co_await hop_test::exchange(srv.local_endpoint(), bytes);
            const std::vector<frame> frames = frames_of(got);
            REQUIRE(!frames.empty());
            REQUIRE(frames.back().type == 7);
            CHECK(goaway_code(frames.back().payload) == 0);  // NO_ERROR
            // A stream whose window never opens holds a response that
            // cannot move: idle too (GOAWAY), then closed after another
            // idle_timeout.
            const std::string port = std::to_string(srv.local_endpoint().port());
            auto zero_run = run_peer({"/usr/bin/python3", "-c", raw_client, port, "zerowindow"});
            peer_result zero = co_await std::move(zero_run);
            REQUIRE_MESSAGE(zero.exited_ok(), zero.describe());
            CHECK(zero.out == "status 200\ngoaway 0\nclosed\n");
            CHECK(srv.stats().connections == 0);
        }));
    });
}

TEST_CASE("http2 = false, or a streaming handler: HTTP/1.1 only (ALPN http/1.1, the preface answered as HTTP/1)") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        auto o = hop_test::test_options();
        o.http2 = false;
        o.tls = hop::tls::context::server(certs.localhost.cert, certs.localhost.key);
        run_on(loop, hop_test::with_server(hop_test::test_app, std::move(o), [&certs](http::server& srv)
                                                                                  -> hop::task<void> {
            auto r_run = run_peer({"curl", "-sS", "--http2", "--cacert", certs.ca, "-w", "|%{http_version}",
                                   https_url(srv, "/x")});
            peer_result r = co_await std::move(r_run);
            REQUIRE_MESSAGE(r.exited_ok(), r.describe());
            CHECK(r.out == "hello GET /x|1.1");
        }));
        auto streaming = [](http::request&, http::response_writer& w) -> hop::task<void> {
            co_await w.write("streamed");
        };
        run_on(loop, hop_test::with_server(streaming, hop_test::test_options(), [](http::server& srv)
                                                                                    -> hop::task<void> {
            std::string bytes(preface);
            bytes += std::string("\0\0\0\4\0\0\0\0\0", 9);
            const std::string got = co_await hop_test::exchange(srv.local_endpoint(), bytes);
            CHECK(hop_test::starts_with(got, "HTTP/1.1 "));
        }));
    });
}

TEST_CASE("options: max_concurrent_streams 0 is refused, naming it") {
    auto o = hop_test::test_options();
    o.max_concurrent_streams = 0;
    CHECK_THROWS_WITH_AS(http::server::bind(hop::endpoint::loopback_v4(0), hop_test::test_app, o),
                         doctest::Contains("max_concurrent_streams is 0"), std::invalid_argument);
}

}  // TEST_SUITE
