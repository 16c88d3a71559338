// hop::http::server against the MUSTs of RFC 9112 sections 3 (request
// line, Host, request-target forms) and 6 (message body framing), each
// request sent byte for byte to hop and to nginx 1.22: hop's status must be
// the RFC's, and of nginx's class, except where nginx departs from the
// RFC (said beside the case).
#include <hop/http/server.hpp>

#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/task.hpp>

#include "support/backend.hpp"
#include "support/http_peers.hpp"
#include "support/http_server_fixture.hpp"
#include "support/nginx.hpp"
#include "support/sockets.hpp"

#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using hop_test::for_each_backend;
using hop_test::options_for;
using hop_test::run_on;
using hop_test::with_server;

namespace {

/// nginx on a free loopback port answering every request with
/// `return 200 "ok"` (a request it accepts), one process, everything in a
/// temp dir (support/nginx.hpp). Stopped with the object.
class nginx_peer {
public:
    nginx_peer() : m_nginx(config(), m_dir.path()) {}

    hop::endpoint endpoint() const { return hop::endpoint::loopback_v4(m_nginx.port()); }

private:
    static hop_test::nginx_config config() {
        hop_test::nginx_config c;
        c.http = "    access_log off;\n";
        c.servers.push_back(hop_test::nginx_server_block{"", "        location / { return 200 \"ok\\n\"; }"});
        return c;
    }

    hop_test::temp_dir m_dir{"hop-rfc-"};
    hop_test::nginx_process m_nginx;
};

/// Sends `bytes` to `ep` and returns the status of the first response (0 if
/// the connection closed before one).
hop::task<int> status_of(hop::endpoint ep, std::string bytes) {
    auto c = co_await hop::tcp_stream::connect(ep);
    co_await c.write_all(bytes);
    std::string buffered;
    auto r = co_await hop_test::read_response(c, buffered);
    co_return r.status;
}

/// The handler: "METHOD URL HOST", so the absolute-form case can see what
/// the handler got.
hop::task<hop::http::response> show(hop::http::request& req) {
    hop::http::response r;
    r.body = req.method + " " + req.url + " " + std::string(req.headers.get("Host").value_or("-"));
    co_return r;
}

struct rfc_case {
    const char* rule;  // where the RFC says it
    std::string bytes;
    int hop_status;    // the status the RFC asks for
    int nginx_status;  // 0: nginx agrees (same class); else what nginx 1.22 answers instead
};

std::vector<rfc_case> rfc_cases() {
    const std::string big_target = "/" + std::string(20000, 'a');
    return {
        // 3.2: "A server MUST respond with a 400 (Bad Request) status code to
        // any HTTP/1.1 request message that lacks a Host header field and to
        // any request message that contains more than one Host header field
        // line or a Host header field with an invalid field value."
        {"3.2 no Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", 400, 0},
        {"3.2 two Host lines", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, 0},
        {"3.2 two equal Host lines", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, 0},
        {"3.2 Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, 0},
        {"3.2 Host with a slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, 0},
        {"3.2 an empty Host (an http URI has a host, RFC 9110 4.2.1)", "GET / HTTP/1.1\r\nHost:\r\n\r\n", 400, 0},
        // nginx takes userinfo in Host; RFC 3986's host has no '@'.
        {"3.2 Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, 200},
        {"3.2 Host with a port that is not a number", "GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", 400, 200},
        {"3.2 Host as an IPv6 literal with port", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", 200, 0},
        {"3.2 HTTP/1.0 needs no Host", "GET / HTTP/1.0\r\n\r\n", 200, 0},
        // 3.2.2: "A server MUST accept the absolute-form in requests".
        {"3.2.2 absolute-form", "GET http://example.com/x?y HTTP/1.1\r\nHost: other\r\n\r\n", 200, 0},
        {"3.2.2 absolute-form without Host in HTTP/1.1", "GET http://example.com/x HTTP/1.1\r\n\r\n", 400, 0},
        // 3.2.3: authority-form is only for CONNECT; and this server is no proxy.
        {"3.2.3 authority-form with GET", "GET example.com:80 HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, 0},
        {"3.2.3 CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 400, 0},
        // 3.2.4: asterisk-form is only for OPTIONS (nginx refuses it even there).
        {"3.2.4 asterisk-form with GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, 0},
        {"3.2.4 asterisk-form with OPTIONS", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 200, 400},
        // 3: "A server that receives a request-target longer than any URI it
        // wishes to parse MUST respond with a 414 (URI Too Long)".
        {"3 a request-target over the limit", "GET " + big_target + " HTTP/1.1\r\nHost: a\r\n\r\n", 414, 0},
        // 2.3 / RFC 9110 15.6.6: a major version this server does not speak.
        {"2.3 HTTP/2.0 in HTTP/1 framing", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, 0},
        // 5.1: "A server MUST reject, with a response status code of 400 (Bad
        // Request), any received request message that contains whitespace
        // between a header field name and colon."
        {"5.1 whitespace before the colon", "GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400, 0},
        // 2.2: whitespace between the start-line and the first field: reject.
        {"2.2 whitespace before the first field", "GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, 0},
        // 6.1: Content-Length with Transfer-Encoding: "a server MAY reject ...
        // with 400", and MUST close; hop and nginx reject.
        {"6.1 Transfer-Encoding with Content-Length",
         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
         400, 0},
        // 6.1: "A server or client that receives an HTTP/1.0 message containing
        // a Transfer-Encoding header field MUST treat the message as if the
        // framing is faulty".
        {"6.1 Transfer-Encoding in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
         400, 0},
        // 6.1: a transfer coding the server does not understand: 501 (SHOULD).
        {"6.1 an unknown coding before chunked",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 501, 0},
        // 6.3: "If a Transfer-Encoding header field is present in a request and
        // the chunked transfer coding is not the final encoding, ... the server
        // MUST respond with the 400 (Bad Request) status code" (nginx: 501).
        {"6.3 chunked not the final coding",
         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400, 501},
        {"6.3 no chunked at all", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello", 400, 501},
        // 6.3: "If a message is received without Transfer-Encoding and with an
        // invalid Content-Length header field, ... the server MUST respond with
        // a 400 (Bad Request) status code and then close the connection."
        {"6.3 Content-Length list of two values", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!", 400,
         0},
        {"6.3 Content-Length list of equal values", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
         400, 0},
        {"6.3 two Content-Length lines",
         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400, 0},
        {"6.3 a negative Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\nhello", 400, 0},
        {"6.3 Content-Length with a sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400, 0},
        {"6.3 Content-Length not a number", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\nhello", 400, 0},
    };
}

}  // namespace

TEST_SUITE("http_server_rfc") {

TEST_CASE("RFC 9112 sections 3 and 6: each MUST answered as the RFC says, and as nginx does") {
    nginx_peer nginx;
    const auto cases = rfc_cases();
    for_each_backend([&](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        auto o = hop_test::test_options();
        o.max_header_bytes = 8192;  // nginx's large_client_header_buffers: 8k
        run_on(loop, with_server(show, o, [&](hop::http::server& srv) -> hop::task<void> {
                   for (const auto& c : cases) {
                       const std::string rule = c.rule;
                       CAPTURE(rule);
                       const int ours = co_await status_of(srv.local_endpoint(), c.bytes);
                       const int theirs = co_await status_of(nginx.endpoint(), c.bytes);
                       CHECK(ours == c.hop_status);
                       if (c.nginx_status == 0) {
                           CHECK_MESSAGE(ours / 100 == theirs / 100, "hop " << ours << ", nginx " << theirs);
                       } else {
                           CHECK_MESSAGE(theirs == c.nginx_status, "nginx changed its answer: " << theirs);
                       }
                   }
               }));
    });
}

TEST_CASE("RFC 9112 3.2.2: an absolute-form target's authority replaces Host; the handler sees origin-form") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, with_server(show, hop_test::test_options(), [](hop::http::server& srv) -> hop::task<void> {
                   auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c.write_all(std::string_view(
                       "GET http://example.com:8080/x?y=1 HTTP/1.1\r\nHost: other\r\n\r\n"
                       "GET http://example.com HTTP/1.1\r\nHost: other\r\n\r\n"
                       "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"));
                   std::string buffered;
                   auto r1 = co_await hop_test::read_response(c, buffered);
                   CHECK(r1.body == "GET /x?y=1 example.com:8080");
                   auto r2 = co_await hop_test::read_response(c, buffered);
                   CHECK(r2.body == "GET / example.com");
                   auto r3 = co_await hop_test::read_response(c, buffered);
                   CHECK(r3.body == "OPTIONS * h");
               }));
    });
}

TEST_CASE("RFC 9112 6.3: a body cut short by the client's close is not a request: no handler, connection closed") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, with_server(show, hop_test::test_options(), [](hop::http::server& srv) -> hop::task<void> {
                   auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c.write_all(std::string_view("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello"));
                   c.shutdown_write();
                   const std::string got = co_await hop_test::read_until_close(c);
                   CHECK(got.empty());
                   CHECK(srv.stats().requests == 0);
               }));
    });
}

}  // TEST_SUITE
