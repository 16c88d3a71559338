// hop::http::client decoding Content-Encoding br and zstd (and asking for
// them): bodies compressed by the brotli and zstd command-line tools,
// served by a hop server, read whole and streamed; bad, truncated and
// oversized ones; a coding hop does not decode is left as it came.

#include <hop/http/client.hpp>

#include <hop/http.hpp>
#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/task.hpp>

#include "lib/http/body_decoder.hpp"
#include "support/backend.hpp"
#include "support/http_origin.hpp"
#include "support/http_peers.hpp"
#include "support/http_server_fixture.hpp"
#include "support/peer.hpp"

#include <doctest/doctest.h>

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

using hop_test::for_each_backend;
using hop_test::options_for;
using hop_test::run_on;
namespace http = hop::http;

namespace {

bool has(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

// The bodies, compressed once per process by the real tools.
struct bodies {
    std::string plain;       // 300 KiB of text
    std::string br;          // brotli -c plain
    std::string zstd;        // zstd -c plain
    std::string zstd_two;    // two zstd frames: the first and second half
    std::string zeros_zstd;  // 16 MiB of zeros, zstd: a small body that decodes big
    std::string zeros_br;    // the same, brotli
};

std::string compressed(const std::vector<std::string>& argv, const std::string& input) {
    hop_test::peer p(hop_test::peer_options::piped(argv, input));
    const hop_test::peer_result r = p.wait();
    REQUIRE_MESSAGE(r.exited_ok(), r.describe());
    return r.out;
}

const bodies& test_bodies() {
    static const bodies b = [] {
        bodies x;
        x.plain = hop_test::text_body(300 * 1024);
        x.br = compressed({"brotli", "-c"}, x.plain);
        x.zstd = compressed({"zstd", "-q", "-c"}, x.plain);
        x.zstd_two = compressed({"zstd", "-q", "-c"}, x.plain.substr(0, 1000)) +
                     compressed({"zstd", "-q", "-c"}, x.plain.substr(1000));
        const std::string zeros(16 << 20, '\0');
        x.zeros_zstd = compressed({"zstd", "-q", "-c"}, zeros);
        x.zeros_br = compressed({"brotli", "-c"}, zeros);
        return x;
    }();
    return b;
}

// /br, /zstd, /zstd-two, /zeros-zstd, /zeros-br: those bodies with their
// Content-Encoding; /br-cut, /zstd-cut: cut in the middle; /br-junk:
// bytes after the end; /compress: a coding hop does not decode; /ae: the
// request's Accept-Encoding.
hop::task<http::response> encoded_app(http::request& req) {
    const bodies& b = test_bodies();
    http::response r;
    const std::string& t = req.url;
    const auto coded = [&](std::string body, const char* coding) {
        r.body = std::move(body);
        r.headers.add("Content-Encoding", coding);
    };
    if (t == "/br") coded(b.br, "br");
    if (t == "/BR") coded(b.br, " BR ");
    if (t == "/zstd") coded(b.zstd, "zstd");
    if (t == "/zstd-two") coded(b.zstd_two, "zstd");
    if (t == "/zeros-zstd") coded(b.zeros_zstd, "zstd");
    if (t == "/zeros-br") coded(b.zeros_br, "br");
    if (t == "/br-cut") coded(b.br.substr(0, b.br.size() / 2), "br");
    if (t == "/zstd-cut") coded(b.zstd.substr(0, b.zstd.size() / 2), "zstd");
    if (t == "/br-junk") coded(b.br + "junk", "br");
    if (t == "/zstd-bad") coded("\x28\xb5\x2f\xfd" + std::string(64, 'x'), "zstd");
    if (t == "/compress") coded("raw bytes", "compress");
    if (t == "/ae") r.body = std::string(req.headers.get("Accept-Encoding").value_or(""));
    co_return r;
}

std::string base(const http::server& srv) { return "http://127.0.0.1:" + std::to_string(srv.local_endpoint().port()); }

hop::task<std::string> protocol_error_of(http::client& c, std::string u) {
    try {
        http::response r = co_await c.get(std::move(u));
        co_return "no exception: " + std::to_string(r.status);
    } catch (const http::protocol_error& e) {
        co_return e.what();
    }
}

}  // namespace

TEST_SUITE("http_client_encoding") {

TEST_CASE("the decoders, fed whole, byte by byte and in odd pieces") {
    using hop::http::detail::body_decoder;
    const bodies& b = test_bodies();
    struct coded {
        const char* coding;
        const std::string* body;
        std::size_t size;
    };
    for (const coded& c : {coded{"br", &b.br, b.plain.size()}, coded{"zstd", &b.zstd, b.plain.size()},
                           coded{"zstd", &b.zstd_two, b.plain.size()}, coded{"zstd", &b.zeros_zstd, 16u << 20},
                           coded{"br", &b.zeros_br, 16u << 20}}) {
        for (std::size_t step : {c.body->size(), std::size_t{1}, std::size_t{7}, std::size_t{4096}}) {
            INFO(c.coding << " in pieces of " << step);
            auto d = body_decoder::for_encoding(c.coding);
            REQUIRE(d);
            std::string out;
            for (std::size_t i = 0; i < c.body->size(); i += step) {
                d->feed(std::string_view(*c.body).substr(i, step), out, 32u << 20);
            }
            CHECK_NOTHROW(d->finish());
            CHECK(out.size() == c.size);
            if (c.size == b.plain.size()) CHECK(out == b.plain);
        }
    }
    CHECK_FALSE(body_decoder::for_encoding("compress"));
    CHECK_FALSE(body_decoder::for_encoding("gzip, br"));
    CHECK_FALSE(body_decoder::for_encoding("identity"));
    CHECK(body_decoder::for_encoding(" ZSTD "));
}

TEST_CASE("br and zstd bodies from the brotli and zstd tools are decoded, whole and streamed") {
    const bodies& b = test_bodies();
    REQUIRE(b.br.size() < b.plain.size());
    REQUIRE(b.zstd.size() < b.plain.size());
    for_each_backend([&](hop::backend be) {
        hop::io_loop loop{options_for(be)};
        run_on(loop, hop_test::with_server(encoded_app, hop_test::test_options(), [&](http::server& srv) -> hop::task<void> {
            http::client c;
            http::response ae = co_await c.get(base(srv) + "/ae");
            CHECK(ae.body == "gzip, deflate, br, zstd");
            for (const char* path : {"/br", "/BR", "/zstd", "/zstd-two"}) {
                INFO(path);
                http::response r = co_await c.get(base(srv) + path);
                CHECK(r.status == 200);
                CHECK(r.body.size() == b.plain.size());
                CHECK(r.body == b.plain);
                CHECK_FALSE(r.headers.contains("Content-Encoding"));
                CHECK_FALSE(r.headers.contains("Content-Length"));
                http::response_stream s = co_await c.open(base(srv) + path);
                CHECK_FALSE(s.headers.contains("Content-Encoding"));
                std::string streamed;
                char buf[1000];
                while (std::size_t n = co_await s.read_some(buf)) streamed.append(buf, n);
                CHECK(streamed == b.plain);
            }
            // Not decoded: the body and its Content-Encoding as they came.
            http::response raw = co_await c.get(base(srv) + "/compress");
            CHECK(raw.body == "raw bytes");
            CHECK(raw.headers.get("Content-Encoding") == std::optional<std::string_view>("compress"));
            // decompress = false: nothing asked for, nothing decoded.
            http::client off({.decompress = false});
            http::response none = co_await off.get(base(srv) + "/ae");
            CHECK(none.body == "");
            http::response kept = co_await off.get(base(srv) + "/br");
            CHECK(kept.body == b.br);
            CHECK(kept.headers.get("Content-Encoding") == std::optional<std::string_view>("br"));
        }));
    });
}

TEST_CASE("bad, truncated and oversized br and zstd bodies are protocol errors") {
    const bodies& b = test_bodies();
    REQUIRE(b.zeros_zstd.size() < 64 * 1024);
    REQUIRE(b.zeros_br.size() < 64 * 1024);
    for_each_backend([&](hop::backend be) {
        hop::io_loop loop{options_for(be)};
        run_on(loop, hop_test::with_server(encoded_app, hop_test::test_options(), [&](http::server& srv) -> hop::task<void> {
            http::client c({.max_body_bytes = 1 << 20});
            struct bad_case {
                const char* path;
                const char* says;
            };
            for (const bad_case& bc : {bad_case{"/br-cut", "bad br body: the compressed stream is truncated"},
                                       bad_case{"/zstd-cut", "bad zstd body: the compressed stream is truncated"},
                                       bad_case{"/br-junk", "bad br body"},
                                       bad_case{"/zstd-bad", "bad zstd body"},
                                       bad_case{"/zeros-zstd", "exceeds client_options::max_body_bytes (1048576"},
                                       bad_case{"/zeros-br", "exceeds client_options::max_body_bytes (1048576"}}) {
                const std::string what = co_await protocol_error_of(c, base(srv) + bc.path);
                INFO(bc.path << ": " << what);
                CHECK(has(what, bc.says));
                CHECK(has(what, base(srv) + bc.path));
            }
            // The 16 MiB of zeros decode whole under a higher limit.
            http::client big({.max_body_bytes = 32 << 20});
            http::response z = co_await big.get(base(srv) + "/zeros-zstd");
            CHECK(z.body == std::string(16 << 20, '\0'));
            http::response zb = co_await big.get(base(srv) + "/zeros-br");
            CHECK(zb.body.size() == std::size_t{16} << 20);
        }));
    });
}

}  // TEST_SUITE
