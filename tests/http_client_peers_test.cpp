// hop::http::client: what a user met on day one against a server nobody here
// wrote (issue 21), each case against hop's raw socket server
// (support/http_raw_server.hpp) and, for redirects and timeouts, against
// httpbin under gunicorn (Debian's python3-httpbin, support/http_peers.hpp):
//   - open() after a followed redirect streams the final body (it returned
//     an empty one, done() true); a stream whose connection ends before its
//     framing says so throws;
//   - total_timeout covers the whole exchange: redirects and the body;
//   - a server that answers early and closes during a large upload: its
//     answer is returned, not the write's EPIPE;
//   - error messages: URLs cut to 200 bytes, errno text said once.

#include <hop/http/client.hpp>

#include <hop/hop.hpp>

#include "support/backend.hpp"
#include "support/http_peers.hpp"
#include "support/http_raw_server.hpp"
#include "support/sockets.hpp"

#include <doctest/doctest.h>

#include <linux/sockios.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

using namespace std::chrono_literals;
namespace http = hop::http;
using namespace hop_test::raw_http;

namespace {

// A body with structure: a lost, repeated or moved byte shows.
std::string pattern(std::size_t size) {
    std::string s;
    s.reserve(size + 16);
    for (std::size_t i = 0; s.size() < size; ++i) s += std::to_string(i) + ",";
    s.resize(size);
    return s;
}

std::string chunked(std::string_view body) {
    std::string out = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (std::size_t at = 0; at < body.size(); at += 50) {
        const std::string_view part = body.substr(at, 50);
        char size[16];
        std::snprintf(size, sizeof size, "%zx\r\n", part.size());
        out += size;
        out += part;
        out += "\r\n";
    }
    return out + "0\r\n\r\n";
}

hop::task<std::string> read_all_of(http::response_stream& s) { co_return co_await s.read_all(); }

/// open(url), or nothing if the total timeout fired before the head came:
/// the cases below time a body or a second request, and a run slow enough
/// (a sanitizer beside a CPU hog) to spend the whole total_timeout on the
/// head says so and checks nothing more, instead of failing.
hop::task<std::optional<http::response_stream>> open_unless_slow(http::client& client, std::string url) {
    std::optional<http::response_stream> s;
    try {
        s.emplace(co_await client.open(url));
    } catch (const hop::timeout_error& e) {
        MESSAGE("the total timeout fired before the head of " << url << " came (a slow run): " << e.what());
    }
    co_return s;
}

// ---- bug 1: open() after a redirect ------------------------------------------------------

// One connection: `first` answers the request for /from, then the request
// for /to (if `to_here`) gets `second`.
hop::task<void> redirect_then_answer(hop::tcp_listener& lis, std::string first, std::string second, bool to_here) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    auto r1 = co_await read_request(c, buf);
    REQUIRE(r1);
    CHECK(r1->target == "/from");
    co_await c.write_all(std::string_view(first));
    if (to_here) {
        auto r2 = co_await read_request(c, buf);
        REQUIRE(r2);
        CHECK(r2->target == "/to");
        co_await c.write_all(std::string_view(second));
    }
    co_await wait_for_eof(c);
}

hop::task<void> answer_to(hop::tcp_listener& lis, std::string response) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    auto r = co_await read_request(c, buf);
    REQUIRE(r);
    CHECK(r->target == "/to");
    co_await c.write_all(std::string_view(response));
    co_await wait_for_eof(c);
}

hop::task<void> open_redirected_client(std::string from, std::string want) {
    http::client client;
    http::response_stream s = co_await client.open(from);
    CHECK(s.status == 200);
    CHECK_FALSE(s.done());
    const std::string body = co_await s.read_all();
    CHECK(body.size() == want.size());
    CHECK(body == want);
    CHECK(s.done());
    CHECK(client.stats().open == client.stats().idle);  // both connections kept: nothing mid-message
}

std::string redirect_to(std::string_view location) {
    return "HTTP/1.1 302 Found\r\nLocation: " + std::string(location) + "\r\nContent-Length: 5\r\n\r\nmoved";
}

hop::task<void> open_after_redirect_raw(hop::backend) {
    const std::string body = pattern(160);
    {  // relative Location, same connection
        auto a = listen_any();
        co_await hop::when_all(redirect_then_answer(a, redirect_to("/to"), ok(body), true),
                               open_redirected_client(base_url(a) + "/from", body));
    }
    {  // absolute Location, same origin
        auto a = listen_any();
        co_await hop::when_all(redirect_then_answer(a, redirect_to(base_url(a) + "/to"), ok(body), true),
                               open_redirected_client(base_url(a) + "/from", body));
    }
    {  // another port; the target's body chunked
        auto a = listen_any();
        auto b = listen_any();
        co_await hop::when_all(redirect_then_answer(a, redirect_to(base_url(b) + "/to"), {}, false),
                               answer_to(b, chunked(body)), open_redirected_client(base_url(a) + "/from", body));
    }
}

// A stream whose connection ends before its framing says the body ended
// throws protocol_error (redirected or not): never a clean end.
hop::task<void> truncated_stream_client(std::string from, bool redirected) {
    http::client client;
    http::response_stream s = co_await client.open(from);
    CHECK(s.status == 200);
    std::string what = "(nothing thrown)";
    std::string got;
    try {
        got = co_await s.read_all();
    } catch (const http::protocol_error& e) {
        what = e.what();
    }
    CHECK_MESSAGE(what.find("the connection closed in the middle of") != std::string::npos,
                  what << " (redirected " << redirected << ", read " << got.size() << " bytes)");
    CHECK(s.done());
    std::string again = "(nothing thrown)";
    char buf[64];
    try {
        co_await s.read_some(std::span<char>(buf));
    } catch (const http::protocol_error& e) {
        again = e.what();
    }
    CHECK(again == what);  // every later read fails the same way
}

hop::task<void> answer_and_close(hop::tcp_listener& lis, std::string first, std::string second) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    auto r1 = co_await read_request(c, buf);
    REQUIRE(r1);
    co_await c.write_all(std::string_view(first));
    if (!second.empty()) {
        auto r2 = co_await read_request(c, buf);
        REQUIRE(r2);
        co_await c.write_all(std::string_view(second));
    }
    c.close();
}

hop::task<void> truncated_streams(hop::backend) {
    const std::string cut_length = "HTTP/1.1 200 OK\r\nContent-Length: 160\r\n\r\n" + pattern(50);
    std::string cut_chunks = chunked(pattern(160));
    cut_chunks.resize(cut_chunks.size() - 60);
    const std::vector<std::string> cuts{cut_length, cut_chunks};
    for (const std::string& cut : cuts) {
        {
            auto a = listen_any();
            co_await hop::when_all(answer_and_close(a, cut, {}), truncated_stream_client(base_url(a) + "/to", false));
        }
        {
            auto a = listen_any();
            co_await hop::when_all(answer_and_close(a, redirect_to("/to"), cut),
                                   truncated_stream_client(base_url(a) + "/from", true));
        }
    }
}

// ---- bug 2: total_timeout after a redirect -------------------------------------------------

// /from redirects to /to, whose answer is `second` (maybe a head and part of
// a body) and then nothing: the server waits for the client to go.
hop::task<void> redirect_then_stall(hop::tcp_listener& lis, std::string second, bool& saw_target) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    auto r1 = co_await read_request(c, buf);
    REQUIRE(r1);
    co_await c.write_all(std::string_view(redirect_to("/to")));
    auto r2 = co_await read_request(c, buf);
    REQUIRE(r2);
    saw_target = true;
    if (!second.empty()) co_await c.write_all(std::string_view(second));
    co_await wait_for_eof(c);
}

// read_timeout is the guard: before the fix it was the only one left
// running after the redirect (and it is not hop::timeout_error itself).
http::client_options total_after_redirect() {
    http::client_options o;
    o.read_timeout = 120s;
    o.total_timeout = 500ms;
    return o;
}

hop::task<void> total_fetch_client(std::string from) {
    http::client client{total_after_redirect()};
    const std::string what = co_await timeout_kind_of(client.get(from));
    CHECK_MESSAGE(what.starts_with("timeout_error: "), what);
    CHECK_MESSAGE(what.find("total timeout (500ms) for GET " + from) != std::string::npos, what);
    CHECK(client.stats().open == 0);
}

hop::task<void> total_open_client(std::string from) {
    http::client client{total_after_redirect()};
    auto s = co_await open_unless_slow(client, from);
    if (!s) co_return;
    CHECK(s->status == 200);
    const std::string what = co_await timeout_kind_of(read_all_of(*s));
    CHECK_MESSAGE(what.starts_with("timeout_error: "), what);
    CHECK_MESSAGE(what.find("total timeout (500ms) for GET " + from) != std::string::npos, what);
    CHECK(s->done());
    CHECK(client.stats().open == 0);
}

hop::task<void> total_after_redirect_raw(hop::backend) {
    {
        auto a = listen_any();
        bool saw = false;
        co_await hop::when_all(redirect_then_stall(a, {}, saw), total_fetch_client(base_url(a) + "/from"));
        if (!saw) MESSAGE("total_timeout fired before the redirect was followed (a slow run)");
    }
    {
        auto a = listen_any();
        bool saw = false;
        co_await hop::when_all(redirect_then_stall(a, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart", saw),
                               total_open_client(base_url(a) + "/from"));
    }
}

// ---- bug 4: an early answer during a large upload ----------------------------------------

// Until the peer has acknowledged every byte sent on `c` (SIOCOUTQ 0):
// polled, bounded by a generous guard.
hop::task<void> acknowledged(hop::tcp_stream& c) {
    for (int i = 0; i < 120'000; ++i) {
        int unacked = 0;
        REQUIRE(::ioctl(c.native_handle(), SIOCOUTQ, &unacked) == 0);
        if (unacked == 0) co_return;
        co_await hop::sleep_for(1ms);
    }
    FAIL("the client did not acknowledge the server's answer in 2 minutes");
}

// Reads the request's head only, answers `answer` and closes with the body
// unread (the kernel resets the connection): the client's write fails.
hop::task<void> answer_early(hop::tcp_listener& lis, std::string answer) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    char tmp[4096];
    while (buf.find("\r\n\r\n") == std::string::npos) {
        const std::size_t n = co_await c.read_some(tmp);
        REQUIRE(n > 0);
        buf.append(tmp, n);
    }
    CHECK(buf.starts_with("POST /upload HTTP/1.1\r\n"));
    if (!answer.empty()) {
        co_await c.write_all(std::string_view(answer));
        // A close with unread input resets the connection and drops what is
        // still in the send queue: close once the client has acknowledged
        // the answer (on loopback, as soon as the kernel sends it).
        co_await acknowledged(c);
    }
    c.close();
}

// Larger than what the socket buffers on both sides hold: the server's
// close always finds the upload unfinished.
constexpr std::size_t upload_size = 32u << 20;

hop::task<void> early_answer_client(std::string u, int status, std::string body) {
    http::client client;
    http::response r = co_await client.post(u, std::string(upload_size, 'u'));
    CHECK(r.status == status);
    CHECK(r.body == body);
    CHECK(client.stats().open == 0);  // not pooled: the request was not all sent
}

hop::task<void> no_answer_client(std::string u) {
    http::client client;
    std::string what = "(nothing thrown)";
    try {
        co_await client.post(u, std::string(upload_size, 'u'));
    } catch (const std::system_error& e) {
        const int ev = e.code().value();
        CHECK_MESSAGE((ev == EPIPE || ev == ECONNRESET), e.what());
        what = e.what();
    }
    CHECK_MESSAGE(what.find("hop::http::client: POST " + u) != std::string::npos, what);
    CHECK(client.stats().open == 0);
}

hop::task<void> early_answer_raw(hop::backend) {
    {
        auto a = listen_any();
        const std::string answer =
            "HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large";
        co_await hop::when_all(answer_early(a, answer), early_answer_client(base_url(a) + "/upload", 413, "too large"));
    }
    {
        auto a = listen_any();
        co_await hop::when_all(answer_early(a, ok("early")), early_answer_client(base_url(a) + "/upload", 200, "early"));
    }
    {  // no answer at all: the write's failure, naming the request
        auto a = listen_any();
        co_await hop::when_all(answer_early(a, {}), no_answer_client(base_url(a) + "/upload"));
    }
}

// ---- the request forms g++ 12 compiles correctly inline ------------------------------------

// Answers each request on one connection with what it carried.
hop::task<void> echo_requests(hop::tcp_listener& lis, int count) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    for (int i = 0; i < count; ++i) {
        auto r = co_await read_request(c, buf);
        REQUIRE(r);
        co_await c.write_all(std::string_view(ok(r->method + " " + r->target + " ct=" +
                                                 r->header("Content-Type").value_or("-") + " accept=" +
                                                 r->header("Accept").value_or("-") + " len=" +
                                                 r->header("Content-Length").value_or("-") + " " + r->body)));
    }
    co_await wait_for_eof(c);
}

hop::task<void> request_forms_client(std::string u) {
    http::client client;
    http::headers accept{{"Accept", "text/plain"}};
    CHECK((co_await client.get(u, std::move(accept))).body == "GET /f ct=- accept=text/plain len=- ");
    CHECK((co_await client.post(u, "{}")).body == "POST /f ct=- accept=- len=2 {}");
    http::headers h{{"Content-Type", "application/json"}};
    CHECK((co_await client.post(u, "{\"a\":1}", std::move(h))).body ==
          "POST /f ct=application/json accept=- len=7 {\"a\":1}");
    CHECK((co_await client.post(u, "")).body == "POST /f ct=- accept=- len=0 ");
    http::response_stream s = co_await client.open(u);
    CHECK(s.status == 200);
    CHECK((co_await s.read_all()) == "GET /f ct=- accept=- len=- ");
    CHECK(client.stats().connects == 1);
}

hop::task<void> request_forms(hop::backend) {
    auto a = listen_any();
    co_await hop::when_all(echo_requests(a, 5), request_forms_client(base_url(a) + "/f"));
}

// total_timeout counts the wait for a free connection too: the only
// connection is held by a response_stream whose body is not read.
hop::task<void> total_in_pool_client(std::string u) {
    http::client_options o;
    o.max_connections = 1;
    o.total_timeout = 300ms;
    http::client client{o};
    auto holder = co_await open_unless_slow(client, u);
    if (!holder) co_return;
    CHECK(client.stats().open == 1);
    const std::string what = co_await timeout_kind_of(client.get(u));
    CHECK_MESSAGE(what.starts_with("timeout_error: "), what);
    CHECK(client.stats().waiting == 0);
}

hop::task<void> total_in_pool(hop::backend) {
    auto a = listen_any();
    co_await hop::when_all(stalling_body_server(a), total_in_pool_client(base_url(a) + "/held"));
}

// ---- error messages ------------------------------------------------------------------------

hop::task<void> messages_case(hop::backend) {
    hop_test::refusing_port port;
    http::client client;
    const std::string u = "http://127.0.0.1:" + std::to_string(port.endpoint().port()) + "/";
    std::string what;
    try {
        co_await client.get(u);
    } catch (const std::system_error& e) {
        CHECK(e.code().value() == ECONNREFUSED);
        what = e.what();
    }
    const std::string refused = std::error_code(ECONNREFUSED, std::generic_category()).message();
    const auto first = what.find(refused);
    CHECK_MESSAGE(first != std::string::npos, what);
    CHECK_MESSAGE(what.find(refused, first + 1) == std::string::npos, what);  // said once
    CHECK_MESSAGE(what.find("GET " + u) != std::string::npos, what);

    // A 70 KB URL is quoted as its first 200 bytes and "…".
    const std::string long_url = u + std::string(70 * 1024, 'p');
    std::string long_what;
    try {
        co_await client.get(long_url);
    } catch (const std::system_error& e) {
        long_what = e.what();
    }
    CHECK_MESSAGE(long_what.find(long_url.substr(0, 200) + "\u2026") != std::string::npos, long_what);
    CHECK(long_what.size() < 600);
}

// ---- httpbin ---------------------------------------------------------------------------------

hop::task<void> httpbin_open_after_redirect(hop::backend, const hop_test::httpbin_peer& bin) {
    http::client client;
    const std::string other = "http%3A%2F%2Flocalhost%3A" + std::to_string(bin.port()) + "%2Fbytes%2F2000%3Fseed%3D3";
    const std::vector<std::string> paths{"/redirect/1", "/absolute-redirect/1", "/relative-redirect/2",
                                         "/redirect-to?url=%2Fstream-bytes%2F5000%3Fseed%3D7",
                                         "/redirect-to?url=" + other};
    for (const std::string& path : paths) {
        const std::string u = bin.url(path);
        const http::response whole = co_await client.get(u);
        REQUIRE(whole.status == 200);
        REQUIRE_FALSE(whole.body.empty());
        http::response_stream s = co_await client.open(u);
        CHECK(s.status == 200);
        if (auto cl = s.headers.get("Content-Length")) CHECK(*cl == std::to_string(whole.body.size()));
        const std::string streamed = co_await s.read_all();
        CHECK_MESSAGE(streamed.size() == whole.body.size(), path);
        CHECK_MESSAGE(streamed == whole.body, path);
        CHECK(s.done());
    }
}

// httpbin runs 4 sync workers here: each /delay/3 keeps one busy for 3 s
// after the client gave up, and the next backend's run starts at once.
hop::task<void> httpbin_total_timeout(hop::backend, const hop_test::httpbin_peer& bin) {
    http::client client{{.total_timeout = 1s}};
    // The head at once, the body a byte a second: the body's read times out.
    auto s = co_await open_unless_slow(client, bin.url("/redirect-to?url=%2Fdrip%3Fduration%3D10%26numbytes%3D10"));
    std::string what;
    if (s) {
        CHECK(s->status == 200);
        what = co_await timeout_kind_of(read_all_of(*s));
        CHECK_MESSAGE(what.starts_with("timeout_error: "), what);
    }
    // The redirect's target answers after 3 s: get() and open() time out.
    const std::string slow = bin.url("/redirect-to?url=/delay/3");
    what = co_await timeout_kind_of(client.get(slow));
    CHECK_MESSAGE(what.starts_with("timeout_error: "), what);
    what = co_await timeout_kind_of(client.open(slow));
    CHECK_MESSAGE(what.starts_with("timeout_error: "), what);
}

}  // namespace

TEST_SUITE("http_client_peers") {
    TEST_CASE("open() after a followed redirect streams the final body: relative, absolute, another port, chunked") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, open_after_redirect_raw(b)); });
    }

    TEST_CASE("a response_stream cut short by its connection throws protocol_error, after a redirect too") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, truncated_streams(b)); });
    }

    TEST_CASE("total_timeout covers the redirect's target and the body read through open()") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, total_after_redirect_raw(b)); });
    }

    TEST_CASE("total_timeout counts a wait for a free connection") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, total_in_pool(b)); });
    }

    TEST_CASE("get(url, fields), post(url, body[, fields]) and open(url) send what they say") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, request_forms(b)); });
    }

    TEST_CASE("a server that answers early and closes during a 32 MB upload: its answer is returned") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, early_answer_raw(b)); });
    }

    TEST_CASE("error messages: errno text once, long URLs cut to 200 bytes") {
        hop_test::fd_leak_check fds;
        hop_test::for_each_backend([](hop::backend b) { hop_test::run_on(b, messages_case(b)); });
    }

    TEST_CASE("httpbin: open() after redirects returns what get() does") {
        hop_test::httpbin_peer bin;
        hop_test::for_each_backend([&bin](hop::backend b) { hop_test::run_on(b, httpbin_open_after_redirect(b, bin)); });
    }

    TEST_CASE("httpbin: total_timeout 1s through a redirect to /delay/3 and a dripping body is hop::timeout_error") {
        hop_test::httpbin_peer bin{4};
        hop_test::for_each_backend([&bin](hop::backend b) { hop_test::run_on(b, httpbin_total_timeout(b, bin)); });
    }
}
