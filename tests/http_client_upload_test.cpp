// hop::http::client's streamed request bodies (request::body_source): a
// file sent with Content-Length, a producer's body sent chunked or with its
// declared length, redirects and bad input; against hop's own server (which
// reports exactly what arrived) and httpbin under gunicorn (a server nobody
// here wrote).

#include <hop/http/client.hpp>

#include <hop/hop.hpp>
#include <hop/http.hpp>

#include "support/backend.hpp"
#include "support/http_origin.hpp"
#include "support/http_peers.hpp"
#include "support/http_server_fixture.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <system_error>

namespace http = hop::http;
using hop_test::fnv1a;

namespace {

// Text with structure, so a lost or moved byte shows.
std::string text_of(std::size_t size) {
    std::string s;
    s.reserve(size + 64);
    for (std::size_t i = 0; s.size() < size; ++i) s += "upload line " + std::to_string(i) + "\n";
    s.resize(size);
    return s;
}

// What arrived: "CL TE size hash" ("-" for a field that was absent).
std::string digest_of(const http::request& req) {
    return std::string(req.headers.get("Content-Length").value_or("-")) + " " +
           std::string(req.headers.get("Transfer-Encoding").value_or("-")) + " " + std::to_string(req.body.size()) +
           " " + std::to_string(fnv1a(req.body));
}

hop::task<http::response> upload_app(http::request& req) {
    http::response r;
    if (req.url == "/r307" || req.url == "/r308") {
        r.status = req.url == "/r307" ? 307 : 308;
        r.headers.add("Location", "/digest");
        co_return r;
    }
    if (req.url == "/r303") {
        r.status = 303;
        r.headers.add("Location", "/digest");
        co_return r;
    }
    r.body = req.method + " " + digest_of(req);
    co_return r;
}

http::server_options upload_options() {
    http::server_options o = hop_test::test_options();
    o.max_body_bytes = 16 << 20;
    return o;
}

// A producer of `text` in pieces of at most `step` bytes (the state is
// shared, as a producer's copies share it).
http::body_source producer_of(std::string text, std::size_t step, std::optional<std::uint64_t> size = std::nullopt) {
    struct state {
        std::string text;
        std::size_t at = 0;
        std::size_t step;
    };
    auto st = std::make_shared<state>(state{std::move(text), 0, step});
    http::body_source::producer_function fn = [st](std::span<char> buf) -> hop::task<std::size_t> {
        const std::size_t n = std::min({buf.size(), st->step, st->text.size() - st->at});
        std::copy_n(st->text.data() + st->at, n, buf.data());
        st->at += n;
        co_return n;
    };
    return http::body_source::producer(std::move(fn), size);
}

// The message of the E that fetching `r` throws (a failed check if it
// throws nothing or another type).
template <class E>
hop::task<std::string> fetch_error(http::client& client, http::request r) {
    try {
        (void)co_await client.fetch(std::move(r));
    } catch (const E& e) {
        co_return std::string(e.what());
    } catch (const std::exception& e) {
        FAIL_CHECK("another exception: " << e.what());
        co_return std::string();
    }
    FAIL_CHECK("no exception");
    co_return std::string();
}

http::request put(std::string url, http::body_source src) {
    http::request r;
    r.method = "PUT";
    r.url = std::move(url);
    r.body_source = std::move(src);
    return r;
}

hop::task<void> uploads(hop::backend) {
    const std::string text = text_of(3 * 1024 * 1024 + 17);
    const hop_test::temp_dir dir;
    const std::string path = (dir.path() / "upload.txt").string();
    hop_test::write_file(path, text);
    const std::string want_len = std::to_string(text.size()) + " - " + std::to_string(text.size()) + " " +
                                 std::to_string(fnv1a(text));
    const std::string want_chunked = "- chunked " + std::to_string(text.size()) + " " + std::to_string(fnv1a(text));
    auto body = [&](http::server& srv) -> hop::task<void> {
        http::client client;
        // A file: Content-Length is its size, the bytes arrive whole.
        http::request a = put(hop_test::url_of(srv, "/digest"), http::body_source::file(path));
        http::response r = co_await client.fetch(std::move(a));
        CHECK(r.status == 200);
        CHECK(r.body == "PUT " + want_len);
        // A producer without a size: chunked, pieces of odd sizes.
        http::request b = put(hop_test::url_of(srv, "/digest"), producer_of(text, 777));
        r = co_await client.fetch(std::move(b));
        CHECK(r.body == "PUT " + want_chunked);
        // A producer with its size: Content-Length.
        http::request c = put(hop_test::url_of(srv, "/digest"), producer_of(text, 100000, text.size()));
        r = co_await client.fetch(std::move(c));
        CHECK(r.body == "PUT " + want_len);
        // The caller's own Transfer-Encoding: chunked over a file.
        http::request d = put(hop_test::url_of(srv, "/digest"), http::body_source::file(path));
        d.headers.add("Transfer-Encoding", "chunked");
        r = co_await client.fetch(std::move(d));
        CHECK(r.body == "PUT " + want_chunked);
        // An empty file and an empty producer.
        const std::string empty = (dir.path() / "empty").string();
        hop_test::write_file(empty, "");
        http::request e = put(hop_test::url_of(srv, "/digest"), http::body_source::file(empty));
        r = co_await client.fetch(std::move(e));
        CHECK(r.body == "PUT 0 - 0 " + std::to_string(fnv1a("")));
        http::request f = put(hop_test::url_of(srv, "/digest"), producer_of("", 10));
        r = co_await client.fetch(std::move(f));
        CHECK(r.body == "PUT - chunked 0 " + std::to_string(fnv1a("")));

        // Redirects: a file is sent again to a 307/308's target; a
        // producer's body cannot be, so the 307 is the answer; a 303 turns
        // the request into a GET without a body.
        for (const char* where : {"/r307", "/r308"}) {
            http::request g = put(hop_test::url_of(srv, where), http::body_source::file(path));
            r = co_await client.fetch(std::move(g));
            CHECK(r.status == 200);
            CHECK(r.body == "PUT " + want_len);
        }
        http::request h = put(hop_test::url_of(srv, "/r307"), producer_of(text, 4096));
        r = co_await client.fetch(std::move(h));
        CHECK(r.status == 307);
        http::request i = put(hop_test::url_of(srv, "/r303"), producer_of(text, 4096));
        r = co_await client.fetch(std::move(i));
        CHECK(r.status == 200);
        CHECK(r.body == "GET - - 0 " + std::to_string(fnv1a("")));
        // Every upload above went on and the pool still works.
        r = co_await client.get(hop_test::url_of(srv, "/digest"));
        CHECK(r.body == "GET - - 0 " + std::to_string(fnv1a("")));
    };
    co_await hop_test::with_server(upload_app, upload_options(), body);
}

#define CHECK_THAT_CONTAINS(text_expr, needle)                                   \
    do {                                                                         \
        const std::string text_ = text_expr;                                     \
        CHECK_MESSAGE(text_.find(needle) != std::string::npos, text_);           \
    } while (false)

hop::task<void> bad_sources(hop::backend) {
    CHECK_THROWS_WITH_AS(http::body_source::file(""), doctest::Contains("the path is empty"), std::invalid_argument);
    CHECK_THROWS_WITH_AS(http::body_source::producer({}), doctest::Contains("the function is empty"),
                         std::invalid_argument);
    auto body = [&](http::server& srv) -> hop::task<void> {
        http::client client;
        const std::string u = hop_test::url_of(srv, "/digest");
        // Both a body and a source; a source and a Content-Length.
        http::request a = put(u, producer_of("abc", 10));
        a.body = "xyz";
        CHECK_THAT_CONTAINS(co_await fetch_error<std::invalid_argument>(client, std::move(a)), "has a body of 3 bytes too");
        http::request b = put(u, producer_of("abc", 10));
        b.headers.add("Content-Length", "3");
        CHECK_THAT_CONTAINS(co_await fetch_error<std::invalid_argument>(client, std::move(b)), "Content-Length '3'");
        // A producer that gives fewer or more bytes than it declared.
        http::request c = put(u, producer_of(std::string(500, 'a'), 64, 1000));
        CHECK_THAT_CONTAINS(co_await fetch_error<std::invalid_argument>(client, std::move(c)), "gave 500 bytes of its 1000");
        http::request d = put(u, producer_of(std::string(1500, 'a'), 64, 1000));
        CHECK_THAT_CONTAINS(co_await fetch_error<std::invalid_argument>(client, std::move(d)), "gave more than its 1000 bytes");
        // A producer that claims more than the piece it was given.
        http::body_source::producer_function liar = [](std::span<char> buf) -> hop::task<std::size_t> {
            co_return buf.size() + 1;
        };
        http::request e = put(u, http::body_source::producer(liar));
        CHECK_THAT_CONTAINS(co_await fetch_error<std::invalid_argument>(client, std::move(e)), "returned 65537 for a piece of 65536");
        // A producer that throws: its exception, and the connection is not reused.
        http::body_source::producer_function thrower = [](std::span<char>) -> hop::task<std::size_t> {
            throw std::runtime_error("producer broke");
            co_return 0;
        };
        http::request f = put(u, http::body_source::producer(thrower));
        const std::string broke = co_await fetch_error<std::runtime_error>(client, std::move(f));
        CHECK(broke == "producer broke");
        // A file that is not there.
        http::request g = put(u, http::body_source::file("/nonexistent/hop-upload"));
        CHECK_THAT_CONTAINS(co_await fetch_error<std::system_error>(client, std::move(g)), "/nonexistent/hop-upload");
        // The client is fine afterwards.
        http::response r = co_await client.get(u);
        CHECK(r.status == 200);
    };
    co_await hop_test::with_server(upload_app, upload_options(), body);
}

// httpbin's /anything echoes what it received: a file with Content-Length
// and a producer's body chunked (gunicorn de-chunks it).
hop::task<void> httpbin_uploads(hop::backend, const hop_test::httpbin_peer& bin) {
    const std::string text = text_of(200 * 1024);
    const hop_test::temp_dir dir;
    const std::string path = (dir.path() / "upload.txt").string();
    hop_test::write_file(path, text);
    // httpbin's JSON: compact, newlines escaped.
    std::string data = "\"data\":\"";
    for (char c : text) {
        if (c == '\n') {
            data += "\\n";
        } else {
            data += c;
        }
    }
    data += '"';
    http::client client;
    http::request a = put(bin.url("/anything"), http::body_source::file(path));
    http::response r = co_await client.fetch(std::move(a));
    REQUIRE(r.status == 200);
    CHECK(r.body.find("\"Content-Length\":\"" + std::to_string(text.size()) + "\"") != std::string::npos);
    CHECK(r.body.find(data) != std::string::npos);
    http::request b = put(bin.url("/anything"), producer_of(text, 5000));
    r = co_await client.fetch(std::move(b));
    REQUIRE(r.status == 200);
    CHECK(r.body.find("\"Transfer-Encoding\":\"chunked\"") != std::string::npos);
    CHECK(r.body.find(data) != std::string::npos);
}

}  // namespace

TEST_SUITE("http_client_upload") {
    TEST_CASE("a file, a producer chunked or sized, redirects") {
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, uploads(b)); });
    }
    TEST_CASE("bad sources and failing producers") {
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, bad_sources(b)); });
    }
    TEST_CASE("httpbin under gunicorn receives both kinds") {
        hop_test::httpbin_peer bin;
        hop_test::for_each_backend([&bin](hop::backend b) { hop_test::run_on(b, httpbin_uploads(b, bin)); });
    }
}
