// hop::http::client against real servers nobody here wrote — nginx and
// python3 -m http.server, started by the test on free loopback ports — plus
// bad input, composition with hop::map, and one client shared by loops on
// several threads. Misbehaving servers are in http_client_raw_test.cpp.

#include <hop/http/client.hpp>

#include <hop/hop.hpp>
#include <hop/http.hpp>

#include "support/backend.hpp"
#include "support/http_origin.hpp"
#include "support/sockets.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
namespace http = hop::http;

namespace {

// A request without designated initializers (GCC 12's -Wextra flags the
// members a designated initializer leaves out).
http::request make_request(std::string method, std::string url, std::string body = {}) {
    http::request r;
    r.method = std::move(method);
    r.url = std::move(url);
    r.body = std::move(body);
    return r;
}

// Text files with some structure (compresses, and a lost or moved byte shows).
std::string text_of(std::size_t size, char salt = 'a') {
    std::string s;
    s.reserve(size);
    for (std::size_t i = 0; s.size() < size; ++i) {
        s += "line " + std::to_string(i) + " of hop's test file, salt ";
        s += salt;
        s += '\n';
    }
    s.resize(size);
    return s;
}

std::set<std::uint64_t> connections_of(const std::vector<hop_test::access_entry>& log) {
    std::set<std::uint64_t> out;
    for (const auto& e : log) out.insert(e.connection);
    return out;
}

// ---- nginx -----------------------------------------------------------------------------

// nginx answers 413 from the head and closes, resetting the connection under
// the client's 32 MB upload: the client returns the 413 (RFC 9112 section
// 9.5), not the write's ECONNRESET; a small body is stored.
hop::task<void> early_413(hop_test::nginx_origin& ngx) {
    http::client client;
    const std::string u = ngx.url("/upload-limit");
    for (int i = 0; i < 3; ++i) {
        http::response r = co_await client.post(u, std::string(std::size_t{32} << 20, 'u'));
        CHECK(r.status == 413);
        CHECK(r.body.find("413 Request Entity Too Large") != std::string::npos);
        CHECK(client.stats().open == 0);  // not pooled: the request was not all sent
    }
    http::response small = co_await client.post(u, "small");
    CHECK(small.status == 200);
    CHECK(small.body == "stored\n");
}

hop::task<void> files_and_reuse(hop_test::nginx_origin& ngx, std::string hello) {
    http::client client;
    for (int i = 0; i < 20; ++i) {
        http::response r = co_await client.get(ngx.url("/hello.txt"));
        CHECK(r.status == 200);
        CHECK(r.body == hello);
        CHECK(r.headers.get("Content-Length") == std::to_string(hello.size()));
    }
    http::response missing = co_await client.get(ngx.url("/missing.txt"));
    CHECK(missing.status == 404);  // a response, not an exception
    const auto st = client.stats();
    CHECK(st.connects == 1);
    CHECK(st.reuses == 20);
    CHECK(st.idle == 1);
}

hop::task<void> head_request(hop_test::nginx_origin& ngx, std::size_t size) {
    http::client client;
    http::response r = co_await client.fetch(make_request("HEAD", ngx.url("/hello.txt")));
    CHECK(r.status == 200);
    CHECK(r.body.empty());
    CHECK(r.headers.get("Content-Length") == std::to_string(size));
    http::response g = co_await client.get(ngx.url("/hello.txt"));
    CHECK(g.body.size() == size);
    CHECK(client.stats().connects == 1);  // the HEAD left the connection clean
}

hop::task<http::response> get_one(http::client& client, std::string u) { co_return co_await client.get(std::move(u)); }

hop::task<void> capped(hop_test::nginx_origin& ngx, http::client& client, std::string body) {
    std::vector<hop::task<http::response>> all;
    for (int i = 0; i < 40; ++i) all.push_back(get_one(client, ngx.url("/hello.txt")));
    std::vector<http::response> rs = co_await hop::when_all(std::move(all));
    for (const auto& r : rs) CHECK(r.body == body);
}

hop::task<void> gzip_bodies(hop_test::nginx_origin& ngx, std::string big) {
    http::client client;
    http::response r = co_await client.get(ngx.url("/gz/big.txt"));
    CHECK(r.status == 200);
    CHECK(r.body == big);
    CHECK_FALSE(r.headers.contains("Content-Encoding"));  // decoded: the field described the wire

    http::client raw{{.decompress = false}};
    http::request req = make_request("GET", ngx.url("/gz/big.txt"));
    req.headers.add("Accept-Encoding", "gzip");
    http::response z = co_await raw.fetch(std::move(req));
    CHECK(z.headers.get("Content-Encoding") == "gzip");
    REQUIRE(z.body.size() > 2);
    CHECK(static_cast<unsigned char>(z.body[0]) == 0x1f);
    CHECK(static_cast<unsigned char>(z.body[1]) == 0x8b);
    CHECK(z.body.size() < big.size());

    // Decoded bodies count against max_body_bytes too.
    http::client small{{.max_body_bytes = 10000}};
    std::string what;
    try {
        co_await small.get(ngx.url("/gz/big.txt"));
    } catch (const http::protocol_error& e) {
        what = e.what();
    }
    CHECK_MESSAGE(what.find("max_body_bytes (10000 bytes)") != std::string::npos, what);
}

hop::task<void> chunked_body(hop_test::nginx_origin& ngx, std::string expected) {
    http::client client;
    for (int i = 0; i < 3; ++i) {
        http::response r = co_await client.get(ngx.url("/sub/text.txt"));
        CHECK(r.status == 200);
        CHECK(r.headers.get("Transfer-Encoding") == "chunked");
        CHECK(r.body == expected);
    }
    CHECK(client.stats().connects == 1);
}

hop::task<void> redirects(hop_test::nginx_origin& ngx) {
    http::client client;
    for (int code : {301, 302, 303, 307, 308}) {
        http::response r = co_await client.get(ngx.url("/r" + std::to_string(code)));
        CHECK(r.status == 200);
        CHECK(r.body.rfind("GET /echo ", 0) == 0);
    }
    // A POST becomes a GET without body after 301, 302 and 303; 307 and 308 keep it.
    for (int code : {301, 302, 303, 307, 308}) {
        INFO("status " << code);
        http::response r = co_await client.fetch(make_request("POST", ngx.url("/r" + std::to_string(code)), "abc"));
        CHECK(r.status == 200);
        if (code == 307 || code == 308) {
            CHECK(r.body.rfind("POST /echo ", 0) == 0);
            CHECK(r.body.find("len=3") != std::string::npos);
        } else {
            CHECK(r.body.rfind("GET /echo ", 0) == 0);
            CHECK(r.body.find("len=\n") != std::string::npos);
        }
    }
    http::response chain = co_await client.get(ngx.url("/chain/9"));  // 10 redirects: allowed
    CHECK(chain.status == 200);
    CHECK(chain.body == "hello from nginx\n");

    std::string what;
    try {
        co_await client.get(ngx.url("/chain/10"));  // 11
    } catch (const http::redirect_error& e) {
        what = e.what();
    }
    CHECK_MESSAGE(what.find("more than 10 redirects") != std::string::npos, what);
    CHECK_MESSAGE(what.find("/chain/0, was to ") != std::string::npos, what);  // the last hop
    CHECK_MESSAGE(what.find("/hello.txt") != std::string::npos, what);
    what.clear();
    try {
        co_await client.get(ngx.url("/loop"));
    } catch (const http::redirect_error& e) {
        what = e.what();
    }
    CHECK_MESSAGE(what.find(ngx.url("/loop")) != std::string::npos, what);

    http::client two{{.max_redirects = 2}};
    what.clear();
    try {
        co_await two.get(ngx.url("/chain/3"));
    } catch (const http::redirect_error& e) {
        what = e.what();
    }
    CHECK_MESSAGE(what.find("more than 2 redirects") != std::string::npos, what);

    http::client manual{{.follow_redirects = false}};
    http::response r = co_await manual.get(ngx.url("/r302"));
    CHECK(r.status == 302);
    CHECK(r.headers.contains("Location"));
}

hop::task<void> streamed(hop_test::nginx_origin& ngx, std::string big) {
    http::client client;
    http::response_stream s = co_await client.open(make_request("GET", ngx.url("/big.txt")));
    CHECK(s.status == 200);
    CHECK(s.headers.get("Content-Length") == std::to_string(big.size()));
    std::string got;
    char buf[1000];
    while (std::size_t n = co_await s.read_some(std::span<char>(buf))) got.append(buf, n);
    CHECK(got == big);
    CHECK(s.done());
    CHECK(co_await s.read_some(std::span<char>(buf)) == 0);
    CHECK(client.stats().idle == 1);  // read to the end: back in the pool

    http::response_stream z = co_await client.open(make_request("GET", ngx.url("/gz/big.txt")));
    CHECK_FALSE(z.headers.contains("Content-Encoding"));
    CHECK(co_await z.read_all() == big);
    CHECK(client.stats().connects == 1);
}

hop::task<void> names(hop_test::nginx_origin& ngx) {
    http::client client;
    http::response r = co_await client.get("http://localhost:" + std::to_string(ngx.port()) + "/hello.txt");
    CHECK(r.status == 200);
    CHECK(r.body == "hello from nginx\n");
}

hop::task<void> refused() {
    http::client client;
    hop_test::refusing_port port;
    const std::string u = "http://127.0.0.1:" + std::to_string(port.endpoint().port()) + "/";
    std::string what;
    try {
        co_await client.get(u);
    } catch (const std::system_error& e) {
        CHECK(e.code().value() == ECONNREFUSED);
        what = e.what();
    }
    CHECK_MESSAGE(what.find(u) != std::string::npos, what);
    CHECK(client.stats().open == 0);
}

// The shape from the issue, verbatim.
hop::task<void> many_with_map(hop_test::nginx_origin& ngx, http::client& client, std::size_t count) {
    std::vector<std::string> urls;
    for (std::size_t i = 0; i < count; ++i) urls.push_back(ngx.url("/files/" + std::to_string(i % 10) + ".txt"));
    std::vector<http::response> rs =
        co_await hop::map([&](std::string u) { return fetch(client, u); }, urls, {.max_concurrency = 256});
    REQUIRE(rs.size() == count);
    for (std::size_t i = 0; i < count; ++i) {
        CHECK(rs[i].status == 200);
        CHECK(rs[i].body == text_of(1000 + i % 10, static_cast<char>('a' + i % 10)));
    }
}

void write_numbered_files(const hop_test::nginx_origin& ngx) {
    for (int i = 0; i < 10; ++i) {
        hop_test::write_file(ngx.root() / "files" / (std::to_string(i) + ".txt"), text_of(1000 + i, static_cast<char>('a' + i)));
    }
}

hop::task<http::response_stream> open_stream(http::client& client, std::string u) {
    co_return co_await client.open(make_request("GET", std::move(u)));
}

hop::task<std::string> read_elsewhere(http::response_stream& s) {
    char buf[100];
    try {
        co_await s.read_some(std::span<char>(buf));
    } catch (const std::logic_error& e) {
        co_return std::string(e.what());
    }
    co_return "(nothing thrown)";
}

// ---- python -------------------------------------------------------------------------------

hop::task<void> python_files(hop_test::python_http_origin& py, std::string body) {
    http::client client;
    http::response r = co_await client.get(py.url("/data.txt"));
    CHECK(r.status == 200);
    CHECK(r.body == body);
    http::response again = co_await client.get(py.url("/data.txt"));
    CHECK(again.body == body);
    http::response missing = co_await client.get(py.url("/nothing-here"));
    CHECK(missing.status == 404);
    CHECK_FALSE(missing.body.empty());
    // HTTP/1.0 without keep-alive: one connection per response, none kept.
    CHECK(client.stats().connects == 3);
    CHECK(client.stats().idle == 0);
}

}  // namespace

TEST_SUITE("http_client") {
    TEST_CASE("bad URLs, methods and fields throw std::invalid_argument naming them, before any IO") {
        http::client client;
        auto bad_url = [&](const std::string& u) {
            const std::string what = hop_test::what_of<std::invalid_argument>([&] { (void)client.get(u); });
            CHECK_MESSAGE(what != "(nothing thrown)", u);
        };
        for (const char* u : {"", "not a url", "ftp://127.0.0.1/", "http://", "http://127.0.0.1:99999/",
                              "http://a b/", "http://h/\r\nX: y", "http://user:pw@/"}) {
            bad_url(u);
        }
        CHECK(hop_test::what_of<std::invalid_argument>([&] { (void)client.get("ftp://127.0.0.1/x"); })
                  .find("ftp://127.0.0.1/x") != std::string::npos);


        for (const char* m : {"", "GE T", "GET\r\nX: y", "G\0T", "(GET)"}) {
            const std::string method(m, m[0] == 'G' && m[1] == '\0' ? 3 : std::strlen(m));
            const std::string what = hop_test::what_of<std::invalid_argument>(
                [&] { (void)client.fetch(make_request(method, "http://127.0.0.1/")); });
            CHECK_MESSAGE(what.find("the method '") != std::string::npos, what);
        }

        // headers::add refuses injection; fields that bypassed it are caught too.
        http::headers h;
        CHECK_THROWS_AS(h.add("X-Evil", "a\r\nInjected: 1"), std::invalid_argument);
        CHECK_THROWS_AS(h.add("Bad Name", "v"), std::invalid_argument);
        http::request smuggled = make_request("GET", "http://127.0.0.1/");
        smuggled.headers.add_unchecked("X-Evil", "a\r\nInjected: 1");
        std::string what = hop_test::what_of<std::invalid_argument>([&] { (void)client.fetch(smuggled); });
        CHECK_MESSAGE(what.find("X-Evil") != std::string::npos, what);
        CHECK_MESSAGE(what.find("a\\r\\nInjected: 1") != std::string::npos, what);
        http::request bad_name = make_request("GET", "http://127.0.0.1/");
        bad_name.headers.add_unchecked("X:Evil", "v");
        what = hop_test::what_of<std::invalid_argument>([&] { (void)client.fetch(bad_name); });
        CHECK_MESSAGE(what.find("X:Evil") != std::string::npos, what);

        http::request wrong_length = make_request("POST", "http://127.0.0.1/", "abc");
        wrong_length.headers.add("Content-Length", "5");
        what = hop_test::what_of<std::invalid_argument>([&] { (void)client.fetch(wrong_length); });
        CHECK_MESSAGE(what.find("Content-Length '5'") != std::string::npos, what);
        http::request gzip_te = make_request("POST", "http://127.0.0.1/", "abc");
        gzip_te.headers.add("Transfer-Encoding", "gzip");
        what = hop_test::what_of<std::invalid_argument>([&] { (void)client.fetch(gzip_te); });
        CHECK_MESSAGE(what.find("Transfer-Encoding 'gzip'") != std::string::npos, what);
        CHECK(client.stats().open == 0);
    }

    TEST_CASE("bad client options throw std::invalid_argument naming the value") {
        auto check = [](http::client_options o, const std::string& expected) {
            const std::string what = hop_test::what_of<std::invalid_argument>([&] { http::client c{o}; });
            CHECK_MESSAGE(what.find(expected) != std::string::npos, what);
        };
        check({.max_connections = 0}, "max_connections 0");
        check({.connect_timeout = -5ms}, "connect_timeout -5ms");
        check({.read_timeout = -1s}, "read_timeout -1000ms");
        check({.pool_timeout = -1ms}, "pool_timeout -1ms");
        check({.total_timeout = -2ms}, "total_timeout -2ms");
        check({.idle_timeout = -3ms}, "idle_timeout -3ms");
        check({.max_redirects = -1}, "max_redirects -1");
        check({.max_body_bytes = 0}, "max_body_bytes 0");
        check({.max_header_bytes = 0}, "max_header_bytes 0");
        check({.user_agent = "hop\r\nX: y"}, "user_agent 'hop\\r\\nX: y'");
        http::client ok{{.max_connections = 1, .pool_timeout = 0ms, .total_timeout = 0ms, .idle_timeout = 0ms,
                         .max_redirects = 0}};
        CHECK(ok.options().max_connections == 1);
    }

    TEST_CASE("nginx: files, 404, keep-alive reuse (one connection in nginx's log), HEAD") {
        hop_test::nginx_origin ngx;
        const std::string hello = "hello from nginx\n";
        hop_test::write_file(ngx.root() / "hello.txt", hello);
        hop_test::for_each_backend([&](hop::backend b) {
            hop_test::fd_leak_check fds;
            ngx.clear_access_log();
            hop_test::run_on(b, files_and_reuse(ngx, hello));
            const auto log = ngx.access_log(21);
            REQUIRE(log.size() == 21);
            CHECK(connections_of(log).size() == 1);
            for (std::size_t i = 0; i < log.size(); ++i) CHECK(log[i].connection_requests == i + 1);
            CHECK(log.back().status == 404);
            hop_test::run_on(b, head_request(ngx, hello.size()));
        });
    }

    TEST_CASE("nginx: max_connections and max_connections_per_host are respected") {
        hop_test::nginx_origin ngx;
        hop_test::write_file(ngx.root() / "hello.txt", text_of(3000));
        hop_test::for_each_backend([&](hop::backend b) {
            hop_test::fd_leak_check fds;
            {
                ngx.clear_access_log();
                http::client client{{.max_connections = 3}};
                hop_test::run_on(b, capped(ngx, client, text_of(3000)));
                CHECK(client.stats().connects <= 3);
                CHECK(connections_of(ngx.access_log(40)).size() <= 3);
            }
            {
                ngx.clear_access_log();
                http::client client{{.max_connections = 50, .max_connections_per_host = 2}};
                hop_test::run_on(b, capped(ngx, client, text_of(3000)));
                CHECK(client.stats().connects <= 2);
                CHECK(connections_of(ngx.access_log(40)).size() <= 2);
            }
        });
    }

    TEST_CASE("nginx: gzip (chunked) decoded, or kept with decompress = false") {
        hop_test::nginx_origin ngx;
        const std::string big = text_of(200 * 1000);
        hop_test::write_file(ngx.root() / "gz" / "big.txt", big);
        hop_test::for_each_backend([&](hop::backend b) {
            hop_test::fd_leak_check fds;
            hop_test::run_on(b, gzip_bodies(ngx, big));
        });
    }

    TEST_CASE("nginx: a chunked body (sub_filter) on a kept-alive connection") {
        hop_test::nginx_origin ngx;
        const std::string text = text_of(50 * 1000);
        hop_test::write_file(ngx.root() / "sub" / "text.txt", text);
        std::string expected = text;
        std::replace(expected.begin(), expected.end(), 'a', 'A');
        hop_test::for_each_backend([&](hop::backend b) {
            hop_test::fd_leak_check fds;
            hop_test::run_on(b, chunked_body(ngx, expected));
        });
    }

    TEST_CASE("nginx: 301/302/303/307/308, method rules, max_redirects, follow_redirects = false") {
        hop_test::nginx_origin ngx;
        hop_test::write_file(ngx.root() / "hello.txt", "hello from nginx\n");
        hop_test::for_each_backend([&](hop::backend b) {
            hop_test::fd_leak_check fds;
            hop_test::run_on(b, redirects(ngx));
        });
    }

    TEST_CASE("nginx: open() streams a body with read_some; plain and gzip") {
        hop_test::nginx_origin ngx;
        const std::string big = text_of(300 * 1000, 'q');
        hop_test::write_file(ngx.root() / "big.txt", big);
        hop_test::write_file(ngx.root() / "gz" / "big.txt", big);
        hop_test::for_each_backend([&](hop::backend b) {
            hop_test::fd_leak_check fds;
            hop_test::run_on(b, streamed(ngx, big));
        });
    }

    TEST_CASE("nginx: a 413 answered early during a 32 MB upload is returned, not the write's reset") {
        hop_test::nginx_origin ngx;
        hop_test::for_each_backend([&](hop::backend b) { hop_test::run_on(b, early_413(ngx)); });
    }

    TEST_CASE("nginx: a name is resolved (localhost); a refused port is std::system_error") {
        hop_test::nginx_origin ngx;
        hop_test::write_file(ngx.root() / "hello.txt", "hello from nginx\n");
        hop_test::for_each_backend([&](hop::backend b) {
            hop_test::run_on(b, names(ngx));
            hop_test::run_on(b, refused());
        });
    }

    TEST_CASE("hop::map over 1000 URLs with max_concurrency 256, the issue's shape") {
        hop_test::nginx_origin ngx;
        write_numbered_files(ngx);
        hop_test::for_each_backend([&](hop::backend b) {
            hop_test::fd_leak_check fds;
            ngx.clear_access_log();
            http::client client;
            hop_test::run_on(b, many_with_map(ngx, client, 1000));
            CHECK(client.stats().connects <= 100);
            CHECK(connections_of(ngx.access_log(1000)).size() <= 100);
        });
    }

    TEST_CASE("one client in two hop::run calls in a row: the first loop's connections go with it") {
        if (!hop_test::env_backend_available()) return;
        hop_test::nginx_origin ngx;
        write_numbered_files(ngx);
        hop_test::fd_leak_check fds;
        http::client client;
        hop::run(many_with_map(ngx, client, 50));
        CHECK(client.stats().open == 0);  // the loop is gone, and its idle connections with it
        CHECK(client.stats().idle == 0);
        const auto first = client.stats().connects;
        hop::run(many_with_map(ngx, client, 50));
        CHECK(client.stats().connects > first);
        CHECK(client.stats().open == 0);
    }

    TEST_CASE("one client used from two loops on two threads at once") {
        if (!hop_test::env_backend_available()) return;
        hop_test::nginx_origin ngx;
        write_numbered_files(ngx);
        hop_test::fd_leak_check fds;
        http::client client{{.max_connections = 6}};
        std::exception_ptr errors[2];
        std::vector<std::thread> threads;
        for (int t = 0; t < 2; ++t) {
            threads.emplace_back([&, t] {
                try {
                    for (int round = 0; round < 3; ++round) hop::run(many_with_map(ngx, client, 200));
                } catch (...) {
                    errors[t] = std::current_exception();
                }
            });
        }
        for (auto& th : threads) th.join();
        for (auto& e : errors) {
            if (e) {
                try {
                    std::rethrow_exception(e);
                } catch (const std::exception& x) {
                    FAIL(x.what());
                }
            }
        }
        const auto st = client.stats();
        CHECK(st.open == 0);
        CHECK(connections_of(ngx.access_log(1200)).size() == st.connects);
    }

    TEST_CASE("a thread that runs no loop: the request's IO runs on hop::default_loop()") {
        hop_test::nginx_origin ngx;
        hop_test::write_file(ngx.root() / "hello.txt", "hello from nginx\n");
        http::client client;
        http::response r = hop::sync_wait(client.get(ngx.url("/hello.txt")));
        CHECK(r.body == "hello from nginx\n");
        http::response again = hop::sync_wait(client.get(ngx.url("/hello.txt")));
        CHECK(again.status == 200);
        CHECK(client.stats().connects == 1);
    }

    TEST_CASE("a response_stream read from another loop than its own throws std::logic_error") {
        hop_test::nginx_origin ngx;
        hop_test::write_file(ngx.root() / "big.txt", text_of(100 * 1000));
        hop_test::for_each_backend([&](hop::backend b) {
            hop_test::fd_leak_check fds;
            http::client client;
            hop::io_loop home{hop_test::options_for(b)};
            hop::io_loop other{hop_test::options_for(b)};
            http::response_stream s = hop_test::run_on(home, open_stream(client, ngx.url("/big.txt")));
            CHECK(s.status == 200);
            const std::string what = hop_test::run_on(other, read_elsewhere(s));
            CHECK_MESSAGE(what.find("belongs to another loop") != std::string::npos, what);
            s.close();  // mid-body: the connection is closed, not pooled
            CHECK(client.stats().open == 0);
        });
    }

    TEST_CASE("python3 -m http.server: HTTP/1.0 files and a 404") {
        hop_test::python_http_origin py;
        const std::string body = text_of(70 * 1000, 'p');
        hop_test::write_file(py.root() / "data.txt", body);
        hop_test::for_each_backend([&](hop::backend b) {
            hop_test::fd_leak_check fds;
            hop_test::run_on(b, python_files(py, body));
        });
    }
}
