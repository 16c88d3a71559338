// hop::http::server with real peers (curl, wrk, h2load, python3's
// http.client), the API's contract (arguments, lifetimes, streaming, the
// CPU pool) and graceful shutdown. The byte-level protocol cases are in
// http_server_wire_test.cpp.
#include <hop/http/server.hpp>

#include <hop/cpu_pool.hpp>
#include <hop/file.hpp>
#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/sync.hpp>
#include <hop/task.hpp>
#include <hop/time.hpp>

#include "support/backend.hpp"
#include "support/counted.hpp"
#include "support/http_peers.hpp"
#include "support/http_server_fixture.hpp"
#include "support/sockets.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using namespace std::string_view_literals;
using hop_test::for_each_backend;
using hop_test::options_for;
using hop_test::peer_result;
using hop_test::run_on;
using hop_test::run_peer;
using hop_test::text_body;
using hop_test::url_of;
using hop_test::with_server;

namespace {

bool icontains(std::string_view text, std::string_view needle) {
    auto lower = [](std::string_view v) {
        std::string s(v);
        for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        return s;
    };
    return lower(text).find(lower(needle)) != std::string::npos;
}

/// The head and body of `curl -D -` output (head ends at the first blank line).
struct split_output {
    std::string head;
    std::string body;
};
split_output split_head(const std::string& out) {
    const auto end = out.find("\r\n\r\n");
    if (end == std::string::npos) return {out, {}};
    return {out.substr(0, end + 2), out.substr(end + 4)};
}

}  // namespace

TEST_SUITE("http_server") {

// ============================================================================
// curl
// ============================================================================

TEST_CASE("curl: GET and HEAD get the same head; HEAD no body; Date and Content-Length added") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        auto o = hop_test::test_options();
        o.server_header = "hop-test";
        run_on(loop, with_server(hop_test::test_app, o, [](hop::http::server& srv) -> hop::task<void> {
                   auto get_run = run_peer({"curl", "-sS", "-D", "-", url_of(srv, "/hello?x=1")});
                   peer_result get = co_await std::move(get_run);
                   REQUIRE_MESSAGE(get.exited_ok(), get.describe());
                   auto g = split_head(get.out);
                   CHECK(hop_test::starts_with(g.head, "HTTP/1.1 200 OK\r\n"));
                   CHECK(g.body == "hello GET /hello?x=1");
                   CHECK(icontains(g.head, "content-length: 20\r\n"));
                   CHECK(icontains(g.head, "date: "));
                   CHECK(icontains(g.head, "server: hop-test\r\n"));
                   CHECK(icontains(g.head, "content-type: text/plain\r\n"));

                   // curl -I sends HEAD; the handler sees HEAD, answers the
                   // same length body, which the server does not send.
                   auto head_run = run_peer({"curl", "-sS", "-I", url_of(srv, "/hello?x=1")});
                   peer_result head = co_await std::move(head_run);
                   REQUIRE_MESSAGE(head.exited_ok(), head.describe());
                   auto h = split_head(head.out);
                   CHECK(hop_test::starts_with(h.head, "HTTP/1.1 200 OK\r\n"));
                   CHECK(icontains(h.head, "content-length: 21\r\n"));  // "hello HEAD /hello?x=1"
                   CHECK(h.body.empty());
                   CHECK(icontains(h.head, "date: "));
               }));
    });
}

TEST_CASE("curl: POST bodies (Content-Length, chunked, Expect: 100-continue) come back from /echo") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, with_server(hop_test::test_app, hop_test::test_options(), [](hop::http::server& srv) -> hop::task<void> {
                   const std::string body = text_body(300 * 1024);
                   auto plain_run = run_peer(
                       {"curl", "-sS", "--data-binary", "@-", "-H", "Content-Type: text/x-test", url_of(srv, "/echo")},
                       body);
                   peer_result plain = co_await std::move(plain_run);
                   REQUIRE_MESSAGE(plain.exited_ok(), plain.describe());
                   CHECK(plain.out.size() == body.size());
                   CHECK(plain.out == body);

                   auto chunked_run = run_peer({"curl", "-sS", "--data-binary", "@-", "-H",
                                                            "Transfer-Encoding: chunked", url_of(srv, "/echo")},
                                                           body);
                   peer_result chunked = co_await std::move(chunked_run);
                   REQUIRE_MESSAGE(chunked.exited_ok(), chunked.describe());
                   CHECK(chunked.out == body);

                   auto cont_run = run_peer({"curl", "-sS", "-v", "--data-binary", "@-", "-H",
                                                         "Expect: 100-continue", url_of(srv, "/echo")},
                                                        body);
                   peer_result cont = co_await std::move(cont_run);
                   REQUIRE_MESSAGE(cont.exited_ok(), cont.describe());
                   CHECK(cont.out == body);
                   CHECK_MESSAGE(cont.err.find("HTTP/1.1 100 Continue") != std::string::npos, cont.err);
               }));
    });
}

TEST_CASE("curl: several URLs in one run reuse one connection; --compressed gets identity") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, with_server(hop_test::test_app, hop_test::test_options(), [](hop::http::server& srv) -> hop::task<void> {
                   auto r_run = run_peer({"curl", "-sS", "-o", "/dev/null", "-o", "/dev/null", "-o",
                                                      "/dev/null", "-o", "/dev/null", "-w", "%{num_connects}\n",
                                                      url_of(srv, "/a"), url_of(srv, "/b"), url_of(srv, "/size/5000"),
                                                      url_of(srv, "/c")});
                   peer_result r = co_await std::move(r_run);
                   REQUIRE_MESSAGE(r.exited_ok(), r.describe());
                   int connects = 0;
                   const auto lines = hop_test::lines_of(r.out);
                   for (const auto& l : lines) connects += std::atoi(l.c_str());
                   CHECK(lines.size() == 4);
                   CHECK_MESSAGE(connects == 1, r.out);
                   CHECK(srv.stats().accepted == 1);

                   auto z_run = run_peer({"curl", "-sS", "--compressed", "-D", "-", url_of(srv, "/size/10000")});
                   peer_result z = co_await std::move(z_run);
                   REQUIRE_MESSAGE(z.exited_ok(), z.describe());
                   auto s = split_head(z.out);
                   CHECK(hop_test::starts_with(s.head, "HTTP/1.1 200"));
                   CHECK_FALSE(icontains(s.head, "content-encoding"));
                   CHECK(s.body == std::string(10000, 'x'));
               }));
    });
}

TEST_CASE("curl: a streamed response arrives chunk by chunk, before the handler has finished") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        hop::event first_seen;
        std::atomic<int> handler_runs{0};
        auto handler = [&](hop::http::request& req, hop::http::response_writer& out) -> hop::task<void> {
            ++handler_runs;
            hop::http::headers h;
            h.add("Content-Type", "text/plain");
            co_await out.start(200, std::move(h));
            co_await out.write("first " + req.url + "\n");
            // Held until curl has printed the first line: it can only have
            // if that chunk went out on its own.
            co_await first_seen.wait();
            co_await out.write("second\n");
            co_await out.write("third\n");
        };
        run_on(loop, with_server(handler, hop_test::test_options(), [&](hop::http::server& srv) -> hop::task<void> {
                   auto peer = std::make_shared<hop_test::peer_process>(
                       std::vector<std::string>{"curl", "-sS", "-N", "-D", "/dev/stderr", url_of(srv, "/stream")});
                   auto read_first = hop::run_blocking([peer] { return peer->read_line(); });
                   std::string line = co_await std::move(read_first);
                   CHECK(line == "first /stream");
                   first_seen.set();
                   auto rest = hop::run_blocking([peer] { return peer->wait(); });
                   peer_result r = co_await std::move(rest);
                   REQUIRE_MESSAGE(r.exited_ok(), r.describe());
                   CHECK(r.out == "first /stream\nsecond\nthird\n");
                   CHECK(icontains(r.err, "transfer-encoding: chunked"));
                   CHECK_FALSE(icontains(r.err, "content-length"));
               }));
        CHECK(handler_runs == 1);
    });
}

TEST_CASE("response_writer: flush() sends a held-back head before the first byte of the body (server-sent events)") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        hop::event head_seen;
        auto handler = [&](hop::http::request&, hop::http::response_writer& out) -> hop::task<void> {
            hop::http::headers h;
            h.add("Content-Type", "text/event-stream");
            co_await out.start(200, std::move(h));
            co_await out.flush();
            co_await out.flush();  // once out, nothing more
            // Held until the client has read the head: it can only have if
            // flush() sent it on its own.
            co_await head_seen.wait();
            co_await out.write("data: one\n\n");
        };
        run_on(loop, with_server(handler, hop_test::test_options(), [&](hop::http::server& srv) -> hop::task<void> {
                   auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c.write_all(hop_test::get_request("/events"));
                   std::string got;
                   char buf[512];
                   while (got.find("\r\n\r\n") == std::string::npos) {
                       const std::size_t n = co_await c.read_some(std::span<char>(buf));
                       REQUIRE(n > 0);
                       got.append(buf, n);
                   }
                   CHECK(hop_test::starts_with(got, "HTTP/1.1 200 OK\r\n"));
                   CHECK(icontains(got, "transfer-encoding: chunked"));
                   CHECK(got.ends_with("\r\n\r\n"));  // the head alone
                   head_seen.set();
                   got.clear();
                   while (got.find("0\r\n\r\n") == std::string::npos) {
                       const std::size_t n = co_await c.read_some(std::span<char>(buf));
                       REQUIRE(n > 0);
                       got.append(buf, n);
                   }
                   CHECK(got == "b\r\ndata: one\n\n\r\n0\r\n\r\n");
               }));
    });
}

TEST_CASE("response_writer: a stream that ends before its first byte is not chunked; ab -k keeps HTTP/1.0 alive") {
    auto handler = [](hop::http::request& req, hop::http::response_writer& out) -> hop::task<void> {
        hop::http::headers h;
        h.add("Content-Type", "text/plain");
        if (req.url == "/known") h.add("Content-Length", "5");
        co_await out.start(200, std::move(h));
        if (req.url == "/known") co_await out.write("known");
        // "/nothing": the stream ends here, before any byte.
    };
    for_each_backend([&](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, with_server(handler, hop_test::test_options(), [](hop::http::server& srv) -> hop::task<void> {
                   auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
                   co_await c.write_all(hop_test::get_request("/nothing") +
                                        "GET /nothing HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
                   std::string buf;
                   auto r1 = co_await hop_test::read_response(c, buf);
                   CHECK_FALSE(r1.chunked);
                   CHECK(r1.field("Content-Length") == "0");
                   auto r2 = co_await hop_test::read_response(c, buf);
                   CHECK(hop_test::starts_with(r2.head, "HTTP/1.1 200 OK\r\n"));
                   CHECK(r2.field("Content-Length") == "0");
                   CHECK(r2.field("Connection") == "keep-alive");
                   for (const char* path : {"/nothing", "/known"}) {
                       CAPTURE(path);
                       auto ab_run = run_peer({"ab", "-k", "-n", "500", "-c", "5", url_of(srv, path)});
                       peer_result ab = co_await std::move(ab_run);
                       REQUIRE_MESSAGE(ab.exited_ok(), ab.describe());
                       auto figure = [&](std::string_view label) {
                           const auto at = ab.out.find(label);
                           return at == std::string::npos ? -1L : std::atol(ab.out.c_str() + at + label.size());
                       };
                       CHECK_MESSAGE(figure("Complete requests:") == 500, ab.out);
                       CHECK_MESSAGE(figure("Failed requests:") == 0, ab.out);
                       CHECK_MESSAGE(figure("Keep-Alive requests:") == 500, ab.out);
                   }
               }));
    });
}

// ============================================================================
// wrk, h2load, python3
// ============================================================================

TEST_CASE("wrk: ten connections for a second, no errors, only 2xx") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, with_server(hop_test::test_app, hop_test::test_options(), [](hop::http::server& srv) -> hop::task<void> {
                   auto r_run = run_peer({"wrk", "-t1", "-c10", "-d1s", url_of(srv, "/size/4096")});
                   peer_result r = co_await std::move(r_run);
                   const long requests = hop_test::wrk_clean_requests(r);
                   CHECK(srv.stats().requests >= static_cast<std::uint64_t>(requests));
               }));
    });
}

TEST_CASE("h2load --h1: 2000 requests on 10 connections all succeed") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, with_server(hop_test::test_app, hop_test::test_options(), [](hop::http::server& srv) -> hop::task<void> {
                   auto r_run = run_peer({"h2load", "--h1", "-n", "2000", "-c", "10", url_of(srv, "/")});
                   peer_result r = co_await std::move(r_run);
                   REQUIRE_MESSAGE(r.exited_ok(), r.describe());
                   CHECK_MESSAGE(r.out.find("2000 succeeded, 0 failed, 0 errored") != std::string::npos, r.out);
                   CHECK(srv.stats().requests == 2000);
                   CHECK(srv.stats().accepted == 10);
               }));
    });
}

TEST_CASE("python3 http.client: HTTP/1.0 closes, HTTP/1.1 keeps the connection, HEAD and POST") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, with_server(hop_test::test_app, hop_test::test_options(), [](hop::http::server& srv) -> hop::task<void> {
                   const std::string port = std::to_string(srv.local_endpoint().port());
                   const std::string script = R"PY(
import http.client, sys
port = int(sys.argv[1])
c = http.client.HTTPConnection('127.0.0.1', port)
c.request('GET', '/one'); r = c.getresponse(); print(r.status, r.version, r.read().decode())
c.request('HEAD', '/two'); r = c.getresponse(); print(r.status, r.getheader('Content-Length'), repr(r.read()))
c.request('POST', '/echo', body=b'x' * 70000); r = c.getresponse(); print(r.status, len(r.read()))
c.close()
class C10(http.client.HTTPConnection):
    _http_vsn = 10
    _http_vsn_str = 'HTTP/1.0'
c = C10('127.0.0.1', port)
c.request('GET', '/old'); r = c.getresponse(); print(r.status, r.version, r.getheader('Connection'), r.read().decode())
)PY";
                   auto r_run = run_peer({"python3", "-c", script, port});
                   peer_result r = co_await std::move(r_run);
                   REQUIRE_MESSAGE(r.exited_ok(), r.describe());
                   const auto lines = hop_test::lines_of(r.out);
                   REQUIRE(lines.size() == 4);
                   CHECK(lines[0] == "200 11 hello GET /one");
                   CHECK(lines[1] == "200 15 b''");
                   CHECK(lines[2] == "200 70000");
                   CHECK(lines[3] == "200 11 close hello GET /old");
                   // The three 1.1 requests shared a connection; 1.0 had its own.
                   CHECK(srv.stats().accepted == 2);
               }));
    });
}

// ============================================================================
// The API
// ============================================================================

TEST_CASE("bind: bad arguments throw std::invalid_argument naming the value") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, []() -> hop::task<void> {
            using hop_test::what_of;
            const auto ep = hop::endpoint::loopback_v4(0);
            auto bind_with = [&](hop::http::server_options o) {
                return [ep, o] { (void)hop::http::server::bind(ep, hop_test::test_app, o); };
            };
            hop::http::server_options o;
            o.max_connections = 0;
            CHECK(what_of<std::invalid_argument>(bind_with(o)).find("max_connections is 0") != std::string::npos);
            o = {};
            o.max_header_bytes = 0;
            CHECK(what_of<std::invalid_argument>(bind_with(o)).find("max_header_bytes is 0") != std::string::npos);
            o = {};
            o.header_timeout = 0s;
            CHECK(what_of<std::invalid_argument>(bind_with(o)).find("header_timeout is 0ns") != std::string::npos);
            o = {};
            o.idle_timeout = -5ms;
            CHECK(what_of<std::invalid_argument>(bind_with(o)).find("idle_timeout is -5000000ns") != std::string::npos);
            o = {};
            o.shutdown_grace = -1s;
            CHECK(what_of<std::invalid_argument>(bind_with(o)).find("shutdown_grace is -1000000000ns") !=
                  std::string::npos);
            o = {};
            o.backlog = 0;
            CHECK(what_of<std::invalid_argument>(bind_with(o)).find("backlog is 0") != std::string::npos);
            o = {};
            o.shutdown_grace = 0s;  // allowed: cancel at once
            CHECK(what_of<std::invalid_argument>(bind_with(o)) == "(nothing thrown)");

            hop::http::server::handler empty;
            CHECK(what_of<std::invalid_argument>([&] { (void)hop::http::server::bind(ep, empty); })
                      .find("handler is empty") != std::string::npos);
            hop::http::server::stream_handler empty_stream;
            CHECK(what_of<std::invalid_argument>([&] { (void)hop::http::server::bind(ep, empty_stream); })
                      .find("handler is empty") != std::string::npos);

            // A port in use: std::system_error naming the endpoint.
            auto first = hop::http::server::bind(ep, hop_test::test_app);
            const auto taken = first.local_endpoint();
            std::string what = what_of<std::system_error>([&] { (void)hop::http::server::bind(taken, hop_test::test_app); });
            CHECK_MESSAGE(what.find(taken.to_string()) != std::string::npos, what);

            hop::http::server none;
            CHECK_FALSE(none.valid());
            CHECK(what_of<std::logic_error>([&] { (void)none.local_endpoint(); }).find("empty") != std::string::npos);
            co_return;
        }());
    });
}

TEST_CASE("serve twice is a logic_error; shutdown() before serve() makes serve() return at once") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, []() -> hop::task<void> {
            auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), hop_test::test_app);
            srv.shutdown();
            co_await srv.serve();  // returns: the shutdown was asked for first
            std::string what;
            try {
                co_await srv.serve();
            } catch (const std::logic_error& e) {
                what = e.what();
            }
            CHECK(what.find("served already") != std::string::npos);
            // The listener is closed: connects are refused.
            bool refused = false;
            try {
                (void)co_await hop::tcp_stream::connect(srv.local_endpoint());
            } catch (const std::system_error& e) {
                refused = e.code().value() == ECONNREFUSED;
            }
            CHECK(refused);
        }());
    });
}

TEST_CASE("bind on a thread with no loop; serve() runs on the loop that awaits it") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        std::thread::id handler_thread;
        auto handler = [&](hop::http::request&) -> hop::task<hop::http::response> {
            handler_thread = std::this_thread::get_id();
            co_return hop::http::response{.status = 200, .headers = {}, .body = "here"};
        };
        auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler);  // no loop runs here
        auto* s = &srv;
        run_on(loop, [](hop::http::server* s) -> hop::task<void> {
            hop::future<void> serving = hop::current_loop()->spawn(s->serve());
            std::string out = co_await hop_test::exchange(s->local_endpoint(),
                                                          hop_test::get_request("/", "Connection: close\r\n"));
            CHECK(out.find("\r\n\r\nhere") != std::string::npos);
            serving.cancel();
            co_await serving;
        }(s));
        CHECK(handler_thread == std::this_thread::get_id());  // run_on drives the loop on this thread
    });
}

TEST_CASE("a handler may hop to the CPU pool; the connection goes on on the loop") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        hop::cpu_pool pool{2};
        std::atomic<int> on_pool{0};
        auto handler = [&](hop::http::request& req) -> hop::task<hop::http::response> {
            co_await pool.schedule();
            if (pool.running_in_this_thread()) ++on_pool;
            std::uint64_t sum = 0;
            for (char ch : req.body) sum += static_cast<unsigned char>(ch);
            co_return hop::http::response{.status = 200, .headers = {}, .body = std::to_string(sum)};
        };
        run_on(loop, with_server(handler, hop_test::test_options(), [&](hop::http::server& srv) -> hop::task<void> {
                   for (int i = 0; i < 3; ++i) {
                       auto r_run = run_peer({"curl", "-sS", "--data-binary", "@-", url_of(srv, "/sum")},
                                                         std::string(1000, 'a'));
                       peer_result r = co_await std::move(r_run);
                       REQUIRE_MESSAGE(r.exited_ok(), r.describe());
                       CHECK(r.out == std::to_string(1000 * 97));
                   }
               }));
        CHECK(on_pool == 3);
    });
}

TEST_CASE("a streaming handler may write from the CPU pool") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        hop::cpu_pool pool{2};
        std::atomic<int> on_pool{0};
        auto handler = [&](hop::http::request&, hop::http::response_writer& out) -> hop::task<void> {
            co_await pool.schedule();
            for (int i = 0; i < 20; ++i) {
                co_await out.write(std::to_string(i) + ",");
                if (pool.running_in_this_thread()) ++on_pool;  // back on the pool after each write
            }
        };
        run_on(loop, with_server(handler, hop_test::test_options(), [&](hop::http::server& srv) -> hop::task<void> {
                   auto r_run = run_peer({"curl", "-sS", url_of(srv, "/")});
                   peer_result r = co_await std::move(r_run);
                   REQUIRE_MESSAGE(r.exited_ok(), r.describe());
                   CHECK(r.out == "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,");
               }));
        CHECK(on_pool == 20);
    });
}

TEST_CASE("the handler (and what it captures) lives while the server or a coroutine it started does") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        auto alive = std::make_shared<int>(7);
        std::weak_ptr<int> watch = alive;
        {
            auto handler = [alive](hop::http::request&) -> hop::task<hop::http::response> {
                co_await hop::sleep_for(1ms);
                co_return hop::http::response{.status = 200, .headers = {}, .body = std::to_string(*alive)};
            };
            alive.reset();
            run_on(loop, with_server(handler, hop_test::test_options(), [&](hop::http::server& srv) -> hop::task<void> {
                       CHECK_FALSE(watch.expired());
                       std::string out = co_await hop_test::exchange(srv.local_endpoint(),
                                                                     hop_test::get_request("/", "Connection: close\r\n"));
                       CHECK(out.find("\r\n\r\n7") != std::string::npos);
                   }));
            CHECK_FALSE(watch.expired());  // `handler` still holds it
        }
        CHECK(watch.expired());  // the server's copy went with the server
    });
}

// ============================================================================
// Graceful shutdown
// ============================================================================

TEST_CASE("shutdown: in-flight request finishes, idle connection closes at once, new connects are refused") {
    for_each_backend([](hop::backend b) {
        hop_test::fd_leak_check fds;
        hop::io_loop loop{options_for(b)};
        run_on(loop, []() -> hop::task<void> {
            hop::event slow_entered, release;
            auto handler = [&](hop::http::request& req) -> hop::task<hop::http::response> {
                if (req.url == "/slow") {
                    slow_entered.set();
                    co_await release.wait();
                    co_return hop::http::response{.status = 200, .headers = {}, .body = "slow done"};
                }
                co_return hop::http::response{.status = 200, .headers = {}, .body = "fast"};
            };
            auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler, hop_test::test_options());
            const auto ep = srv.local_endpoint();
            hop::future<void> serving = hop::current_loop()->spawn(srv.serve());

            auto idle = co_await hop::tcp_stream::connect(ep);
            co_await idle.write_all(hop_test::get_request("/fast"));
            std::string idle_buf;
            auto first = co_await hop_test::read_response(idle, idle_buf);
            CHECK(first.status == 200);
            CHECK(first.field("Connection").empty());  // keep-alive: the connection stays

            auto busy = co_await hop::tcp_stream::connect(ep);
            co_await busy.write_all(hop_test::get_request("/slow"));
            co_await slow_entered.wait();

            serving.cancel();
            // The idle connection is closed without a word.
            std::string rest = co_await hop_test::read_until_close(idle, idle_buf);
            CHECK(rest.empty());
            // The listener was closed before that.
            int refused = 0;
            try {
                (void)co_await hop::tcp_stream::connect(ep);
            } catch (const std::system_error& e) {
                refused = e.code().value();
            }
            CHECK(refused == ECONNREFUSED);
            CHECK_FALSE(serving.done());

            release.set();
            std::string busy_buf;
            auto slow = co_await hop_test::read_response(busy, busy_buf);
            CHECK(slow.status == 200);
            CHECK(slow.body == "slow done");
            CHECK(slow.field("Connection") == "close");
            std::string after = co_await hop_test::read_until_close(busy, busy_buf);
            CHECK(after.empty());

            co_await serving;  // returns normally
            CHECK(serving.done());
            CHECK_FALSE(serving.cancelled());
            CHECK(srv.stats().connections == 0);
        }());
    });
}

TEST_CASE("shutdown: a handler still running past shutdown_grace is cancelled; serve() returns normally") {
    for_each_backend([](hop::backend b) {
        hop_test::fd_leak_check fds;
        hop::io_loop loop{options_for(b)};
        run_on(loop, []() -> hop::task<void> {
            hop::event entered, never;
            int cancelled = 0;
            auto handler = [&](hop::http::request&) -> hop::task<hop::http::response> {
                entered.set();
                try {
                    co_await never.wait();
                } catch (const hop::cancelled_error&) {
                    ++cancelled;
                    throw;
                }
                co_return hop::http::response{};
            };
            auto o = hop_test::test_options();
            o.shutdown_grace = 20ms;
            auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler, o);
            hop::future<void> serving = hop::current_loop()->spawn(srv.serve());
            auto c = co_await hop::tcp_stream::connect(srv.local_endpoint());
            co_await c.write_all(hop_test::get_request("/hang"));
            co_await entered.wait();
            serving.cancel();
            std::string got = co_await hop_test::read_until_close(c);
            CHECK(got.empty());  // no response: the request was cancelled
            co_await serving;
            CHECK_FALSE(serving.cancelled());
            CHECK(cancelled == 1);
        }());
    });
}

TEST_CASE("shutdown(): thread-safe, from another thread, ends serve() like a stop") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, []() -> hop::task<void> {
            auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), hop_test::test_app);
            auto* s = &srv;
            hop::future<void> serving = hop::current_loop()->spawn(srv.serve());
            std::string out = co_await hop_test::exchange(srv.local_endpoint(),
                                                          hop_test::get_request("/x", "Connection: close\r\n"));
            CHECK(hop_test::starts_with(out, "HTTP/1.1 200 OK\r\n"));
            auto done = hop::run_blocking([s] { s->shutdown(); });
            co_await std::move(done);
            co_await serving;
            CHECK(serving.done());
        }());
    });
}

}  // TEST_SUITE
