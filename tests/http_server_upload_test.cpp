// hop::http::server's handlers that read the request body as it arrives
// (request_body): uploads from curl (Content-Length, chunked, PUT -T,
// Expect: 100-continue) and from hop's client, a handler that leaves the
// body unread (short: drained and the connection kept; long: answered and
// closed without a reset), and bodies that break the rules (over
// max_body_bytes, bad chunk framing): the server's answer, not the
// handler's.

#include <hop/http/server.hpp>

#include <hop/hop.hpp>
#include <hop/http.hpp>

#include "support/backend.hpp"
#include "support/http_peers.hpp"
#include "support/http_server_fixture.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace http = hop::http;
using hop_test::fnv1a;
using hop_test::for_each_backend;
using hop_test::options_for;
using hop_test::peer_result;
using hop_test::run_on;
using hop_test::run_peer;
using hop_test::text_body;
using hop_test::url_of;
using hop_test::with_server;

namespace {

std::string digest(std::string_view text) { return std::to_string(text.size()) + " " + std::to_string(fnv1a(text)); }

// The upload application:
//   /digest  reads the body in odd-sized pieces: "size hash"
//   /ignore  answers "ignored" without reading
//   /all     read_all(): "size hash"
// `calls` counts handler calls.
auto upload_app(std::shared_ptr<std::atomic<int>> calls) {
    return [calls](http::request& req, http::request_body& body) -> hop::task<http::response> {
        calls->fetch_add(1);
        http::response r;
        if (req.url == "/ignore") {
            r.body = "ignored";
            co_return r;
        }
        if (req.url == "/all") {
            const std::string all = co_await body.read_all();
            CHECK(body.done());
            r.body = digest(all);
            co_return r;
        }
        char buf[7919];
        std::uint64_t size = 0;
        std::uint64_t h = 1469598103934665603ull;
        while (const std::size_t n = co_await body.read_some(std::span<char>(buf, sizeof buf))) {
            size += n;
            h = fnv1a(std::string_view(buf, n), h);
        }
        CHECK(body.done());
        r.body = std::to_string(size) + " " + std::to_string(h);
        co_return r;
    };
}

http::server_options small_limit() {
    http::server_options o = hop_test::test_options();
    o.max_body_bytes = 4 << 20;
    return o;
}

hop::task<void> curl_uploads(http::server& srv) {
    const std::string body = text_body(3 * 1024 * 1024 + 5);
    const std::string want = digest(body);
    const std::vector<std::vector<std::string>> forms{
        {"curl", "-sS", "--data-binary", "@-", url_of(srv, "/digest")},
        {"curl", "-sS", "--data-binary", "@-", "-H", "Transfer-Encoding: chunked", url_of(srv, "/digest")},
        {"curl", "-sS", "-T", "-", url_of(srv, "/all")},
    };
    for (const auto& argv : forms) {
        auto run = run_peer(argv, body);
        peer_result r = co_await std::move(run);
        REQUIRE_MESSAGE(r.exited_ok(), r.describe());
        CHECK_MESSAGE(r.out == want, argv[3]);
    }
    // Expect: 100-continue: the first read sends it.
    auto cont_run = run_peer(
        {"curl", "-sS", "-v", "--data-binary", "@-", "-H", "Expect: 100-continue", url_of(srv, "/digest")}, body);
    peer_result cont = co_await std::move(cont_run);
    REQUIRE_MESSAGE(cont.exited_ok(), cont.describe());
    CHECK(cont.out == want);
    CHECK_MESSAGE(cont.err.find("HTTP/1.1 100 Continue") != std::string::npos, cont.err);
}

hop::task<void> client_uploads(http::server& srv) {
    const std::string body = text_body(1024 * 1024 + 3);
    http::client client;
    http::request a;
    a.method = "POST";
    a.url = url_of(srv, "/digest");
    a.body = body;
    http::response r = co_await client.fetch(std::move(a));
    CHECK(r.body == digest(body));
    // A streamed upload into a streamed read, chunked.
    auto at = std::make_shared<std::size_t>(0);
    http::body_source::producer_function fn = [at, &body](std::span<char> buf) -> hop::task<std::size_t> {
        const std::size_t n = std::min<std::size_t>(buf.size(), body.size() - *at);
        std::copy_n(body.data() + *at, n, buf.data());
        *at += n;
        co_return n;
    };
    http::request b;
    b.method = "PUT";
    b.url = url_of(srv, "/digest");
    b.body_source = http::body_source::producer(fn);
    r = co_await client.fetch(std::move(b));
    CHECK(r.body == digest(body));
    // Bodiless requests: the handler's first read is the end.
    r = co_await client.get(url_of(srv, "/digest"));
    CHECK(r.body == digest(""));
}

// Unread bodies: a short one is drained and the connection carries the next
// request; a long one gets its answer and a close that is not a reset.
hop::task<void> unread_bodies(http::server& srv) {
    const std::string small = text_body(1000);
    const std::string two = "POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + small +
                            "GET /digest HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    const std::string both = co_await hop_test::exchange(srv.local_endpoint(), two);
    CHECK_MESSAGE(both.find("\r\n\r\nignored") != std::string::npos, both);
    CHECK_MESSAGE(both.find("\r\n\r\n" + digest("")) != std::string::npos, both);

    const std::string large = text_body(2 * 1024 * 1024);
    for (const char* expect : {"Expect:", "Expect: 100-continue"}) {
        auto run = run_peer({"curl", "-sS", "-w", "\n%{http_code}", "--data-binary", "@-", "-H", expect,
                             url_of(srv, "/ignore")},
                            large);
        peer_result r = co_await std::move(run);
        REQUIRE_MESSAGE(r.exited_ok(), r.describe());
        CHECK_MESSAGE(r.out == "ignored\n200", expect);
    }
}

// Bodies that break the rules: the server's status, whatever the handler said.
hop::task<void> refused_bodies(http::server& srv, std::shared_ptr<std::atomic<int>> calls) {
    const int before = calls->load();
    // Content-Length over max_body_bytes: 413 before the handler runs.
    const std::string over = co_await hop_test::exchange(
        srv.local_endpoint(), "POST /digest HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n");
    CHECK_MESSAGE(hop_test::starts_with(over, "HTTP/1.1 413 "), over);
    CHECK(calls->load() == before);
    // A chunked body that passes it: 413 from the server.
    const std::string body = text_body(5 * 1024 * 1024);
    auto run = run_peer({"curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", "@-", "-H",
                         "Transfer-Encoding: chunked", url_of(srv, "/digest")},
                        body);
    peer_result r = co_await std::move(run);
    CHECK_MESSAGE(r.out == "413", r.describe());
    // Bad chunk framing: 400.
    const std::string bad = co_await hop_test::exchange(
        srv.local_endpoint(), "POST /digest HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    CHECK_MESSAGE(hop_test::starts_with(bad, "HTTP/1.1 400 "), bad);
}

}  // namespace

TEST_SUITE("http_server_upload") {
    TEST_CASE("curl uploads: Content-Length, chunked, PUT -T, Expect: 100-continue") {
        for_each_backend([](hop::backend b) {
            hop::io_loop loop{options_for(b)};
            auto calls = std::make_shared<std::atomic<int>>(0);
            run_on(loop, with_server(upload_app(calls), small_limit(), curl_uploads));
        });
    }
    TEST_CASE("hop's client uploads, whole and streamed") {
        for_each_backend([](hop::backend b) {
            hop::io_loop loop{options_for(b)};
            auto calls = std::make_shared<std::atomic<int>>(0);
            run_on(loop, with_server(upload_app(calls), small_limit(), client_uploads));
        });
    }
    TEST_CASE("a handler that leaves the body unread") {
        for_each_backend([](hop::backend b) {
            hop::io_loop loop{options_for(b)};
            auto calls = std::make_shared<std::atomic<int>>(0);
            run_on(loop, with_server(upload_app(calls), small_limit(), unread_bodies));
        });
    }
    TEST_CASE("bodies over max_body_bytes or badly framed get the server's answer") {
        for_each_backend([](hop::backend b) {
            hop::io_loop loop{options_for(b)};
            auto calls = std::make_shared<std::atomic<int>>(0);
            auto body = [calls](http::server& srv) { return refused_bodies(srv, calls); };
            run_on(loop, with_server(upload_app(calls), small_limit(), body));
        });
    }
}
