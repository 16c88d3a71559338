// hop::http::client and URLs as users write them: credentials in the URL
// (Basic auth, never carried to another origin by a redirect), spaces and
// UTF-8 percent-encoded, what cannot be sent refused with the byte named.
// Against hop servers that echo what they got, and httpbin.

#include <hop/http/client.hpp>

#include <hop/http.hpp>
#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/task.hpp>

#include "lib/http/client_url.hpp"
#include "support/backend.hpp"
#include "support/http_peers.hpp"
#include "support/http_server_fixture.hpp"

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

// /to/PORT/rest: a 302 to http://127.0.0.1:PORT/rest; /here: a 302 to
// /landed on this origin; /creds/PORT: a 302 to a URL with credentials of
// its own; anything else: what came.
hop::task<http::response> echo_app(http::request& req) {
    http::response r;
    const std::string& t = req.url;
    if (t.rfind("/to/", 0) == 0) {
        const auto slash = t.find('/', 4);
        r.status = 302;
        r.headers.add("Location", "http://127.0.0.1:" + t.substr(4, slash - 4) + t.substr(slash));
        co_return r;
    }
    if (t == "/here") {
        r.status = 302;
        r.headers.add("Location", "/landed");
        co_return r;
    }
    if (t.rfind("/creds/", 0) == 0) {
        r.status = 302;
        r.headers.add("Location", "http://bob:b%20pw@127.0.0.1:" + t.substr(7) + "/landed");
        co_return r;
    }
    if (t == "/spaced") {
        r.status = 301;
        r.headers.add_unchecked("Location", "/a dir/\xc3\xbc?q=x y");
        co_return r;
    }
    r.body = "target=" + t + "\nauthorization=" + std::string(req.headers.get("Authorization").value_or("")) + "\n";
    co_return r;
}

std::string base(const http::server& srv) { return "http://127.0.0.1:" + std::to_string(srv.local_endpoint().port()); }

std::string invalid_argument_of(http::client& c, const std::string& u) {
    try {
        (void)c.get(u);
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return "no exception";
}

}  // namespace

TEST_SUITE("http_client_url") {

TEST_CASE("write_url: credentials out, path and query encoded, the rest kept") {
    using hop::http::detail::write_url;
    auto w = write_url("http://alice:p%40ss%20w@Host:81/a b/\xc3\xbc?q=x y&r=%41%zz#f g");
    CHECK(w.text == "http://Host:81/a%20b/%C3%BC?q=x%20y&r=%41%25zz#f%20g");
    REQUIRE(w.authorization);
    CHECK(*w.authorization == "Basic YWxpY2U6cEBzcyB3");  // alice:p@ss w
    CHECK(write_url("http://h/\"<>\\^`{|}").text == "http://h/%22%3C%3E%5C%5E%60%7B%7C%7D");
    CHECK(write_url("http://h/100%").text == "http://h/100%25");
    CHECK(write_url("http://h/%e2%82%AC").text == "http://h/%e2%82%AC");
    CHECK_FALSE(write_url("http://h/x?u=http://a:b@c/").authorization);
    CHECK(write_url("http://u:p@ss@h/").authorization == std::optional<std::string>("Basic dTpwQHNz"));  // u:p@ss
    CHECK(write_url("/rel ative?x=\xc3\xa9").text == "/rel%20ative?x=%C3%A9");
    CHECK(write_url("//u:p@h/x").text == "//h/x");
    // Control characters stay for url::parse to refuse.
    CHECK(write_url("http://h/a\x01").text == "http://h/a\x01");
    try {
        write_url("http://u:hunter%2@h/");
        FAIL("no exception");
    } catch (const std::invalid_argument& e) {
        CHECK(has(e.what(), "http://u:***@h/"));
        CHECK(!has(e.what(), "hunter"));
    }
}

TEST_CASE("credentials in the URL are sent as Basic auth, and never to another origin") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, hop_test::with_server(echo_app, hop_test::test_options(), [](http::server& one) -> hop::task<void> {
            co_await hop_test::with_server(echo_app, hop_test::test_options(), [&one](http::server& two) -> hop::task<void> {
                const std::string creds = "http://alice:p%40ss%20w@127.0.0.1:" +
                                          std::to_string(one.local_endpoint().port());
                const std::string alice = "authorization=Basic YWxpY2U6cEBzcyB3\n";
                http::client c;
                http::response r = co_await c.get(creds + "/x");
                CHECK(r.body == "target=/x\n" + alice);
                // The stream's URL carries no credentials.
                http::response_stream s = co_await c.open(creds + "/y");
                CHECK(s.url() == base(one) + "/y");
                const std::string streamed = co_await s.read_all();
                CHECK(streamed == "target=/y\n" + alice);
                // The request's own Authorization wins.
                http::headers mine;
                mine.add("Authorization", "Bearer t0ken");
                http::response m = co_await c.get(creds + "/z", std::move(mine));
                CHECK(m.body == "target=/z\nauthorization=Bearer t0ken\n");
                // A redirect within the origin keeps them; to another origin
                // (another port) they stay behind.
                http::response same = co_await c.get(creds + "/here");
                CHECK(same.body == "target=/landed\n" + alice);
                const std::string away = creds + "/to/" + std::to_string(two.local_endpoint().port()) + "/landed";
                http::response other = co_await c.get(away);
                CHECK(other.body == "target=/landed\nauthorization=\n");
                // A Location's own credentials are used for its target.
                http::response given = co_await c.get(base(one) + "/creds/" + std::to_string(two.local_endpoint().port()));
                CHECK(given.body == "target=/landed\nauthorization=Basic Ym9iOmIgcHc=\n");  // bob:b pw
            });
        }));
    });
}

TEST_CASE("spaces, UTF-8 and unsafe characters are percent-encoded; escapes are kept") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, hop_test::with_server(echo_app, hop_test::test_options(), [](http::server& srv) -> hop::task<void> {
            http::client c;
            http::response r = co_await c.get(base(srv) + "/a b/\xc3\xbc\xe2\x82\xac?q=x y&e=\xc3\xa9#frag ment");
            CHECK(r.body == "target=/a%20b/%C3%BC%E2%82%AC?q=x%20y&e=%C3%A9\nauthorization=\n");
            http::response e = co_await c.get(base(srv) + "/pre%2Fdone/%zz/{x}|100%");
            CHECK(e.body == "target=/pre%2Fdone/%25zz/%7Bx%7D%7C100%25\nauthorization=\n");
            // A Location written with a space and UTF-8 is followed, encoded.
            http::response l = co_await c.get(base(srv) + "/spaced");
            CHECK(l.body == "target=/a%20dir/%C3%BC?q=x%20y\nauthorization=\n");
        }));
    });
}

TEST_CASE("what cannot be sent is still refused, naming the byte, without the password") {
    http::client c;
    std::string m = invalid_argument_of(c, "http://127.0.0.1/a\x01z");
    CHECK(has(m, "control character at byte 18"));
    m = invalid_argument_of(c, "http://b\xc3\xbc" "cher.example/");
    CHECK(has(m, "non-ASCII byte at byte 8"));  // no IDNA for hosts
    m = invalid_argument_of(c, "http://user:hunter2@/x");
    CHECK(has(m, "empty host"));
    CHECK(!has(m, "hunter2"));
    m = invalid_argument_of(c, "http://u:a%0d%0ab@h/");
    CHECK(has(m, "CR, LF or NUL"));
}

TEST_CASE("httpbin: basic auth from the URL, and an encoded query it decodes") {
    hop_test::httpbin_peer bin;
    for_each_backend([&](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, [&]() -> hop::task<void> {
            http::client c;
            const std::string port = std::to_string(bin.port());
            http::response ok = co_await c.get("http://user:passwd@127.0.0.1:" + port + "/basic-auth/user/passwd");
            CHECK(ok.status == 200);
            CHECK(has(ok.body, "\"authenticated\":true"));
            http::response no = co_await c.get("http://user:wrong@127.0.0.1:" + port + "/basic-auth/user/passwd");
            CHECK(no.status == 401);
            http::response q = co_await c.get(bin.url("/get?name=J\xc3\xbcrgen M&x=a b"));
            CHECK(q.status == 200);
            INFO(q.body);
            CHECK(has(q.body, "\"name\":\"J\\u00fcrgen M\""));
            CHECK(has(q.body, "\"x\":\"a b\""));
        }());
    });
}

}  // TEST_SUITE
