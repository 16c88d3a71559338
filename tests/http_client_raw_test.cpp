// hop::http::client against servers that misbehave on purpose: a tiny raw
// HTTP server on hop's tcp_listener (support/http_raw_server.hpp), scripted per case
// (stale keep-alive, stalls, malformed answers, redirects across origins,
// bodies that end at close, trailers, cancellation). Every wait is released
// by an event or by the other side's IO, never by a sleep.

#include <hop/http/client.hpp>

#include <hop/hop.hpp>

#include "support/backend.hpp"
#include "support/http_raw_server.hpp"
#include "support/sockets.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

using namespace std::chrono_literals;
namespace http = hop::http;
using namespace hop_test::raw_http;

namespace {

// ---- stale keep-alive ------------------------------------------------------------------

struct stale_server_log {
    int connections = 0;
    int requests = 0;
};

// Connection 1 answers one request, reads the next and closes without a
// word. Later connections answer every request.
hop::task<void> stale_server(hop::tcp_listener& lis, stale_server_log& log, int answered_after_close) {
    {
        hop::tcp_stream c = co_await lis.accept();
        ++log.connections;
        std::string buf;
        auto r1 = co_await read_request(c, buf);
        REQUIRE(r1);
        ++log.requests;
        co_await c.write_all(ok("first"));
        auto r2 = co_await read_request(c, buf);
        REQUIRE(r2);
        ++log.requests;
        c.close();  // the request is lost: no byte of response
    }
    for (int i = 0; i < answered_after_close; ++i) {
        hop::tcp_stream c = co_await lis.accept();
        ++log.connections;
        std::string buf;
        auto r = co_await read_request(c, buf);
        REQUIRE(r);
        ++log.requests;
        co_await c.write_all(ok("again " + r->method));
        co_await wait_for_eof(c);
    }
}

hop::task<void> stale_get_client(hop::tcp_listener& lis) {
    http::client client;
    const std::string u = base_url(lis) + "/x";
    http::response a = co_await client.get(u);
    CHECK(a.body == "first");
    http::response b = co_await client.get(u);  // sent on the dead connection, then again on a new one
    CHECK(b.status == 200);
    CHECK(b.body == "again GET");
    const auto st = client.stats();
    CHECK(st.retries == 1);
    CHECK(st.connects == 2);
}

hop::task<void> stale_get(hop::backend) {
    auto lis = listen_any();
    stale_server_log log;
    co_await hop::when_all(stale_server(lis, log, 1), stale_get_client(lis));
    CHECK(log.connections == 2);
    CHECK(log.requests == 3);
}

hop::task<void> stale_post_client(hop::tcp_listener& lis) {
    http::client client;
    const std::string u = base_url(lis) + "/x";
    http::response a = co_await client.get(u);
    CHECK(a.body == "first");
    const std::string what = co_await what_of<std::exception>(client.fetch(make_request("POST", u, "data")));
    CHECK_MESSAGE(what.find("POST is not idempotent, so it was not sent again") != std::string::npos, what);
    CHECK_MESSAGE(what.find(u) != std::string::npos, what);
    CHECK(client.stats().retries == 0);
    CHECK(client.stats().open == 0);
}

hop::task<void> stale_post(hop::backend) {
    auto lis = listen_any();
    stale_server_log log;
    co_await hop::when_all(stale_server(lis, log, 0), stale_post_client(lis));
    CHECK(log.connections == 1);
    CHECK(log.requests == 2);  // the POST reached the dead connection once, and was not sent again
}

// The server closes the idle connection before the next request is made:
// the pool notices (peek, or the agent) and the request goes on a new one.
hop::task<void> closed_idle_server(hop::tcp_listener& lis, hop::event& closed) {
    {
        hop::tcp_stream c = co_await lis.accept();
        std::string buf;
        auto r = co_await read_request(c, buf);
        REQUIRE(r);
        co_await c.write_all(ok("one"));
        c.close();
        closed.set();
    }
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    auto r = co_await read_request(c, buf);
    REQUIRE(r);
    co_await c.write_all(ok("two"));
    co_await wait_for_eof(c);
}

hop::task<void> closed_idle_client(hop::tcp_listener& lis, hop::event& closed, std::string method) {
    http::client client;
    const std::string u = base_url(lis) + "/";
    CHECK((co_await client.get(u)).body == "one");
    co_await closed.wait();
    CHECK((co_await client.fetch(make_request(method, u))).body == "two");
    CHECK(client.stats().connects == 2);
    // A POST looks before it goes (a peek sees the server's FIN), so it is
    // not lost on the closed connection; a GET just idle may be sent and
    // then sent again.
    if (method == "POST") CHECK(client.stats().retries == 0);
}

hop::task<void> closed_idle(hop::backend, std::string method) {
    auto lis = listen_any();
    hop::event closed;
    co_await hop::when_all(closed_idle_server(lis, closed), closed_idle_client(lis, closed, std::move(method)));
}

// ---- timeouts --------------------------------------------------------------------------

// Reads one request and never answers; ends when the client closes.
hop::task<void> silent_server(hop::tcp_listener& lis, hop::event& got_request, bool& saw_eof) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    auto r = co_await read_request(c, buf);
    REQUIRE(r);
    got_request.set();
    co_await wait_for_eof(c);
    saw_eof = true;
}

hop::task<void> read_timeout_client(hop::tcp_listener& lis) {
    http::client client{{.read_timeout = 100ms}};
    const std::string u = base_url(lis) + "/slow";
    const std::string what = co_await what_of<http::read_timeout>(client.get(u));
    CHECK_MESSAGE(what.find("read timeout (100ms) waiting for " + u) != std::string::npos, what);
    CHECK(client.stats().open == 0);
}

hop::task<void> read_timeout_case(hop::backend) {
    auto lis = listen_any();
    hop::event got;
    bool saw_eof = false;
    co_await hop::when_all(silent_server(lis, got, saw_eof), read_timeout_client(lis));
    CHECK(saw_eof);  // the timed-out connection was closed, not pooled
}

hop::task<void> total_timeout_client(hop::tcp_listener& lis) {
    http::client client{{.read_timeout = 30s, .total_timeout = 150ms}};
    const std::string u = base_url(lis) + "/stall";
    const std::string what = co_await timeout_kind_of(client.get(u));
    CHECK_MESSAGE(what.starts_with("timeout_error: "), what);  // hop::timeout_error itself
    CHECK_MESSAGE(what.find("total timeout (150ms) for GET " + u) != std::string::npos, what);
}

hop::task<void> total_timeout_case(hop::backend) {
    auto lis = listen_any();
    co_await hop::when_all(stalling_body_server(lis), total_timeout_client(lis));
}

// pool_timeout: one connection, held by a request the server does not
// answer until the second request has timed out.
hop::task<void> held_server(hop::tcp_listener& lis, hop::event& got_request, hop::event& release) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    auto r = co_await read_request(c, buf);
    REQUIRE(r);
    got_request.set();
    co_await release.wait();
    co_await c.write_all(ok("held"));
    co_await wait_for_eof(c);
}

hop::task<void> pool_timeout_second(http::client& client, std::string u, hop::event& got_request, hop::event& release) {
    co_await got_request.wait();
    const std::string what = co_await what_of<http::pool_timeout>(client.get(u));
    CHECK_MESSAGE(what.find("pool timeout (100ms) waiting for a free connection for " + u) != std::string::npos, what);
    CHECK_MESSAGE(what.find("max_connections 1") != std::string::npos, what);
    release.set();
}

hop::task<void> pool_timeout_first(http::client& client, std::string u) {
    http::response r = co_await client.get(u);
    CHECK(r.body == "held");
}

// The client lives here, so the server's wait for EOF ends with it.
hop::task<void> pool_timeout_clients(std::string u, hop::event& got_request, hop::event& release) {
    http::client client{{.max_connections = 1, .pool_timeout = 100ms}};
    co_await hop::when_all(pool_timeout_first(client, u), pool_timeout_second(client, u, got_request, release));
    CHECK(client.stats().waiting == 0);
}

hop::task<void> pool_timeout_case(hop::backend) {
    auto lis = listen_any();
    hop::event got, release;
    co_await hop::when_all(held_server(lis, got, release), pool_timeout_clients(base_url(lis) + "/held", got, release));
}

// connect_timeout: a listener whose accept queue is full drops new SYNs,
// so a connect waits until the timeout.
hop::task<void> connect_timeout_case(hop::backend) {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0), {.backlog = 1});
    std::vector<hop::tcp_stream> fillers;
    // The queue holds backlog + 1 connections; a few more to be sure it is full
    // (a connect that does not complete is abandoned by its timeout).
    for (int i = 0; i < 4; ++i) {
        try {
            fillers.push_back(co_await hop::with_timeout(200ms, hop::tcp_stream::connect(lis.local_endpoint())));
        } catch (const hop::timeout_error&) {
            break;
        }
    }
    http::client client{{.connect_timeout = 150ms}};
    const std::string u = base_url(lis) + "/";
    const std::string what = co_await what_of<http::connect_timeout>(client.get(u));
    CHECK_MESSAGE(what.find("connect timeout (150ms) connecting to " + u) != std::string::npos, what);
    CHECK(client.stats().open == 0);
}

// ---- malformed and oversized responses -------------------------------------------

hop::task<void> answer_once(hop::tcp_listener& lis, std::string response, bool close_after) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    auto r = co_await read_request(c, buf);
    REQUIRE(r);
    co_await c.write_all(std::string_view(response));
    if (close_after) {
        c.close();
    } else {
        co_await wait_for_eof(c);
    }
}

// Limits are passed as numbers, not as a client_options: GCC 12 mis-copies
// a braced client_options temporary given by value to a coroutine (its
// std::string member keeps pointing into the caller's frame).
struct limits {
    std::size_t body = std::size_t{64} << 20;
    std::size_t header = 64 * 1024;
};

hop::task<void> expect_error_client(hop::tcp_listener& lis, limits lim, std::string path, std::string expected) {
    http::client_options o;
    o.max_body_bytes = lim.body;
    o.max_header_bytes = lim.header;
    http::client client{o};
    const std::string what = co_await what_of<http::protocol_error>(client.get(base_url(lis) + path));
    CHECK_MESSAGE(what.find(expected) != std::string::npos, what);
    CHECK(client.stats().open == 0);
}

hop::task<void> protocol_error_case(hop::backend, std::string response, limits lim, std::string expected) {
    auto lis = listen_any();
    co_await hop::when_all(answer_once(lis, std::move(response), true),
                           expect_error_client(lis, lim, "/bad", std::move(expected)));
}

// ---- bodies ----------------------------------------------------------------------------

hop::task<void> body_client(hop::tcp_listener& lis, std::string path, std::string expected_body,
                            std::string expected_header, int expected_connects, int requests) {
    http::client client;
    for (int i = 0; i < requests; ++i) {
        http::response r = co_await client.get(base_url(lis) + path);
        CHECK(r.status == 200);
        CHECK(r.body == expected_body);
        if (!expected_header.empty()) {
            const auto colon = expected_header.find(':');
            const auto v = r.headers.get(expected_header.substr(0, colon));
            CHECK_MESSAGE(v.has_value(), expected_header);
            if (v) CHECK(std::string(*v) == expected_header.substr(colon + 1));
        }
    }
    CHECK(client.stats().connects == static_cast<std::uint64_t>(expected_connects));
}

// Answers `n` requests on one connection with `response` each.
hop::task<void> answer_n(hop::tcp_listener& lis, std::string response, int n) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    for (int i = 0; i < n; ++i) {
        auto r = co_await read_request(c, buf);
        REQUIRE(r);
        co_await c.write_all(std::string_view(response));
    }
    co_await wait_for_eof(c);
}

hop::task<void> ends_at_close_case(hop::backend) {
    auto lis = listen_any();
    // No length, not chunked: the body runs until the server closes.
    co_await hop::when_all(answer_once(lis, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello until close", true),
                           body_client(lis, "/", "hello until close", "", 1, 1));
    auto lis10 = listen_any();
    co_await hop::when_all(answer_once(lis10, "HTTP/1.0 200 OK\r\n\r\nan HTTP/1.0 body", true),
                           body_client(lis10, "/", "an HTTP/1.0 body", "", 1, 1));
}

hop::task<void> trailers_case(hop::backend) {
    auto lis = listen_any();
    const std::string chunked =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 42\r\n\r\n";
    // Two responses on one connection: the trailer ends the first cleanly.
    co_await hop::when_all(answer_n(lis, chunked, 2), body_client(lis, "/", "hello world", "X-Checksum:42", 1, 2));
}

hop::task<void> deflate_case(hop::backend) {
    auto lis = listen_any();
    static const char zbytes[] =
        "\x78\x9c\x4b\x49\x4d\xcb\x49\x2c\x49\x4d\x51\xc8\xc8\x2f\x50\x48\xca\x4f\xa9\xd4\x51\x48\x21\x42\x08\x00\x2e"
        "\x12\x13\xe3";
    const std::string body(zbytes, sizeof zbytes - 1);
    co_await hop::when_all(answer_once(lis, ok(body, "Content-Encoding: deflate\r\n"), false),
                           body_client(lis, "/", "deflated hop body, deflated hop body, deflated hop body", "", 1, 1));
}

hop::task<void> informational_case(hop::backend) {
    auto lis = listen_any();
    co_await hop::when_all(answer_once(lis, "HTTP/1.1 100 Continue\r\n\r\n" + ok("after 100"), false),
                           body_client(lis, "/", "after 100", "", 1, 1));
}

hop::task<void> chunked_too_big_case(hop::backend) {
    auto lis = listen_any();
    std::string resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (int i = 0; i < 10; ++i) resp += "3e8\r\n" + std::string(1000, 'x') + "\r\n";
    resp += "0\r\n\r\n";
    co_await hop::when_all(answer_once(lis, resp, false),
                           expect_error_client(lis, limits{.body = 5000}, "/big",
                                               "exceeds client_options::max_body_bytes (5000 bytes)"));
}

// ---- request bodies --------------------------------------------------------------------

hop::task<void> echo_body_server(hop::tcp_listener& lis, std::vector<raw_request>& seen, int n) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    for (int i = 0; i < n; ++i) {
        auto r = co_await read_request(c, buf);
        REQUIRE(r);
        seen.push_back(*r);
        co_await c.write_all(ok(r->body));
    }
    co_await wait_for_eof(c);
}

hop::task<void> request_body_client(hop::tcp_listener& lis, std::string big) {
    http::client client;
    const std::string u = base_url(lis) + "/upload";
    http::request chunked = make_request("POST", u, "chunked body");
    chunked.headers.add("Transfer-Encoding", "chunked");
    CHECK((co_await client.fetch(std::move(chunked))).body == "chunked body");
    CHECK((co_await client.fetch(make_request("PUT", u, big))).body == big);
    CHECK((co_await client.fetch(make_request("POST", u))).body.empty());
    CHECK(client.stats().connects == 1);
}

hop::task<void> request_bodies_case(hop::backend) {
    auto lis = listen_any();
    std::vector<raw_request> seen;
    std::string big(300 * 1024, 'b');
    for (std::size_t i = 0; i < big.size(); i += 7) big[i] = static_cast<char>('a' + i % 26);
    co_await hop::when_all(echo_body_server(lis, seen, 3), request_body_client(lis, big));
    REQUIRE(seen.size() == 3);
    CHECK(seen[0].header("Transfer-Encoding") == "chunked");
    CHECK(seen[1].header("Content-Length") == std::to_string(big.size()));
    CHECK(seen[2].header("Content-Length") == "0");  // an empty POST still says so
    CHECK(seen[0].header("Host") == "127.0.0.1:" + std::to_string(lis.local_endpoint().port()));
    CHECK(seen[0].header("Accept-Encoding") == "gzip, deflate, br, zstd");
}

// ---- redirects across origins ---------------------------------------------------------------

hop::task<void> redirecting_server(hop::tcp_listener& lis, std::string location, raw_request& seen) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    auto r = co_await read_request(c, buf);
    REQUIRE(r);
    seen = *r;
    co_await c.write_all("HTTP/1.1 302 Found\r\nLocation: " + location + "\r\nContent-Length: 5\r\n\r\nmoved");
    co_await wait_for_eof(c);
}

hop::task<void> final_server(hop::tcp_listener& lis, raw_request& seen) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    auto r = co_await read_request(c, buf);
    REQUIRE(r);
    seen = *r;
    co_await c.write_all(ok("arrived"));
    co_await wait_for_eof(c);
}

hop::task<void> credentials_client(std::string u) {
    http::client client;
    http::request req = make_request("GET", u);
    req.headers.add("Authorization", "Bearer secret");
    req.headers.add("Cookie", "session=1");
    req.headers.add("X-Kept", "yes");
    http::response r = co_await client.fetch(std::move(req));
    CHECK(r.status == 200);
    CHECK(r.body == "arrived");
}

hop::task<void> cross_origin_case(hop::backend) {
    auto a = listen_any();
    auto b = listen_any();
    raw_request at_a, at_b;
    co_await hop::when_all(redirecting_server(a, base_url(b) + "/landing", at_a), final_server(b, at_b),
                           credentials_client(base_url(a) + "/start"));
    CHECK(at_a.header("Authorization") == "Bearer secret");
    CHECK(at_a.header("Cookie") == "session=1");
    CHECK(at_b.target == "/landing");
    CHECK_FALSE(at_b.header("Authorization").has_value());
    CHECK_FALSE(at_b.header("Cookie").has_value());
    CHECK(at_b.header("X-Kept") == "yes");
    CHECK(at_b.header("Host") == "127.0.0.1:" + std::to_string(b.local_endpoint().port()));
}

// Same origin: the credentials stay. One server answers both requests.
hop::task<void> same_origin_server(hop::tcp_listener& lis, raw_request& second) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    auto r = co_await read_request(c, buf);
    REQUIRE(r);
    co_await c.write_all(std::string_view("HTTP/1.1 307 Temporary Redirect\r\nLocation: /next\r\nContent-Length: 0\r\n\r\n"));
    auto r2 = co_await read_request(c, buf);
    REQUIRE(r2);
    second = *r2;
    co_await c.write_all(ok("arrived"));
    co_await wait_for_eof(c);
}

hop::task<void> same_origin_case(hop::backend) {
    auto a = listen_any();
    raw_request second;
    co_await hop::when_all(same_origin_server(a, second), credentials_client(base_url(a) + "/start"));
    CHECK(second.target == "/next");
    CHECK(second.header("Authorization") == "Bearer secret");
    CHECK(second.header("Cookie") == "session=1");
}

// ---- cancellation ----------------------------------------------------------------------------

// Connection 1: reads a request, waits for the client to close it. Then
// connection 2 answers normally.
hop::task<void> cancel_server(hop::tcp_listener& lis, hop::event& got_first, bool& first_closed) {
    {
        hop::tcp_stream c = co_await lis.accept();
        std::string buf;
        auto r = co_await read_request(c, buf);
        REQUIRE(r);
        got_first.set();
        co_await wait_for_eof(c);
        first_closed = true;
    }
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    auto r = co_await read_request(c, buf);
    REQUIRE(r);
    co_await c.write_all(ok("second"));
    co_await wait_for_eof(c);
}

hop::task<void> second_request(http::client& client, std::string u) {
    http::response r = co_await client.get(u);  // waits for the only slot
    CHECK(r.body == "second");
}

hop::task<void> cancel_first(http::client& client, hop::future<http::response>& first) {
    CHECK(client.stats().waiting == 1);  // the second request is queued for the slot
    first.cancel();
    co_return;
}

hop::task<void> cancel_client(hop::io_loop& loop, hop::tcp_listener& lis, hop::event& got_first) {
    http::client client{{.max_connections = 1}};
    const std::string u = base_url(lis) + "/";
    hop::future<http::response> first = loop.spawn(client.get(u));
    co_await got_first.wait();
    // when_all starts second_request first: it runs until it waits for the
    // slot, then cancel_first cancels the request that holds it.
    co_await hop::when_all(second_request(client, u), cancel_first(client, first));
    CHECK(first.done());
    CHECK(first.cancelled());
    CHECK(client.stats().connects == 2);
}

hop::task<void> cancel_case(hop::io_loop& loop) {
    auto lis = listen_any();
    hop::event got_first;
    bool first_closed = false;
    co_await hop::when_all(cancel_server(lis, got_first, first_closed), cancel_client(loop, lis, got_first));
    CHECK(first_closed);  // the server saw EOF on the cancelled request's connection
}

// A when_any loser and hop::with_timeout: both close the request's connection.
hop::task<int> wait_then_win(hop::event& got_request) {
    co_await got_request.wait();
    co_return 1;
}

hop::task<int> request_as_int(http::client& client, std::string u) {
    http::response r = co_await client.get(u);
    co_return r.status;
}

hop::task<void> loser_client(hop::tcp_listener& lis, hop::event& got_request) {
    http::client client;
    std::vector<hop::task<int>> racers;
    racers.push_back(request_as_int(client, base_url(lis) + "/never"));
    racers.push_back(wait_then_win(got_request));
    auto r = co_await hop::when_any(std::move(racers));
    CHECK(r.index == 1);
    CHECK(client.stats().open == 0);
}

hop::task<void> when_any_case(hop::backend) {
    auto lis = listen_any();
    hop::event got;
    bool saw_eof = false;
    co_await hop::when_all(silent_server(lis, got, saw_eof), loser_client(lis, got));
    CHECK(saw_eof);
}

hop::task<void> with_timeout_client(hop::tcp_listener& lis) {
    http::client client;
    const std::string what = co_await what_of<hop::timeout_error>(
        hop::with_timeout(50ms, client.get(base_url(lis) + "/never")));
    CHECK_MESSAGE(what.find("hop::with_timeout") != std::string::npos, what);
    CHECK(client.stats().open == 0);
}

hop::task<void> with_timeout_case(hop::backend) {
    auto lis = listen_any();
    hop::event got;
    bool saw_eof = false;
    co_await hop::when_all(silent_server(lis, got, saw_eof), with_timeout_client(lis));
    CHECK(saw_eof);
}

// ---- idle connections ----------------------------------------------------------------------

hop::task<void> idle_server(hop::tcp_listener& lis, hop::event& closed_by_client) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    auto r = co_await read_request(c, buf);
    REQUIRE(r);
    co_await c.write_all(ok("kept"));
    co_await wait_for_eof(c);  // the client's idle timeout closes it
    closed_by_client.set();
}

hop::task<void> idle_client(hop::tcp_listener& lis, hop::event& closed_by_client) {
    http::client client{{.idle_timeout = 50ms}};
    CHECK((co_await client.get(base_url(lis) + "/")).body == "kept");
    CHECK(client.stats().idle == 1);
    co_await closed_by_client.wait();
    CHECK(client.stats().idle == 0);
    CHECK(client.stats().open == 0);
}

hop::task<void> idle_timeout_case(hop::backend) {
    auto lis = listen_any();
    hop::event closed;
    co_await hop::when_all(idle_server(lis, closed), idle_client(lis, closed));
}

// A response_stream dropped before its body was read closes the
// connection; one whose whole body had arrived keeps it.
hop::task<void> stream_server(hop::tcp_listener& lis, int& connections) {
    const std::string big_head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
    for (;;) {
        hop::tcp_stream c = co_await lis.accept();
        ++connections;
        std::string buf;
        for (;;) {
            auto r = co_await read_request(c, buf);
            if (!r) break;
            if (r->target == "/big") {
                co_await c.write_all(std::string_view(big_head));
                co_await c.write_all(std::string(1000, 'z'));  // the rest never comes
            } else if (r->target == "/end") {
                co_await c.write_all(ok("bye"));
                co_return;
            } else {
                co_await c.write_all(ok("small body"));
            }
        }
    }
}

hop::task<void> stream_client(hop::tcp_listener& lis) {
    http::client client;
    const std::string base = base_url(lis);
    {
        http::response_stream s = co_await client.open(make_request("GET", base + "/small"));
        CHECK(s.status == 200);
    }  // dropped unread, but its body was already buffered: kept
    CHECK(client.stats().idle == 1);
    {
        http::response_stream s = co_await client.open(make_request("GET", base + "/small"));
        char buf[4];
        std::string got;
        while (std::size_t n = co_await s.read_some(std::span<char>(buf))) got.append(buf, n);
        CHECK(got == "small body");
        CHECK(s.done());
    }
    CHECK(client.stats().connects == 1);
    {
        http::response_stream s = co_await client.open(make_request("GET", base + "/big"));
        char buf[100];
        CHECK(co_await s.read_some(std::span<char>(buf)) > 0);
    }  // dropped in the middle: closed
    CHECK(client.stats().idle == 0);
    CHECK(client.stats().open == 0);
    CHECK((co_await client.get(base + "/end")).body == "bye");
    CHECK(client.stats().connects == 2);
}

hop::task<void> stream_case(hop::backend) {
    auto lis = listen_any();
    int connections = 0;
    co_await hop::when_all(stream_server(lis, connections), stream_client(lis));
    CHECK(connections == 2);
}

}  // namespace

TEST_SUITE("http_client_raw") {
    TEST_CASE("a GET on a kept-alive connection the server had closed is sent again on a new one") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, stale_get(b)); });
    }

    TEST_CASE("a POST on a kept-alive connection the server had closed fails clearly, and is not resent") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, stale_post(b)); });
    }

    TEST_CASE("an idle connection the server closed is noticed and not used") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) {
            hop_test::run_on(b, closed_idle(b, "GET"));
            hop_test::run_on(b, closed_idle(b, "POST"));
        });
    }

    TEST_CASE("read_timeout: a server that never answers") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, read_timeout_case(b)); });
    }

    TEST_CASE("total_timeout throws hop::timeout_error itself") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, total_timeout_case(b)); });
    }

    TEST_CASE("pool_timeout with max_connections = 1") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, pool_timeout_case(b)); });
    }

    TEST_CASE("connect_timeout: a listener whose accept queue is full") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, connect_timeout_case(b)); });
    }

    TEST_CASE("malformed responses are protocol_error") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) {
            hop_test::run_on(b, protocol_error_case(b, "garbage\r\n\r\n", {}, "a malformed response from"));
            hop_test::run_on(b, protocol_error_case(b, "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", {},
                                                    "a malformed response from"));
            hop_test::run_on(b, protocol_error_case(b, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", {},
                                                    "the connection closed in the middle"));
            hop_test::run_on(b, protocol_error_case(b, "", {}, "the server closed the connection before answering"));
            hop_test::run_on(b, protocol_error_case(b, ok(std::string(2000, 'x')), limits{.body = 1000},
                                                    "exceeds client_options::max_body_bytes (1000 bytes)"));
            hop_test::run_on(b, protocol_error_case(b, "HTTP/1.1 200 OK\r\nX-Big: " + std::string(4000, 'h') + "\r\n\r\n",
                                                    limits{.header = 1024}, "a malformed response from"));
            hop_test::run_on(b, protocol_error_case(b, ok("not gzip at all", "Content-Encoding: gzip\r\n"), {},
                                                    "a badly encoded body"));
            hop_test::run_on(b, protocol_error_case(b, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n"
                                                       "Connection: upgrade\r\n\r\n",
                                                    {}, "switched protocols (101)"));
        });
    }

    TEST_CASE("a chunked body over max_body_bytes") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, chunked_too_big_case(b)); });
    }

    TEST_CASE("bodies that end at close, chunked with trailers, deflate, after a 100 Continue") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) {
            hop_test::run_on(b, ends_at_close_case(b));
            hop_test::run_on(b, trailers_case(b));
            hop_test::run_on(b, deflate_case(b));
            hop_test::run_on(b, informational_case(b));
        });
    }

    TEST_CASE("request bodies: chunked, large with Content-Length, an empty POST") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, request_bodies_case(b)); });
    }

    TEST_CASE("Authorization and Cookie are dropped when a redirect leaves the origin, kept when it does not") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) {
            hop_test::run_on(b, cross_origin_case(b));
            hop_test::run_on(b, same_origin_case(b));
        });
    }

    TEST_CASE("cancelling a request closes its connection and frees its slot for a waiter") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) {
            hop::io_loop loop{hop_test::options_for(b)};
            hop_test::run_on(loop, cancel_case(loop));
        });
    }

    TEST_CASE("a when_any loser and hop::with_timeout close the request's connection") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) {
            hop_test::run_on(b, when_any_case(b));
            hop_test::run_on(b, with_timeout_case(b));
        });
    }

    TEST_CASE("idle connections are closed after idle_timeout") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, idle_timeout_case(b)); });
    }

    TEST_CASE("a response_stream dropped early closes its connection unless its body had arrived") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, stream_case(b)); });
    }
}
