// hop::http::server byte by byte: raw requests over hop::tcp_stream for
// what no polite client sends — malformed and ambiguous requests, limits,
// timeouts, pipelining, 100-continue, HTTP/1.0, the connection cap — and the
// server surviving a full descriptor table (in a forked child).
#include <hop/http/server.hpp>

#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/sync.hpp>
#include <hop/task.hpp>
#include <hop/time.hpp>

#include "support/backend.hpp"
#include "support/http_peers.hpp"
#include "support/http_server_fixture.hpp"
#include "support/sockets.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

using namespace std::chrono_literals;
using namespace std::string_view_literals;
using hop_test::exchange;
using hop_test::for_each_backend;
using hop_test::get_request;
using hop_test::options_for;
using hop_test::read_response;
using hop_test::read_until_close;
using hop_test::run_on;
using hop_test::starts_with;
using hop_test::with_server;

namespace {

/// Sends `bytes` on a fresh connection; checks the answer is one response
/// with `status` and that the server then closes the connection; and that
/// the server still answers a good request afterwards. The handler must not
/// have run for the bad request.
hop::task<void> expect_refused(hop::http::server& srv, std::string bytes, int status, const int& handler_calls) {
    const int calls_before = handler_calls;
    auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
    co_await c.write_all(bytes);
    std::string buffered;
    auto r = co_await read_response(c, buffered);
    CHECK_MESSAGE(r.status == status, "got: " << r.head);
    CHECK(r.field("Connection") == "close");
    if (status == 400) CHECK(r.body.find("malformed") != std::string::npos);
    std::string rest = co_await read_until_close(c, buffered);  // the server closes
    CHECK(rest.empty());
    CHECK(handler_calls == calls_before);
    std::string ok = co_await exchange(srv.local_endpoint(), get_request("/after", "Connection: close\r\n"));
    CHECK(starts_with(ok, "HTTP/1.1 200 OK\r\n"));
}

/// test_app, counting its calls.
struct counting_app {
    int* calls;
    hop::task<hop::http::response> operator()(hop::http::request& req) const {
        ++*calls;
        return hop_test::test_app(req);
    }
};

}  // namespace

TEST_SUITE("http_server_wire") {

// ============================================================================
// 400: malformed or ambiguous requests
// ============================================================================

TEST_CASE("400: malformed and ambiguous requests are refused and the connection closed") {
    struct bad_case {
        const char* name;
        std::string bytes;
    };
    const std::vector<bad_case> cases = {
        {"Content-Length with Transfer-Encoding",
         "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
        {"two different Content-Lengths", "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"},
        {"a lone CR in a field", "GET / HTTP/1.1\r\nHost: t\rX: y\r\n\r\n"},
        {"obs-fold", "GET / HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n  b\r\n\r\n"},
        {"a bad chunk size", "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"},
        {"a request line without a version", "GET /\r\nHost: t\r\n\r\n"},
        {"a space before the colon", "GET / HTTP/1.1\r\nHost : t\r\n\r\n"},
    };
    for (const auto& bc : cases) {
        SUBCASE(bc.name) {
            for_each_backend([&](hop::backend b) {
                hop::io_loop loop{options_for(b)};
                int calls = 0;
                run_on(loop, with_server(counting_app{&calls}, hop_test::test_options(),
                                         [&](hop::http::server& srv) -> hop::task<void> {
                                             auto t = expect_refused(srv, bc.bytes, 400, calls);
                                             co_await std::move(t);
                                         }));
            });
        }
    }
}

// ============================================================================
// Limits
// ============================================================================

TEST_CASE("431: a head over max_header_bytes") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        int calls = 0;
        auto o = hop_test::test_options();
        o.max_header_bytes = 4096;
        run_on(loop, with_server(counting_app{&calls}, o, [&](hop::http::server& srv) -> hop::task<void> {
                   // Just under the limit is fine.
                   std::string ok = co_await exchange(
                       srv.local_endpoint(), get_request("/", "X-Big: " + std::string(3000, 'a') + "\r\nConnection: close\r\n"));
                   CHECK(starts_with(ok, "HTTP/1.1 200 OK\r\n"));
                   auto t = expect_refused(srv, get_request("/", "X-Big: " + std::string(5000, 'a') + "\r\n"), 431, calls);
                   co_await std::move(t);
                   // Many small fields add up too.
                   std::string many;
                   for (int i = 0; i < 300; ++i) many += "X-F" + std::to_string(i) + ": 0123456789\r\n";
                   auto t2 = expect_refused(srv, get_request("/", many), 431, calls);
                   co_await std::move(t2);
               }));
    });
}

TEST_CASE("413: a body over max_body_bytes, by Content-Length (no 100 Continue) and by chunks") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        int calls = 0;
        auto o = hop_test::test_options();
        o.max_body_bytes = 1000;
        run_on(loop, with_server(counting_app{&calls}, o, [&](hop::http::server& srv) -> hop::task<void> {
                   // The whole body need not be sent: the head is enough.
                   auto t = expect_refused(srv, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\nabc", 413,
                                           calls);
                   co_await std::move(t);
                   // Expect: 100-continue for a body that is refused: 413 first, no 100.
                   auto t2 = expect_refused(
                       srv, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n", 413,
                       calls);
                   co_await std::move(t2);
                   std::string chunks = "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
                   for (int i = 0; i < 3; ++i) chunks += "1f4\r\n" + std::string(500, 'c') + "\r\n";
                   chunks += "0\r\n\r\n";
                   auto t3 = expect_refused(srv, chunks, 413, calls);
                   co_await std::move(t3);
                   // Exactly the limit is fine.
                   std::string ok = co_await exchange(
                       srv.local_endpoint(),
                       "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n" +
                           std::string(1000, 'b'));
                   CHECK(starts_with(ok, "HTTP/1.1 200 OK\r\n"));
                   CHECK(ok.size() > 1000);
               }));
    });
}

// ============================================================================
// Timeouts
// ============================================================================

TEST_CASE("408: a client that sends half a head and stops is answered 408 and closed") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        int calls = 0;
        auto o = hop_test::test_options();
        o.header_timeout = 100ms;
        run_on(loop, with_server(counting_app{&calls}, o, [&](hop::http::server& srv) -> hop::task<void> {
                   auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c.write_all("GET /slowloris HTTP/1.1\r\nHost: t\r\nX-A: "sv);
                   // Released by the server closing the connection.
                   std::string got = co_await read_until_close(c);
                   CHECK_MESSAGE(starts_with(got, "HTTP/1.1 408 Request Timeout\r\n"), got);
                   CHECK(got.find("Connection: close\r\n") != std::string::npos);
                   CHECK(calls == 0);
                   CHECK(srv.stats().requests == 1);
               }));
    });
}

TEST_CASE("408: a body that stops halfway, after idle_timeout") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        int calls = 0;
        auto o = hop_test::test_options();
        o.idle_timeout = 100ms;
        run_on(loop, with_server(counting_app{&calls}, o, [&](hop::http::server& srv) -> hop::task<void> {
                   auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c.write_all("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhalf"sv);
                   std::string got = co_await read_until_close(c);
                   CHECK_MESSAGE(starts_with(got, "HTTP/1.1 408 "), got);
                   CHECK(calls == 0);
               }));
    });
}

TEST_CASE("idle timeout: a keep-alive connection with no next request is closed silently") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        auto o = hop_test::test_options();
        o.idle_timeout = 100ms;
        o.header_timeout = 60s;
        run_on(loop, with_server(hop_test::test_app, o, [&](hop::http::server& srv) -> hop::task<void> {
                   auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c.write_all(get_request("/one"));
                   std::string buffered;
                   auto r = co_await read_response(c, buffered);
                   CHECK(r.status == 200);
                   CHECK(r.body == "hello GET /one");
                   // Nothing more is sent: the server closes without a word.
                   std::string rest = co_await read_until_close(c, buffered);
                   CHECK(rest.empty());
                   CHECK(srv.stats().requests == 1);
                   // (A new connection that never sends a byte is timed by
                   // header_timeout: http_server_abuse_test.)
               }));
    });
}

// ============================================================================
// Keep-alive, pipelining, HEAD, 1.0, 100-continue
// ============================================================================

TEST_CASE("pipelined requests are answered in order (HEAD among them), in as few writes as possible") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        // /slow answers later than the requests after it could be.
        auto handler = [](hop::http::request& req) -> hop::task<hop::http::response> {
            if (req.url == "/slow") co_await hop::sleep_for(20ms);
            auto t = hop_test::test_app(req);
            co_return co_await std::move(t);
        };
        run_on(loop, with_server(handler, hop_test::test_options(), [&](hop::http::server& srv) -> hop::task<void> {
                   auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   std::string all = get_request("/slow") + get_request("/b", {}, "HEAD") +
                                     "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc" +
                                     "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n" +
                                     get_request("/last", "Connection: close\r\n");
                   co_await c.write_all(all);
                   std::string buf;
                   auto r1 = co_await read_response(c, buf);
                   auto r2 = co_await read_response(c, buf, /*no_body=*/true);
                   auto r3 = co_await read_response(c, buf);
                   auto r4 = co_await read_response(c, buf);
                   auto r5 = co_await read_response(c, buf);
                   CHECK(r1.body == "hello GET /slow");
                   CHECK(r2.status == 200);
                   CHECK(r2.field("Content-Length") == "13");  // "hello HEAD /b"
                   CHECK(r3.body == "abc");
                   CHECK(r4.body == "de");
                   CHECK(r5.body == "hello GET /last");
                   CHECK(r5.field("Connection") == "close");
                   std::string rest = co_await read_until_close(c, buf);
                   CHECK(rest.empty());
                   CHECK(srv.stats().accepted == 1);
               }));
    });
}

TEST_CASE("Expect: 100-continue: 100 only when the body is wanted, before it is read") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, with_server(hop_test::test_app, hop_test::test_options(), [&](hop::http::server& srv) -> hop::task<void> {
                   auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c.write_all(
                       "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"sv);
                   std::string buf;
                   auto cont = co_await read_response(c, buf);
                   CHECK(cont.status == 100);
                   CHECK(cont.head == "HTTP/1.1 100 Continue\r\n");
                   co_await c.write_all("hello"sv);
                   auto r = co_await read_response(c, buf);
                   CHECK(r.status == 200);
                   CHECK(r.body == "hello");
                   // A body sent with the head (the client did not wait): no 100.
                   co_await c.write_all(
                       "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nxyz"sv);
                   auto r2 = co_await read_response(c, buf);
                   CHECK(r2.status == 200);
                   CHECK(r2.body == "xyz");
                   // No body at all: no 100 either.
                   co_await c.write_all(get_request("/nobody", "Expect: 100-continue\r\nConnection: close\r\n"));
                   auto r3 = co_await read_response(c, buf);
                   CHECK(r3.status == 200);
                   CHECK(r3.body == "hello GET /nobody");
               }));
    });
}

TEST_CASE("HTTP/1.0: closed after the response unless keep-alive is asked for") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, with_server(hop_test::test_app, hop_test::test_options(), [&](hop::http::server& srv) -> hop::task<void> {
                   std::string plain = co_await exchange(srv.local_endpoint(), "GET /old HTTP/1.0\r\n\r\n");
                   CHECK(starts_with(plain, "HTTP/1.1 200 OK\r\n"));
                   CHECK(plain.find("Connection: close\r\n") != std::string::npos);
                   CHECK(plain.substr(plain.size() - 14) == "hello GET /old");

                   auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c.write_all("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"sv);
                   std::string buf;
                   auto r1 = co_await read_response(c, buf);
                   CHECK(r1.field("Connection") == "keep-alive");
                   co_await c.write_all("GET /b HTTP/1.0\r\n\r\n"sv);
                   auto r2 = co_await read_response(c, buf);
                   CHECK(r2.body == "hello GET /b");
                   CHECK(r2.field("Connection") == "close");
                   CHECK((co_await read_until_close(c, buf)).empty());
               }));
    });
}

TEST_CASE("responses: Content-Length is the body's, 204/304 carry none, Connection: close from the handler") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        auto handler = [](hop::http::request& req) -> hop::task<hop::http::response> {
            hop::http::response r;
            if (req.url == "/lie") {
                r.headers.add("Content-Length", "999");
                r.body = "short";
            } else if (req.url == "/204") {
                r.status = 204;
                r.body = "dropped";
            } else if (req.url == "/close") {
                r.headers.add("Connection", "close");
                r.body = "bye";
            }
            co_return r;
        };
        run_on(loop, with_server(handler, hop_test::test_options(), [&](hop::http::server& srv) -> hop::task<void> {
                   auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c.write_all(get_request("/lie") + get_request("/204") + get_request("/close"));
                   std::string buf;
                   auto r1 = co_await read_response(c, buf);
                   CHECK(r1.field("Content-Length") == "5");
                   CHECK(r1.body == "short");
                   auto r2 = co_await read_response(c, buf);
                   CHECK(r2.status == 204);
                   CHECK_FALSE(r2.has_field("Content-Length"));
                   auto r3 = co_await read_response(c, buf);
                   CHECK(r3.body == "bye");
                   CHECK(r3.field("Connection") == "close");
                   CHECK((co_await read_until_close(c, buf)).empty());
               }));
    });
}

TEST_CASE("an Upgrade request is answered as a plain request, then the connection closes") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, with_server(hop_test::test_app, hop_test::test_options(), [&](hop::http::server& srv) -> hop::task<void> {
                   std::string out = co_await exchange(
                       srv.local_endpoint(),
                       get_request("/ws", "Connection: Upgrade\r\nUpgrade: websocket\r\n") + get_request("/next"));
                   CHECK(starts_with(out, "HTTP/1.1 200 OK\r\n"));
                   CHECK(out.find("Connection: close\r\n") != std::string::npos);
                   CHECK(out.find("hello GET /ws") != std::string::npos);
                   CHECK(out.find("/next") == std::string::npos);  // not HTTP any more: not answered
               }));
    });
}

// ============================================================================
// Handler failures
// ============================================================================

TEST_CASE("a handler that throws, or returns a bad status, gives 500 (logged); the connection goes on") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        std::vector<std::string> logs;
        auto o = hop_test::test_options();
        o.log = [&logs](std::string_view line) { logs.emplace_back(line); };
        run_on(loop, with_server(hop_test::test_app, o, [&](hop::http::server& srv) -> hop::task<void> {
                   auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c.write_all(get_request("/throw") + get_request("/ok") + get_request("/status/99") +
                                        get_request("/status/1000") + get_request("/status/150") +
                                        get_request("/status/999"));
                   std::string buf;
                   auto r1 = co_await read_response(c, buf);
                   auto r2 = co_await read_response(c, buf);
                   auto r3 = co_await read_response(c, buf);
                   auto r4 = co_await read_response(c, buf);
                   auto r5 = co_await read_response(c, buf);
                   auto r6 = co_await read_response(c, buf);
                   CHECK(r1.status == 500);
                   CHECK(r2.status == 200);
                   CHECK(r2.body == "hello GET /ok");
                   CHECK(r3.status == 500);
                   CHECK(r4.status == 500);
                   CHECK(r5.status == 500);
                   CHECK(r6.status == 999);
                   REQUIRE(logs.size() == 4);
                   CHECK(logs[0].find("GET /throw threw: test_app: /throw") != std::string::npos);
                   CHECK(logs[1].find("returned status 99") != std::string::npos);
                   CHECK(logs[2].find("returned status 1000") != std::string::npos);
                   CHECK(logs[3].find("returned status 150") != std::string::npos);
               }));
    });
}

// ============================================================================
// Streaming over the wire
// ============================================================================

TEST_CASE("response_writer: chunked for 1.1, until close for 1.0, nothing for HEAD, Content-Length kept") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        std::vector<std::string> logs;
        auto o = hop_test::test_options();
        o.log = [&logs](std::string_view line) { logs.emplace_back(line); };
        auto handler = [](hop::http::request& req, hop::http::response_writer& out) -> hop::task<void> {
            if (req.url == "/length") {
                hop::http::headers h;
                h.add("Content-Length", "6");
                co_await out.start(200, std::move(h));
                co_await out.write("abc");
                co_await out.write("def");
                co_return;
            }
            if (req.url == "/overrun") {
                hop::http::headers h;
                h.add("Content-Length", "2");
                co_await out.start(200, std::move(h));
                co_await out.write("abc");  // throws std::logic_error
                co_return;
            }
            if (req.url == "/bad-status") {
                co_await out.start(42);
                co_return;
            }
            if (req.url == "/empty") co_return;  // an empty 200
            co_await out.write("one,");
            co_await out.write("");
            co_await out.write("two");
            co_await out.finish();
            co_await out.finish();  // again: nothing
        };
        run_on(loop, with_server(handler, o, [&](hop::http::server& srv) -> hop::task<void> {
                   auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c.write_all(get_request("/chunks") + get_request("/chunks", {}, "HEAD") +
                                        get_request("/length") + get_request("/empty") + get_request("/bad-status"));
                   std::string buf;
                   auto r1 = co_await read_response(c, buf);
                   CHECK(r1.chunked);
                   CHECK(r1.body == "one,two");
                   auto r2 = co_await read_response(c, buf, true);
                   CHECK(r2.status == 200);
                   CHECK(r2.field("Transfer-Encoding") == "chunked");
                   auto r3 = co_await read_response(c, buf);
                   CHECK_FALSE(r3.chunked);
                   CHECK(r3.body == "abcdef");
                   auto r4 = co_await read_response(c, buf);
                   CHECK(r4.field("Content-Length") == "0");
                   auto r5 = co_await read_response(c, buf);
                   CHECK(r5.status == 500);  // start(42) threw before the head went out
                   REQUIRE(logs.size() == 1);
                   CHECK(logs[0].find("status 42") != std::string::npos);

                   std::string old = co_await exchange(srv.local_endpoint(), "GET /chunks HTTP/1.0\r\n\r\n");
                   CHECK(old.find("Transfer-Encoding") == std::string::npos);
                   CHECK(old.find("Connection: close\r\n") != std::string::npos);
                   CHECK(old.substr(old.size() - 7) == "one,two");

                   // Past the Content-Length after the head went out: cut off, logged.
                   std::string cut = co_await exchange(srv.local_endpoint(), get_request("/overrun"));
                   CHECK(starts_with(cut, "HTTP/1.1 200 OK\r\n"));
                   CHECK(cut.find("abc") == std::string::npos);
                   REQUIRE(logs.size() == 2);
                   CHECK(logs[1].find("after its response started") != std::string::npos);
               }));
    });
}

// ============================================================================
// The connection cap
// ============================================================================

TEST_CASE("max_connections: an idle connection makes room for a new one; a busy one is not cut") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        auto o = hop_test::test_options();
        o.max_connections = 1;
        hop::event release;
        auto app = [&release](hop::http::request& req) -> hop::task<hop::http::response> {
            if (req.url == "/hold") co_await release.wait();
            co_return co_await hop_test::test_app(req);
        };
        run_on(loop, with_server(app, o, [&](hop::http::server& srv) -> hop::task<void> {
                   auto c1 = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c1.write_all(get_request("/one"));
                   std::string b1;
                   auto r1 = co_await read_response(c1, b1);
                   CHECK(r1.status == 200);

                   // c1 waits for its next request: it is closed to admit c2.
                   auto c2 = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c2.write_all(get_request("/hold"));
                   const std::string rest1 = co_await read_until_close(c1, b1);
                   CHECK(rest1.empty());

                   // c2 is busy (its handler waits): c3 waits in the backlog,
                   // and c2 gets its whole answer before it makes room.
                   auto c3 = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c3.write_all(get_request("/three"));
                   release.set();
                   std::string b2;
                   auto r2 = co_await read_response(c2, b2);
                   CHECK(r2.body == "hello GET /hold");
                   std::string b3;
                   auto r3 = co_await read_response(c3, b3);
                   CHECK(r3.body == "hello GET /three");
                   CHECK(srv.stats().accepted == 3);
               }));
    });
}

}  // TEST_SUITE

// ============================================================================
// Out of descriptors (a forked child runs the server)
// ============================================================================

namespace {

// The child: a server with few descriptors to spare. It writes its port on
// `port_fd`, its log lines go to stderr (a pipe the parent reads), and it
// serves until a request for /quit; exit code 0 if serve() returned
// normally.
[[noreturn]] void emfile_child(hop::backend b, int port_fd) {
    int code = 100;
    try {
        ::alarm(60);  // a hang becomes SIGALRM
        hop::io_loop loop{options_for(b)};
        hop::http::server* self = nullptr;
        auto handler = [&self](hop::http::request& req) -> hop::task<hop::http::response> {
            hop::http::response r;
            if (req.url == "/quit") {
                self->shutdown();
                r.body = "bye";
            } else if (req.url == "/failures") {
                r.body = std::to_string(self->stats().accept_failures);
            } else {
                r.body = "ok " + req.url;
            }
            co_return r;
        };
        auto main_task = [&]() -> hop::task<int> {
            auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler);
            self = &srv;
            // Room for 4 connections, no more. The limit is set before the
            // first accept is armed (io_uring's multishot accept reads it then).
            auto open = hop_test::open_fds();
            // Fill the holes below the highest descriptor: the limit counts
            // descriptor numbers, not descriptors.
            for (;;) {
                const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (fd < 0) co_return 12;
                if (fd > open.back()) {
                    ::close(fd);
                    break;
                }
            }
            rlimit low{};
            ::getrlimit(RLIMIT_NOFILE, &low);
            low.rlim_cur = static_cast<rlim_t>(open.back() + 1 + 4);
            if (::setrlimit(RLIMIT_NOFILE, &low) != 0) co_return 10;
            const std::uint16_t port = srv.local_endpoint().port();
            if (::write(port_fd, &port, sizeof port) != sizeof port) co_return 11;
            ::close(port_fd);
            co_await srv.serve();
            co_return 0;
        };
        auto f = loop.spawn(main_task());
        f.on_done([&loop](const hop::future<int>&) noexcept { loop.stop(); });
        loop.run();
        code = f.done() ? std::move(f).get() : 101;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "child: %s\n", e.what());
        code = 102;
    }
    std::fflush(stderr);
    std::_Exit(code);
}

/// A blocking client socket (the parent has descriptors to spare).
struct blocking_client {
    int fd = -1;
    explicit blocking_client(std::uint16_t port) {
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        timeval tv{30, 0};  // a failure guard: every read here is answered
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        const auto ep = hop::endpoint::loopback_v4(port);
        REQUIRE(::connect(fd, ep.data(), ep.size()) == 0);
    }
    ~blocking_client() { close(); }
    void close() {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
    /// Sends a GET for `path` and returns the body of the answer ("" if none came).
    std::string get(const std::string& path) {
        const std::string req = "GET " + path + " HTTP/1.1\r\nHost: t\r\n\r\n";
        if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) return {};
        std::string got;
        char buf[4096];
        for (;;) {
            const auto end = got.find("\r\n\r\n");
            if (end != std::string::npos) {
                const auto cl = got.find("Content-Length: ");
                if (cl != std::string::npos) {
                    const std::size_t n = std::strtoul(got.c_str() + cl + 16, nullptr, 10);
                    if (got.size() >= end + 4 + n) return got.substr(end + 4, n);
                }
            }
            const auto n = ::recv(fd, buf, sizeof buf, 0);
            if (n < 0 && errno == EINTR) continue;  // a signal (seen under ASan) is not an answer
            if (n <= 0) return {};
            got.append(buf, static_cast<std::size_t>(n));
        }
    }
};

/// Reads the server's next log line from `fd` (blocking, guarded): the
/// child's stderr. Other lines are skipped: UBSan's vptr check validates
/// memory through a pipe, which fails while the child has no descriptor
/// free, and it then prints false "invalid vptr" reports.
std::string read_log_line(int fd, std::string& pending) {
    for (;;) {
        const auto nl = pending.find('\n');
        if (nl != std::string::npos) {
            std::string line = pending.substr(0, nl);
            pending.erase(0, nl + 1);
            if (line.rfind("hop::http::server:", 0) != 0) continue;
            return line;
        }
        pollfd p{fd, POLLIN, 0};
        const int ready = ::poll(&p, 1, 30000);
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) return {};
        char buf[1024];
        const auto n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return {};
        pending.append(buf, static_cast<std::size_t>(n));
    }
}

}  // namespace

TEST_CASE("http_server_wire: out of descriptors, the server backs off, logs once per burst, and serves again (child)") {
    for_each_backend([](hop::backend b) {
        int port_pipe[2], log_pipe[2];
        REQUIRE(::pipe2(port_pipe, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(log_pipe, O_CLOEXEC) == 0);
        std::fflush(nullptr);
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            ::close(port_pipe[0]);
            ::close(log_pipe[0]);
            ::dup2(log_pipe[1], 2);
            ::close(log_pipe[1]);
            emfile_child(b, port_pipe[1]);
        }
        ::close(port_pipe[1]);
        ::close(log_pipe[1]);
        std::uint16_t port = 0;
        {
            pollfd p{port_pipe[0], POLLIN, 0};
            REQUIRE(::poll(&p, 1, 30000) == 1);
            REQUIRE(::read(port_pipe[0], &port, sizeof port) == static_cast<ssize_t>(sizeof port));
            ::close(port_pipe[0]);
        }
        std::string log_pending;
        {
            // Four connections fill the child's table; the fifth and sixth
            // wait in the backlog while its accepts fail.
            std::vector<std::unique_ptr<blocking_client>> clients;
            for (int i = 0; i < 6; ++i) clients.push_back(std::make_unique<blocking_client>(port));
            for (int i = 0; i < 4; ++i) CHECK(clients[i]->get("/c" + std::to_string(i)) == "ok /c" + std::to_string(i));
            const std::string first_log = read_log_line(log_pipe[0], log_pending);
            CHECK_MESSAGE(first_log.find("accept failed") != std::string::npos, first_log);
            CHECK(first_log.find("Too many open files") != std::string::npos);
            // The server serves its connections meanwhile; wait (by asking
            // it) until it has failed and backed off at least 3 times.
            std::uint64_t failures = 0;
            for (int i = 0; i < 100000 && failures < 3; ++i) {
                failures = std::strtoull(clients[0]->get("/failures").c_str(), nullptr, 10);
            }
            CHECK(failures >= 3);
            // Three descriptors free: the two waiting connections are taken
            // and served, and one is left (no new burst of failures).
            clients[1]->close();
            clients[2]->close();
            clients[3]->close();
            CHECK(clients[4]->get("/late4") == "ok /late4");
            CHECK(clients[5]->get("/late5") == "ok /late5");
            CHECK(clients[0]->get("/quit") == "bye");
        }
        int status = 0;
        while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        // The rest of the log: one "accept failed" per burst, one
        // "accepting again after N failed accepts" at its end; the N add up
        // to more than the bursts (the first had 3 failures or more).
        std::vector<std::string> log{};
        for (std::string l; !(l = read_log_line(log_pipe[0], log_pending)).empty();) log.push_back(l);
        ::close(log_pipe[0]);
        CHECK_MESSAGE((WIFEXITED(status) && WEXITSTATUS(status) == 0), "child status " << status);
        std::size_t failed_lines = 1, again_lines = 0;
        std::uint64_t failed_total = 0;
        for (const auto& l : log) {
            if (l.find("accept failed") != std::string::npos) ++failed_lines;
            const auto at = l.find("accepting again after ");
            if (at != std::string::npos) {
                ++again_lines;
                failed_total += std::strtoull(l.c_str() + at + 22, nullptr, 10);
            }
        }
        std::string joined;
        for (auto& l : log) joined += l + " | ";
        INFO("child log: " << joined);
        CHECK(again_lines == failed_lines);
        CHECK(failed_total >= 3);
        CHECK(failed_total > failed_lines);
    });
}
