// hop::tls::stream and hop::tls::context, on both backends: hop against
// itself and against peers nobody here wrote (openssl s_server / s_client,
// curl, nginx), with certificates the `openssl` tool makes at start
// (tests/support/tls_certs.hpp).
//
// The traps other TLS wrappers fell into are cases here: TLS 1.3 session
// tickets read as the end of the stream (openssl #7327); a key update while
// records are in flight (openssl #13729); SSL_write wanting to read
// (openssl #11211); shutdown() hanging on a peer that never answers
// close_notify (trojan #77, asio #164); a clean close reported as truncation
// (asio #212).

#include <hop/tls.hpp>

#include <hop/combinators.hpp>
#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/sync.hpp>
#include <hop/task.hpp>
#include <hop/time.hpp>

#include "support/backend.hpp"
#include "support/http_peers.hpp"
#include "support/sockets.hpp"
#include "support/tls_certs.hpp"
#include "support/tls_peers.hpp"

#include <doctest/doctest.h>

#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <fstream>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using namespace std::string_view_literals;
using hop_test::for_each_backend;
using hop_test::run_on;

namespace tls = hop::tls;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

const hop_test::tls_cert_set& certs() { return hop_test::test_certs(); }

bool contains(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }

// ---- how an operation ended ---------------------------------------------------

struct failure {
    enum kind_t { none, truncated, tls_error, timeout, cancelled, end_of_stream, invalid, logic, system, other };
    kind_t kind = none;
    std::string what;
    long verify_result = 0;  // tls errors
    int code = 0;            // system errors
};

const char* kind_name(failure::kind_t k) {
    switch (k) {
        case failure::none:
            return "no exception";
        case failure::truncated:
            return "hop::tls::truncated_error";
        case failure::tls_error:
            return "hop::tls::error";
        case failure::timeout:
            return "hop::timeout_error";
        case failure::cancelled:
            return "hop::cancelled_error";
        case failure::end_of_stream:
            return "hop::end_of_stream_error";
        case failure::invalid:
            return "std::invalid_argument";
        case failure::logic:
            return "std::logic_error";
        case failure::system:
            return "std::system_error";
        case failure::other:
            return "another exception";
    }
    return "?";
}

doctest::String toString(const failure& f) {
    std::string s = kind_name(f.kind);
    if (f.kind == failure::system) s += " errno " + std::to_string(f.code);
    if (f.verify_result != 0) s += " verify_result " + std::to_string(f.verify_result);
    if (!f.what.empty()) s += ": " + f.what;
    return s.c_str();
}

failure classify(std::exception_ptr e) {
    failure f;
    if (!e) return f;
    try {
        std::rethrow_exception(e);
    } catch (const tls::truncated_error& x) {
        f.kind = failure::truncated;
        f.what = x.what();
        f.verify_result = x.verify_result();
    } catch (const tls::error& x) {
        f.kind = failure::tls_error;
        f.what = x.what();
        f.verify_result = x.verify_result();
    } catch (const hop::timeout_error& x) {
        f.kind = failure::timeout;
        f.what = x.what();
    } catch (const hop::cancelled_error& x) {
        f.kind = failure::cancelled;
        f.what = x.what();
    } catch (const hop::end_of_stream_error& x) {
        f.kind = failure::end_of_stream;
        f.what = x.what();
    } catch (const std::invalid_argument& x) {
        f.kind = failure::invalid;
        f.what = x.what();
    } catch (const std::system_error& x) {
        f.kind = failure::system;
        f.code = x.code().value();
        f.what = x.what();
    } catch (const std::logic_error& x) {
        f.kind = failure::logic;
        f.what = x.what();
    } catch (const std::exception& x) {
        f.kind = failure::other;
        f.what = x.what();
    } catch (...) {
        f.kind = failure::other;
    }
    return f;
}

/// Awaits `t` and says how it ended (its value dropped).
template <class T>
hop::task<failure> failure_of(hop::task<T> t) {
    std::exception_ptr e;
    try {
        if constexpr (std::is_void_v<T>) {
            co_await std::move(t);
        } else {
            (void)co_await std::move(t);
        }
    } catch (...) {
        e = std::current_exception();
    }
    co_return classify(e);
}

/// How a plain call ended.
template <class F>
failure failure_of_call(F&& fn) {
    try {
        fn();
    } catch (...) {
        return classify(std::current_exception());
    }
    return {};
}

// ---- contexts and connections ---------------------------------------------

/// A client context that trusts the tests' private CA.
tls::context trusting_client() {
    auto c = tls::context::client();
    c.load_ca_file(certs().ca);
    return c;
}

tls::context server_with(const hop_test::tls_cert_files& f) { return tls::context::server(f.cert, f.key); }

hop_test::s_server_options s_opts(const hop_test::tls_cert_files& cert, std::string version = "",
                                  bool no_ticket = false, hop_test::s_server_mode mode = hop_test::s_server_mode::echo,
                                  std::vector<std::string> extra = {}) {
    hop_test::s_server_options o;
    o.cert = cert;
    o.version = std::move(version);
    o.no_ticket = no_ticket;
    o.mode = mode;
    o.extra = std::move(extra);
    return o;
}

hop::task<tls::stream> accept_one(hop::tcp_listener& lis, tls::context ctx) {
    auto tcp = co_await lis.accept();
    co_return co_await tls::stream::accept(std::move(ctx), std::move(tcp));
}

hop::task<tls::stream> connect_to(hop::endpoint ep, tls::context ctx, std::string host) {
    auto tcp = co_await hop::tcp_stream::connect(ep);
    co_return co_await tls::stream::connect(std::move(ctx), std::move(tcp), std::move(host));
}

struct tls_pair {
    tls::stream client;
    tls::stream server;
};

/// A hop client and a hop server shaking hands through `lis`.
hop::task<tls_pair> make_tls_pair(hop::tcp_listener& lis, tls::context cctx, tls::context sctx,
                                  std::string host = "localhost") {
    auto s = accept_one(lis, std::move(sctx));
    auto c = connect_to(lis.local_endpoint(), std::move(cctx), std::move(host));
    auto r = co_await hop::when_all(std::move(s), std::move(c));
    co_return tls_pair{std::move(std::get<1>(r)), std::move(std::get<0>(r))};
}

/// Both sides' outcome of one handshake (neither throws).
struct handshake_outcome {
    failure client;
    failure server;
    tls::stream client_stream;
    tls::stream server_stream;
};

hop::task<failure> accept_into(hop::tcp_listener& lis, tls::context ctx, tls::stream& out) {
    std::exception_ptr e;
    try {
        out = co_await accept_one(lis, std::move(ctx));
    } catch (...) {
        e = std::current_exception();
    }
    co_return classify(e);
}

hop::task<failure> connect_into(hop::endpoint ep, tls::context ctx, std::string host, tls::stream& out) {
    std::exception_ptr e;
    try {
        out = co_await connect_to(ep, std::move(ctx), std::move(host));
    } catch (...) {
        e = std::current_exception();
    }
    co_return classify(e);
}

hop::task<handshake_outcome> try_handshake(tls::context cctx, tls::context sctx, std::string host) {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    handshake_outcome o;
    auto s = accept_into(lis, std::move(sctx), o.server_stream);
    auto c = connect_into(lis.local_endpoint(), std::move(cctx), std::move(host), o.client_stream);
    auto r = co_await hop::when_all(std::move(s), std::move(c));
    o.server = std::get<0>(r);
    o.client = std::get<1>(r);
    co_return o;
}

// ---- moving bytes ------------------------------------------------------------

/// Writes pattern bytes [offset, offset + total) with write_all, `chunk`
/// (at most the pattern's period) at a time.
hop::task<void> write_pattern(tls::stream& s, std::uint64_t offset, std::uint64_t total, std::size_t chunk) {
    const auto& pat = hop_test::shared_pattern();
    chunk = std::min(chunk, hop_test::pattern::period);
    for (std::uint64_t done = 0; done < total;) {
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, total - done));
        co_await s.write_all(pat.at(offset + done, n));
        done += n;
    }
}

/// Pattern bytes [offset, offset + size) as a string, of any size.
std::string pattern_bytes(std::uint64_t offset, std::size_t size) {
    const auto& pat = hop_test::shared_pattern();
    std::string out;
    out.reserve(size);
    while (out.size() < size) {
        const auto piece = pat.at(offset + out.size(), std::min(size - out.size(), hop_test::pattern::period));
        out.append(piece.data(), piece.size());
    }
    return out;
}

/// Reads `total` bytes with read_some into a `chunk` buffer; true if they
/// are the pattern's from `offset`.
hop::task<bool> read_pattern(tls::stream& s, std::uint64_t offset, std::uint64_t total, std::size_t chunk) {
    const auto& pat = hop_test::shared_pattern();
    std::vector<char> buf(chunk);
    bool ok = true;
    for (std::uint64_t done = 0; done < total;) {
        const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, total - done));
        const std::size_t n = co_await s.read_some(std::span<char>(buf.data(), want));
        if (n == 0) co_return false;
        ok = ok && pat.matches(offset + done, buf.data(), n);
        done += n;
    }
    co_return ok;
}

/// Reads until read_some returns 0; everything read.
hop::task<std::string> read_to_end(tls::stream& s) {
    std::string all;
    std::vector<char> buf(64 * KiB);
    for (;;) {
        const std::size_t n = co_await s.read_some(buf);
        if (n == 0) break;
        all.append(buf.data(), n);
    }
    co_return all;
}

/// Reads until `text` has arrived (or the end); everything read.
hop::task<std::string> read_until(tls::stream& s, std::string_view text) {
    std::string all;
    char buf[4096];
    while (all.find(text) == std::string::npos) {
        const std::size_t n = co_await s.read_some(buf);
        if (n == 0) break;
        all.append(buf, n);
    }
    co_return all;
}

hop::task<std::size_t> read_some_into(tls::stream& s, std::span<char> buf) { co_return co_await s.read_some(buf); }

/// Awaits the only handle of a future (a move-only T is moved out).
template <class T>
hop::task<T> await_future(hop::future<T> f) {
    co_return co_await std::move(f);
}

/// Resumes the caller from the loop's queue: what was queued before runs
/// first (a task spawned on this loop has run to its first suspension).
struct post_yield {
    hop::io_loop& loop;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) { loop.post([h] { h.resume(); }); }
    void await_resume() const noexcept {}
};

hop::task<void> yield_times(hop::io_loop& loop, int n) {
    for (int i = 0; i < n; ++i) co_await post_yield{loop};
}

/// A shutdown that must come back by itself: a hang turns into a failed
/// check after its own bound plus a guard.
hop::task<bool> shutdown_returns(tls::stream& s, std::chrono::milliseconds wait_for_peer) {
    const auto guard = wait_for_peer + hop_test::scaled(std::chrono::milliseconds(5s));
    auto f = co_await failure_of(hop::with_timeout(guard, s.shutdown(wait_for_peer)));
    CHECK_MESSAGE(f.kind != failure::timeout, "stream::shutdown(" << wait_for_peer.count()
                                                                  << " ms) did not return within " << guard.count()
                                                                  << " ms");
    CHECK_MESSAGE(f.kind == failure::none, "stream::shutdown threw " << toString(f));
    co_return f.kind == failure::none;
}

}  // namespace

TEST_SUITE("tls") {

// ============================================================================
// hop client <-> hop server
// ============================================================================

namespace {

hop::task<void> basics() {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await make_tls_pair(lis, trusting_client(), server_with(certs().localhost));

    REQUIRE(p.client.is_open());
    REQUIRE(p.server.is_open());
    CHECK(p.client.protocol_version() == "TLSv1.3");
    CHECK(p.server.protocol_version() == "TLSv1.3");
    CHECK(!p.client.cipher().empty());
    CHECK(p.client.cipher() == p.server.cipher());
    CHECK(p.client.server_name() == "localhost");
    CHECK(p.server.server_name() == "localhost");  // the SNI the client sent
    CHECK(!p.client.session_reused());
    CHECK(!p.server.session_reused());
    CHECK(p.client.alpn_protocol().empty());
    CHECK(p.client.native_handle() != nullptr);
    CHECK(p.client.lower().remote_endpoint() == lis.local_endpoint());
    CHECK(p.server.lower().local_endpoint() == lis.local_endpoint());

    // write_some moves 1..n bytes; read_some gets 1..buffer size.
    const std::size_t sent = co_await p.client.write_some("hello"sv);
    CHECK(sent >= 1);
    CHECK(sent <= 5);
    if (sent < 5) co_await p.client.write_all("hello"sv.substr(sent));
    std::string got;
    char small[3];
    while (got.size() < 5) {
        const std::size_t n = co_await p.server.read_some(small);
        REQUIRE(n >= 1);
        REQUIRE(n <= sizeof small);
        got.append(small, n);
    }
    CHECK(got == "hello");

    // read_exact across many records (100 KiB: 7 records of at most 16 KiB).
    const auto& pat = hop_test::shared_pattern();
    std::vector<char> in(100 * KiB);
    const auto written = co_await p.server.write_all(pat.at(777, in.size()));
    CHECK(written == in.size());
    const auto got_exact = co_await p.client.read_exact(in);
    CHECK(got_exact == in.size());
    CHECK(pat.matches(777, in.data(), in.size()));

    // Empty buffers: 0 at once.
    std::span<char> none;
    const std::size_t r0 = co_await p.client.read_some(none);
    CHECK(r0 == 0);
    const std::size_t w0 = co_await p.client.write_some(std::string_view());
    CHECK(w0 == 0);

    // A clean close both ways: the server reads 0, answers with its own
    // close_notify, the client's shutdown sees it.
    auto server_side = [](tls::stream& s) -> hop::task<std::size_t> {
        char buf[16];
        const std::size_t n = co_await s.read_some(buf);
        const std::size_t again = co_await s.read_some(buf);  // stays at the end
        co_await s.shutdown();
        co_return n + again;
    };
    auto srv = server_side(p.server);
    auto cli = shutdown_returns(p.client, 5s);
    auto r = co_await hop::when_all(std::move(srv), std::move(cli));
    CHECK(std::get<0>(r) == 0);
    CHECK(!p.client.is_open());
    CHECK(!p.server.is_open());
}

hop::task<void> both_ways_at_once(std::size_t total) {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await make_tls_pair(lis, trusting_client(), server_with(certs().localhost));
    // Odd chunk sizes, so records and reads never line up.
    auto cw = write_pattern(p.client, 0, total, 100'003);
    auto sr = read_pattern(p.server, 0, total, 65'537);
    auto sw = write_pattern(p.server, 4242, total, 250'001);
    auto cr = read_pattern(p.client, 4242, total, 7'001);
    auto r = co_await hop::when_all(std::move(cw), std::move(sr), std::move(sw), std::move(cr));
    CHECK_MESSAGE(std::get<1>(r), "client -> server: the bytes are not the ones written");
    CHECK_MESSAGE(std::get<3>(r), "server -> client: the bytes are not the ones written");
    auto s1 = p.client.shutdown(0ms);
    auto s2 = read_to_end(p.server);
    auto e = co_await hop::when_all(std::move(s1), std::move(s2));
    CHECK(std::get<1>(e).empty());
}

}  // namespace

TEST_CASE("tls: hop client and server: handshake facts, read_some/read_exact/write_some/write_all, clean close") {
    certs();
    for_each_backend([](hop::backend b) { run_on(b, basics()); });
}

TEST_CASE("tls: 8 MiB each way at once, a reader and a writer coroutine on each stream, bytes checked") {
    certs();
    for_each_backend([](hop::backend b) { run_on(b, both_ways_at_once(8 * MiB)); });
}

namespace {

hop::task<void> alpn_case(std::vector<std::string> client_offers, std::vector<std::string> server_has,
                          std::string expected) {
    auto cctx = trusting_client();
    if (!client_offers.empty()) cctx.set_alpn(client_offers);
    auto sctx = server_with(certs().localhost);
    if (!server_has.empty()) sctx.set_alpn(server_has);
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await make_tls_pair(lis, cctx, sctx);
    CHECK(p.client.alpn_protocol() == expected);
    CHECK(p.server.alpn_protocol() == expected);
}

}  // namespace

TEST_CASE("tls: ALPN: the server picks its first protocol the client offers; none in common is no ALPN") {
    certs();
    for_each_backend([](hop::backend b) {
        run_on(b, alpn_case({"h2", "http/1.1"}, {"http/1.1", "h2"}, "http/1.1"));
        run_on(b, alpn_case({"http/1.1", "h2"}, {"h2", "http/1.1"}, "h2"));
        run_on(b, alpn_case({"spdy/1"}, {"h2", "http/1.1"}, ""));
        run_on(b, alpn_case({}, {"h2"}, ""));
        run_on(b, alpn_case({"h2"}, {}, ""));
    });
}

namespace {

hop::task<void> sni_case(hop::endpoint where, std::string host, std::string expected_sni) {
    auto lis = hop::tcp_listener::bind(where);
    auto p = co_await make_tls_pair(lis, trusting_client(), server_with(certs().localhost), host);
    CHECK(p.client.server_name() == host);
    CHECK(p.server.server_name() == expected_sni);
    co_await p.client.write_all("x"sv);
    char c = 0;
    co_await p.server.read_exact(std::span<char>(&c, 1));
    CHECK(c == 'x');
}

}  // namespace

TEST_CASE("tls: SNI: the server sees the name the client sent; an IP address is checked against the SAN, sends none") {
    certs();
    for_each_backend([](hop::backend b) {
        run_on(b, sni_case(hop::endpoint::loopback_v4(0), "localhost", "localhost"));
        run_on(b, sni_case(hop::endpoint::loopback_v4(0), "127.0.0.1", ""));
        if (hop_test::ipv6_loopback_available()) {
            run_on(b, sni_case(hop::endpoint::loopback_v6(0), "::1", ""));
            run_on(b, sni_case(hop::endpoint::loopback_v6(0), "localhost", "localhost"));
        } else {
            MESSAGE("IPv6 loopback unavailable: the ::1 case is skipped");
        }
    });
}

namespace {

hop::task<void> versions_case(tls::version cmin, tls::version cmax, tls::version smin, tls::version smax,
                              std::string expected) {
    auto cctx = trusting_client();
    cctx.set_versions(cmin, cmax);
    auto sctx = server_with(certs().localhost);
    sctx.set_versions(smin, smax);
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await make_tls_pair(lis, cctx, sctx);
    CHECK(p.client.protocol_version() == expected);
    CHECK(p.server.protocol_version() == expected);
    co_await p.server.write_all("v"sv);
    char c = 0;
    co_await p.client.read_exact(std::span<char>(&c, 1));
    CHECK(c == 'v');
}

hop::task<void> version_mismatch_hop(tls::version cmin, tls::version cmax, tls::version smin, tls::version smax) {
    auto cctx = trusting_client();
    cctx.set_versions(cmin, cmax);
    auto sctx = server_with(certs().localhost);
    sctx.set_versions(smin, smax);
    auto o = co_await try_handshake(cctx, sctx, "localhost");
    CHECK_MESSAGE(o.client.kind == failure::tls_error, toString(o.client));
    CHECK_MESSAGE(o.server.kind == failure::tls_error, toString(o.server));
    // The side that cannot speak the client's versions says "unsupported
    // protocol"; the other gets its "protocol version" alert.
    CHECK_MESSAGE((contains(o.client.what, "version") || contains(o.client.what, "unsupported protocol")), o.client.what);
    CHECK_MESSAGE((contains(o.server.what, "version") || contains(o.server.what, "unsupported protocol")), o.server.what);
    CHECK_MESSAGE(contains(o.client.what, "hop::tls::stream::connect to localhost (127.0.0.1:"), o.client.what);
    CHECK_MESSAGE(contains(o.server.what, "hop::tls::stream::accept from 127.0.0.1:"), o.server.what);
}

}  // namespace

TEST_CASE("tls: versions: TLS 1.2 and 1.3 as either side limits them; no version in common is a tls::error naming it") {
    certs();
    using tls::version;
    for_each_backend([](hop::backend b) {
        run_on(b, versions_case(version::tls1_2, version::tls1_2, version::tls1_2, version::tls1_3, "TLSv1.2"));
        run_on(b, versions_case(version::tls1_2, version::tls1_3, version::tls1_2, version::tls1_2, "TLSv1.2"));
        run_on(b, versions_case(version::tls1_3, version::tls1_3, version::tls1_2, version::tls1_3, "TLSv1.3"));
        run_on(b, version_mismatch_hop(version::tls1_3, version::tls1_3, version::tls1_2, version::tls1_2));
        run_on(b, version_mismatch_hop(version::tls1_2, version::tls1_2, version::tls1_3, version::tls1_3));
    });
}

namespace {

/// One connection: a round trip (the client reads, so TLS 1.3 tickets are
/// taken in), then a clean close. Returns whether the client resumed.
hop::task<std::pair<bool, bool>> one_session(hop::tcp_listener& lis, tls::context cctx, tls::context sctx) {
    auto p = co_await make_tls_pair(lis, cctx, sctx);
    co_await p.client.write_all("ping"sv);
    std::array<char, 4> buf{};
    co_await p.server.read_exact(buf);
    co_await p.server.write_all("pong"sv);
    co_await p.client.read_exact(buf);
    CHECK(std::string_view(buf.data(), 4) == "pong");
    const bool client_reused = p.client.session_reused();
    const bool server_reused = p.server.session_reused();
    auto answer = [](tls::stream& s) -> hop::task<void> {
        (void)co_await read_to_end(s);  // the client's close_notify
        co_await s.shutdown(0ms);       // ours back: the client's shutdown ends
    };
    auto a = p.client.shutdown(5s);
    auto c = answer(p.server);
    (void)co_await hop::when_all(std::move(a), std::move(c));
    co_return std::make_pair(client_reused, server_reused);
}

hop::task<void> resumption_case(tls::version v, bool tickets, bool resume) {
    auto cctx = trusting_client();
    cctx.set_versions(v, v);
    cctx.set_session_resumption(resume);
    auto sctx = server_with(certs().localhost);
    sctx.set_session_tickets(tickets);
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    const auto first = co_await one_session(lis, cctx, sctx);
    CHECK(!first.first);
    CHECK(!first.second);
    // Twice more: a resumed connection gets a new session for the next one
    // (stateful TLS 1.3 tickets are good for one use only).
    for (int i = 0; i < 2; ++i) {
        const auto again = co_await one_session(lis, cctx, sctx);
        CHECK_MESSAGE(again.first == resume, "connection " << i + 2 << ": client session_reused() is "
                                                           << again.first);
        CHECK_MESSAGE(again.second == resume, "connection " << i + 2 << ": server session_reused() is "
                                                            << again.second);
    }
    // Another client context has no session to offer.
    const auto fresh = co_await one_session(lis, trusting_client(), sctx);
    CHECK(!fresh.first);
}

}  // namespace

TEST_CASE("tls: session resumption: later connects resume (TLS 1.2/1.3, tickets on/off); set_session_resumption(false) never does") {
    certs();
    for_each_backend([](hop::backend b) {
        for (auto v : {tls::version::tls1_2, tls::version::tls1_3}) {
            for (bool tickets : {true, false}) {
                INFO("TLS " << (v == tls::version::tls1_2 ? "1.2" : "1.3") << ", tickets " << tickets);
                run_on(b, resumption_case(v, tickets, true));
                run_on(b, resumption_case(v, tickets, false));
            }
        }
    });
}

// ============================================================================
// Real peers: openssl s_server / s_client, curl, nginx
// ============================================================================

namespace {

/// hop client vs `openssl s_server` in echo mode: the TLS 1.3 ticket trap,
/// data both ways, a clean close (s_server answers close_notify), then a
/// second connection that resumes.
hop::task<void> against_s_server(hop_test::openssl_server& srv, std::string expected_version) {
    auto cctx = trusting_client();
    for (int round = 0; round < 2; ++round) {
        INFO("connection " << round + 1);
        const std::size_t log_mark = srv.output().size();
        auto t = co_await connect_to(srv.endpoint(), cctx, "localhost");
        CHECK(t.protocol_version() == expected_version);
        CHECK(t.session_reused() == (round == 1));

        // openssl #7327: after the handshake a TLS 1.3 server sends session
        // tickets and nothing else. A read must wait for data: not return 0
        // (end of stream), not fail, not spin.
        std::array<char, 64> buf{};
        auto quiet = co_await failure_of(hop::with_timeout(200ms, t.read_some(buf)));
        CHECK_MESSAGE(quiet.kind == failure::timeout, "a read with only session tickets to read ended with "
                                                          << toString(quiet));

        // Data both ways; the cancelled read left the stream usable.
        srv.send("from s_server\n");
        std::array<char, 14> line{};
        co_await t.read_exact(line);
        CHECK(std::string_view(line.data(), line.size()) == "from s_server\n");
        const std::string mine = "from hop, connection " + std::to_string(round + 1) + "\n";
        co_await t.write_all(mine);
        // (named locals: no capturing lambda and co_await in one expression)
        auto printed = [&srv, &mine, log_mark] { return srv.wait_for_output(mine, log_mark); };
        auto printed_f = hop::run_blocking(printed);
        const bool seen = co_await std::move(printed_f);
        CHECK_MESSAGE(seen, "s_server did not print what hop sent; its output:\n" << srv.output());

        // Clean close: s_server answers close_notify and goes back to accept
        // (the next round's connect is served only then).
        CHECK(co_await shutdown_returns(t, 5s));
    }
}

}  // namespace

TEST_CASE("tls: hop client vs openssl s_server (TLS 1.2 / 1.3, tickets on / off): tickets are not the end, data, resumption") {
    const auto& c = certs();
    for (std::string v : {"-tls1_2", "-tls1_3"}) {
        for (bool no_ticket : {false, true}) {
            INFO("s_server " << v << (no_ticket ? " -no_ticket" : ""));
            hop_test::openssl_server srv(s_opts(c.localhost, v, no_ticket));
            for_each_backend([&](hop::backend b) {
                run_on(b, against_s_server(srv, v == "-tls1_2" ? "TLSv1.2" : "TLSv1.3"));
            });
        }
    }
}

namespace {

hop::task<void> against_s_server_www(std::uint16_t port, tls::version v) {
    auto cctx = trusting_client();
    cctx.set_versions(v, v);
    auto t = co_await connect_to(hop::endpoint::loopback_v4(port), cctx, "localhost");
    co_await t.write_all("GET / HTTP/1.0\r\n\r\n"sv);
    // s_server -www answers, then sends close_notify: the end of the stream,
    // not truncation (asio #212).
    auto page = co_await failure_of(read_to_end(t));
    CHECK_MESSAGE(page.kind == failure::none, toString(page));
    // s_server waits (blocking) for our close_notify before it takes the
    // next connection.
    CHECK(co_await shutdown_returns(t, 5s));
    std::string all;
    {
        auto t2 = co_await connect_to(hop::endpoint::loopback_v4(port), cctx, "localhost");
        co_await t2.write_all("GET / HTTP/1.0\r\n\r\n"sv);
        all = co_await read_to_end(t2);
        CHECK(t2.session_reused());
        CHECK(co_await shutdown_returns(t2, 5s));
    }
    CHECK_MESSAGE(contains(all, "HTTP/1.0 200 ok"), all.substr(0, 300));
    CHECK_MESSAGE(contains(all, std::string(t.cipher())), all);
}

}  // namespace

TEST_CASE("tls: hop client vs openssl s_server -www: the page, then close_notify reads as the end (TLS 1.2 and 1.3)") {
    const auto& c = certs();
    for (auto v : {tls::version::tls1_2, tls::version::tls1_3}) {
        hop_test::openssl_server srv(s_opts(c.localhost, "", false, hop_test::s_server_mode::www));
        for_each_backend([&](hop::backend b) { run_on(b, against_s_server_www(srv.port(), v)); });
    }
}

namespace {

hop::task<void> s_server_key_updates(hop_test::openssl_server& srv) {
    auto t = co_await connect_to(srv.endpoint(), trusting_client(), "localhost");
    REQUIRE(t.protocol_version() == "TLSv1.3");
    for (int i = 0; i < 3; ++i) {
        INFO("key update " << i + 1);
        const std::size_t mark = srv.output().size();
        // "K": s_server sends a KeyUpdate that requests ours back. (Typed
        // alone: a command shares no read() with data.)
        srv.send("K\n");
        auto sent_update = [&srv, mark] {
            return srv.wait_for_output(">>> TLS 1.3, Handshake [length 0005], KeyUpdate", mark);
        };
        auto sent_f = hop::run_blocking(sent_update);
        const bool sent = co_await std::move(sent_f);
        REQUIRE_MESSAGE(sent, srv.output().substr(mark));
        const std::string from_server = "after update " + std::to_string(i) + "\n";
        srv.send(from_server);
        std::string got(from_server.size(), '\0');
        co_await t.read_exact(got);
        CHECK(got == from_server);
        const std::string from_hop = "hop after update " + std::to_string(i) + "\n";
        co_await t.write_all(from_hop);
        auto printed = [&srv, &from_hop, mark] { return srv.wait_for_output(from_hop, mark); };
        auto printed_f = hop::run_blocking(printed);
        const bool seen = co_await std::move(printed_f);
        CHECK_MESSAGE(seen, srv.output().substr(mark));
        // -msg: "<<<" is what s_server received: hop's answering KeyUpdate.
        const std::string out = srv.output().substr(mark);
        CHECK_MESSAGE(contains(out, ">>> TLS 1.3, Handshake [length 0005], KeyUpdate"), out);
        CHECK_MESSAGE(contains(out, "<<< TLS 1.3, Handshake [length 0005], KeyUpdate"), out);
    }
    CHECK(co_await shutdown_returns(t, 5s));
}

}  // namespace

TEST_CASE("tls: key updates typed on s_server's console (K) mid-stream: hop answers each, data both ways intact") {
    const auto& c = certs();
    hop_test::openssl_server srv(s_opts(c.localhost, "-tls1_3", false, hop_test::s_server_mode::echo, {"-msg"}));
    for_each_backend([&](hop::backend b) { run_on(b, s_server_key_updates(srv)); });
}

namespace {

/// hop server for one s_client: reads a line, answers "pong: <line>", closes cleanly.
hop::task<std::string> serve_s_client(hop::tcp_listener& lis, tls::context ctx, std::string& sni, std::string& version) {
    auto s = co_await accept_one(lis, ctx);
    sni = std::string(s.server_name());
    version = std::string(s.protocol_version());
    std::string line = co_await read_until(s, "\n");
    co_await s.write_all("pong: " + line);
    co_await s.shutdown();
    co_return line;
}

hop::task<void> against_s_client(std::string version_flag, std::string expected_version) {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    std::string sni, version;
    auto srv = serve_s_client(lis, server_with(certs().localhost), sni, version);
    auto cli = hop_test::run_peer(
        hop_test::s_client_args(lis.local_endpoint().port(), certs().ca, "localhost", version_flag),
        "ping from s_client\n");
    auto r = co_await hop::when_all(std::move(srv), std::move(cli));
    const auto& peer = std::get<1>(r);
    CHECK(std::get<0>(r) == "ping from s_client\n");
    CHECK_MESSAGE(contains(peer.out, "pong: ping from s_client"), peer.describe());
    CHECK_MESSAGE(peer.exited_ok(), peer.describe());
    CHECK(sni == "localhost");
    CHECK(version == expected_version);
}

}  // namespace

TEST_CASE("tls: hop server vs openssl s_client (TLS 1.2 and 1.3): s_client verifies hop's chain and name, SNI, data") {
    certs();
    for_each_backend([](hop::backend b) {
        run_on(b, against_s_client("-tls1_2", "TLSv1.2"));
        run_on(b, against_s_client("-tls1_3", "TLSv1.3"));
        run_on(b, against_s_client("", "TLSv1.3"));
    });
}

namespace {

/// A tiny HTTPS server: `connections` requests, one per connection
/// ("Connection: close"): /small and /big (`big`), 404 otherwise.
hop::task<void> serve_https(hop::tcp_listener& lis, tls::context ctx, int connections, const std::string& big,
                            std::vector<std::string>& alpn) {
    for (int i = 0; i < connections; ++i) {
        auto s = co_await accept_one(lis, ctx);
        alpn.emplace_back(s.alpn_protocol());
        const std::string head = co_await read_until(s, "\r\n\r\n");
        const auto sp1 = head.find(' ');
        const auto sp2 = head.find(' ', sp1 + 1);
        const std::string target = sp1 == std::string::npos ? "" : head.substr(sp1 + 1, sp2 - sp1 - 1);
        std::string body;
        int status = 200;
        if (target == "/small") {
            body = "hello from hop over tls\n";
        } else if (target == "/big") {
            body = big;
        } else {
            status = 404;
            body = "no such thing: " + target + "\n";
        }
        const std::string reply = "HTTP/1.1 " + std::to_string(status) + (status == 200 ? " OK" : " Not Found") +
                                  "\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
                                  std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
        co_await s.write_all(reply);
        co_await s.write_all(body);
        co_await s.shutdown();
    }
}

hop::task<void> against_curl() {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    const auto port = lis.local_endpoint().port();
    auto ctx = server_with(certs().localhost);
    ctx.set_alpn({"http/1.1"});
    const std::string big = pattern_bytes(99, 3 * MiB);
    std::vector<std::string> alpn;

    auto small_args = hop_test::curl_args(port, "/small", certs().ca);
    small_args.insert(small_args.begin() + 1, {"-w", "|verify=%{ssl_verify_result}"});
    auto srv = serve_https(lis, ctx, 2, big, alpn);
    auto get_small = [](std::vector<std::string> a1, std::vector<std::string> a2)
        -> hop::task<std::pair<hop_test::peer_result, hop_test::peer_result>> {
        auto r1 = co_await hop_test::run_peer(std::move(a1));
        auto r2 = co_await hop_test::run_peer(std::move(a2));
        co_return std::make_pair(std::move(r1), std::move(r2));
    };
    auto peers = get_small(small_args, hop_test::curl_args(port, "/big", certs().ca));
    auto r = co_await hop::when_all(std::move(srv), std::move(peers));
    const auto& small = std::get<1>(r).first;
    const auto& large = std::get<1>(r).second;
    CHECK_MESSAGE(small.exited_ok(), small.describe());
    CHECK(small.out == "hello from hop over tls\n|verify=0");
    CHECK_MESSAGE(large.exited_ok(), large.describe());
    CHECK(large.out.size() == big.size());
    CHECK_MESSAGE(large.out == big, "curl got other bytes than hop sent (" << large.out.size() << " bytes)");
    REQUIRE(alpn.size() == 2);
    CHECK(alpn[0] == "http/1.1");
    CHECK(alpn[1] == "http/1.1");
}

}  // namespace

TEST_CASE("tls: hop server vs curl --cacert: https GET of a small and a 3 MiB body, ALPN http/1.1, verified") {
    certs();
    for_each_backend([](hop::backend b) { run_on(b, against_curl()); });
}

namespace {

hop::task<std::string> nginx_get(hop::endpoint ep, tls::context ctx, std::string path, bool* reused = nullptr) {
    auto t = co_await connect_to(ep, ctx, "localhost");
    co_await t.write_all("GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    // nginx ends with close_notify: read_to_end must not see truncation.
    std::string all = co_await read_to_end(t);
    if (reused) *reused = t.session_reused();
    co_return all;
}

hop::task<void> against_nginx(hop::endpoint ep, tls::version v, const std::string& big) {
    auto ctx = trusting_client();
    ctx.set_versions(v, v);
    const std::string expect_proto = v == tls::version::tls1_2 ? "TLSv1.2" : "TLSv1.3";
    bool reused_first = true;
    const std::string sni = co_await nginx_get(ep, ctx, "/sni", &reused_first);
    CHECK_MESSAGE(contains(sni, "HTTP/1.1 200 OK"), sni);
    CHECK_MESSAGE(contains(sni, "\r\n\r\nsni=localhost proto=" + expect_proto + "\n"), sni);
    CHECK(!reused_first);

    bool reused = false;
    const std::string file = co_await nginx_get(ep, ctx, "/big.bin", &reused);
    CHECK(reused);
    const auto body_at = file.find("\r\n\r\n");
    REQUIRE(body_at != std::string::npos);
    CHECK_MESSAGE(contains(file.substr(0, body_at), "Content-Length: " + std::to_string(big.size())),
                  file.substr(0, body_at));
    CHECK(file.size() - body_at - 4 == big.size());
    CHECK_MESSAGE(file.compare(body_at + 4, std::string::npos, big) == 0, "the body is not the file nginx served");
}

}  // namespace

TEST_CASE("tls: hop client vs nginx (ssl): GET over the raw stream, TLS 1.2 and 1.3, resumption, close_notify at the end") {
    const auto& c = certs();
    hop_test::nginx_tls_origin nginx(c.localhost);
    const std::string big = pattern_bytes(5, 2 * MiB);
    {
        std::ofstream f(nginx.root() / "big.bin", std::ios::binary);
        f << big;
        REQUIRE(static_cast<bool>(f));
    }
    for_each_backend([&](hop::backend b) {
        run_on(b, against_nginx(nginx.endpoint(), tls::version::tls1_2, big));
        run_on(b, against_nginx(nginx.endpoint(), tls::version::tls1_3, big));
    });
    const std::string errors = nginx.error_log();
    CHECK_MESSAGE(!contains(errors, "[crit]"), errors);
    CHECK_MESSAGE(!contains(errors, "[alert]"), errors);
}

// ============================================================================
// Verification
// ============================================================================

namespace {

struct bad_cert_case {
    const char* name;
    const hop_test::tls_cert_files* cert;
    std::string host;
    std::vector<std::string> reasons;  // one of them in what()
    std::vector<long> verify_results;  // one of them
};

std::vector<bad_cert_case> bad_cert_cases() {
    const auto& c = certs();
    return {
        {"wrong host", &c.wrong_host, "localhost", {"hostname mismatch"}, {X509_V_ERR_HOSTNAME_MISMATCH}},
        {"wrong IP", &c.wrong_host, "127.0.0.1", {"IP address mismatch"}, {X509_V_ERR_IP_ADDRESS_MISMATCH}},
        {"expired", &c.expired, "localhost", {"certificate has expired"}, {X509_V_ERR_CERT_HAS_EXPIRED}},
        {"self-signed", &c.self_signed, "localhost", {"self-signed certificate", "self signed certificate"},
         {X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT}},
        {"unknown CA", &c.other_ca, "localhost", {"unable to get local issuer certificate"},
         {X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT}},
    };
}

void check_verify_failure(const failure& f, const bad_cert_case& c) {
    INFO("case: " << c.name);
    CHECK_MESSAGE(f.kind == failure::tls_error, toString(f));
    CHECK_MESSAGE(contains(f.what, "certificate verify failed"), f.what);
    bool named = false;
    for (const auto& r : c.reasons) named = named || contains(f.what, r);
    CHECK_MESSAGE(named, "the message does not give the reason: " << f.what);
    CHECK_MESSAGE(std::find(c.verify_results.begin(), c.verify_results.end(), f.verify_result) !=
                      c.verify_results.end(),
                  "verify_result() is " << f.verify_result);
    CHECK_MESSAGE(contains(f.what, "hop::tls::stream::connect to " + c.host + " ("), f.what);
}

hop::task<void> verify_failures_hop_server() {
    for (const auto& c : bad_cert_cases()) {
        auto o = co_await try_handshake(trusting_client(), server_with(*c.cert), c.host);
        check_verify_failure(o.client, c);
        // The client told the server why (an alert) before it closed.
        CHECK_MESSAGE(o.server.kind == failure::tls_error, c.name << ": " << toString(o.server));
        CHECK_MESSAGE(contains(o.server.what, "alert"), c.name << ": " << o.server.what);
        CHECK(!o.client_stream.is_open());
    }
    // The system CAs alone do not know the tests' CA.
    auto o = co_await try_handshake(tls::context::client(), server_with(certs().localhost), "localhost");
    CHECK_MESSAGE(o.client.kind == failure::tls_error, toString(o.client));
    CHECK_MESSAGE(contains(o.client.what, "unable to get local issuer certificate"), o.client.what);
    CHECK(o.client.verify_result == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
}

hop::task<void> verify_failure_s_server(std::uint16_t port, bad_cert_case c) {
    auto f = co_await failure_of(connect_to(hop::endpoint::loopback_v4(port), trusting_client(), c.host));
    check_verify_failure(f, c);
}

hop::task<void> skip_verify_connects(const hop_test::tls_cert_files* cert, std::string host) {
    auto cctx = tls::context::client();  // not even the tests' CA
    cctx.insecure_skip_verify();
    CHECK(!cctx.verifies_peer());
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await make_tls_pair(lis, cctx, server_with(*cert), host);
    co_await p.client.write_all("insecure"sv);
    std::array<char, 8> buf{};
    co_await p.server.read_exact(buf);
    CHECK(std::string_view(buf.data(), buf.size()) == "insecure");
    // OpenSSL still found what was wrong (even the good certificate: this
    // context does not trust the tests' CA); it was not enforced.
    CHECK(SSL_get_verify_result(p.client.native_handle()) != X509_V_OK);
}

}  // namespace

TEST_CASE("tls: verification failures name the reason (wrong host or IP, expired, self-signed, unknown CA); verify_result()") {
    const auto& c = certs();
    for_each_backend([](hop::backend b) { run_on(b, verify_failures_hop_server()); });
    // The same from a peer nobody here wrote.
    for (const auto& bc : bad_cert_cases()) {
        hop_test::openssl_server srv(s_opts(*bc.cert));
        for_each_backend([&](hop::backend b) { run_on(b, verify_failure_s_server(srv.port(), bc)); });
    }
    (void)c;
}

TEST_CASE("tls: insecure_skip_verify() connects to every bad certificate, and with an empty host name") {
    const auto& c = certs();
    for_each_backend([&](hop::backend b) {
        for (const auto* cert : {&c.wrong_host, &c.expired, &c.self_signed, &c.other_ca, &c.localhost}) {
            run_on(b, skip_verify_connects(cert, "localhost"));
        }
        run_on(b, skip_verify_connects(&c.self_signed, ""));
    });
}

namespace {

hop::task<void> version_mismatch_s_server(std::uint16_t port) {
    auto cctx = trusting_client();
    cctx.set_versions(tls::version::tls1_3, tls::version::tls1_3);
    auto f = co_await failure_of(connect_to(hop::endpoint::loopback_v4(port), cctx, "localhost"));
    CHECK_MESSAGE(f.kind == failure::tls_error, toString(f));
    CHECK_MESSAGE(contains(f.what, "version"), f.what);
    CHECK_MESSAGE(contains(f.what, "hop::tls::stream::connect to localhost (127.0.0.1:" + std::to_string(port) + ")"),
                  f.what);
}

}  // namespace

TEST_CASE("tls: a protocol version mismatch (client TLS 1.3 only, s_server -tls1_2) is a tls::error naming the version") {
    const auto& c = certs();
    hop_test::openssl_server srv(s_opts(c.localhost, "-tls1_2"));
    for_each_backend([&](hop::backend b) { run_on(b, version_mismatch_s_server(srv.port())); });
}

// ============================================================================
// Clean close, truncation, shutdown
// ============================================================================

namespace {

hop::task<void> close_notify_is_the_end() {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await make_tls_pair(lis, trusting_client(), server_with(certs().localhost));
    co_await p.server.write_all("bye"sv);
    co_await p.server.shutdown(0ms);  // close_notify, then the socket closes
    CHECK(!p.server.is_open());
    std::array<char, 3> bye{};
    co_await p.client.read_exact(bye);
    CHECK(std::string_view(bye.data(), 3) == "bye");
    char buf[8];
    const std::size_t n1 = co_await p.client.read_some(buf);
    const std::size_t n2 = co_await p.client.read_some(buf);
    CHECK(n1 == 0);
    CHECK(n2 == 0);
    auto exact = co_await failure_of(p.client.read_exact(buf));
    CHECK_MESSAGE(exact.kind == failure::end_of_stream, toString(exact));
    // The peer has gone: our shutdown ends quietly, and at once (its
    // close_notify is already in).
    CHECK(co_await shutdown_returns(p.client, 5s));
}

hop::task<void> fin_without_close_notify_is_truncation(bool after_data) {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await make_tls_pair(lis, trusting_client(), server_with(certs().localhost));
    if (after_data) co_await p.server.write_all("partial"sv);
    p.server.close();  // no close_notify
    CHECK(!p.server.is_open());
    if (after_data) {
        std::array<char, 7> got{};
        co_await p.client.read_exact(got);
        CHECK(std::string_view(got.data(), 7) == "partial");
    }
    char buf[8];
    auto f = co_await failure_of(p.client.read_some(buf));
    CHECK_MESSAGE(f.kind == failure::truncated, toString(f));
    CHECK_MESSAGE(contains(f.what, "close_notify"), f.what);
    CHECK_MESSAGE(contains(f.what, "hop::tls::stream::read_some from localhost (127.0.0.1:"), f.what);
    auto g = co_await failure_of(p.client.read_exact(buf));
    CHECK_MESSAGE(g.kind == failure::truncated, toString(g));
    // A truncated session is not offered again... and the stream can still
    // be shut down (quietly: the peer is gone).
    CHECK(co_await shutdown_returns(p.client, 200ms));
}

hop::task<void> reset_is_a_system_error() {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await make_tls_pair(lis, trusting_client(), server_with(certs().localhost));
    linger lg{};
    lg.l_onoff = 1;
    lg.l_linger = 0;
    REQUIRE(::setsockopt(p.server.lower().native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    p.server.close();  // RST
    char buf[8];
    auto f = co_await failure_of(p.client.read_some(buf));
    CHECK_MESSAGE((f.kind == failure::system && f.code == ECONNRESET), toString(f));
}

}  // namespace

TEST_CASE("tls: close_notify reads as 0 (asio #212); a FIN without it is truncated_error; a reset stays std::system_error") {
    certs();
    for_each_backend([](hop::backend b) {
        run_on(b, close_notify_is_the_end());
        run_on(b, fin_without_close_notify_is_truncation(false));
        run_on(b, fin_without_close_notify_is_truncation(true));
        run_on(b, reset_is_a_system_error());
    });
}

namespace {

hop::task<void> s_server_quits(hop_test::openssl_server& srv, bool kill) {
    auto t = co_await connect_to(srv.endpoint(), trusting_client(), "localhost");
    srv.send("last words\n");
    std::array<char, 11> got{};
    co_await t.read_exact(got);
    CHECK(std::string_view(got.data(), got.size()) == "last words\n");
    if (kill) {
        auto kill_it = [&srv] { srv.process().kill_now(); };
        auto killed = hop::run_blocking(kill_it);
        co_await std::move(killed);
    } else {
        srv.send("Q\n");  // s_server closes the socket, then shuts TLS down: too late for close_notify
    }
    char buf[16];
    auto f = co_await failure_of(t.read_some(buf));
    CHECK_MESSAGE(f.kind == failure::truncated, toString(f));
}

}  // namespace

TEST_CASE("tls: s_server quitting (Q) or killed mid-connection: truncated_error, not the end of the stream") {
    const auto& c = certs();
    for (bool kill : {false, true}) {
        for_each_backend([&](hop::backend b) {
            INFO((kill ? "killed" : "Q"));
            hop_test::openssl_server srv(s_opts(c.localhost));
            run_on(b, s_server_quits(srv, kill));
        });
    }
}

namespace {

/// The server stream stays open and never reads: its close_notify never comes.
hop::task<void> shutdown_against_a_silent_peer() {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await make_tls_pair(lis, trusting_client(), server_with(certs().localhost));
    co_await p.client.write_all("some data first"sv);
    CHECK(co_await shutdown_returns(p.client, 200ms));
    CHECK(!p.client.is_open());
    // What the server gets: the data, then close_notify (the end).
    std::array<char, 15> got{};
    co_await p.server.read_exact(got);
    char buf[8];
    const std::size_t n = co_await p.server.read_some(buf);
    CHECK(n == 0);

    // 0 ms: close_notify and close at once.
    auto q = co_await make_tls_pair(lis, trusting_client(), server_with(certs().localhost));
    CHECK(co_await shutdown_returns(q.client, 0ms));
    const std::size_t m = co_await q.server.read_some(buf);
    CHECK(m == 0);

    // A second shutdown, a shutdown of an empty stream: nothing to do.
    CHECK(co_await shutdown_returns(q.client, 200ms));
    tls::stream empty;
    CHECK(co_await shutdown_returns(empty, 200ms));
    auto neg = co_await failure_of(q.server.shutdown(-1ms));
    CHECK_MESSAGE(neg.kind == failure::invalid, toString(neg));
    CHECK_MESSAGE(contains(neg.what, "-1 ms"), neg.what);
}

/// A peer that stopped reading, its window closed and our send buffer
/// full: close_notify cannot even be sent. shutdown must still come back
/// within its bound (trojan #77: SSL_shutdown blocking forever).
hop::task<void> shutdown_against_a_peer_that_does_not_read() {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await make_tls_pair(lis, trusting_client(), server_with(certs().localhost));
    const std::string mib = pattern_bytes(0, MiB);
    bool blocked = false;
    for (int i = 0; i < 256 && !blocked; ++i) {  // at most 256 MiB: far past any socket buffer
        auto f = co_await failure_of(hop::with_timeout(200ms, p.client.write_all(mib)));
        if (f.kind == failure::timeout) blocked = true;
        else REQUIRE_MESSAGE(f.kind == failure::none, toString(f));
    }
    REQUIRE_MESSAGE(blocked, "the writes never blocked: the peer's buffers took 256 MiB");
    // The kernel still takes a few bytes while the buffer is not quite full
    // (a write that waits for room wants a third of it free), and under load
    // a timed-out write may not have been blocked at all: fill the buffer to
    // the last byte, below TLS, until the kernel itself says EAGAIN (the
    // peer will never read these bytes anyway).
    const int fd = p.client.lower().native_handle();
    for (std::size_t chunk : {std::size_t(64 * KiB), std::size_t(4 * KiB), std::size_t(1)}) {
        for (int i = 0; i < 1'000'000; ++i) {
            const auto n = ::send(fd, mib.data(), chunk, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            REQUIRE_MESSAGE(n > 0, "send: " << std::string(std::strerror(errno)));
        }
    }
    CHECK(co_await shutdown_returns(p.client, 200ms));
    CHECK(!p.client.is_open());
}

/// shutdown(0ms) right after a write, by a side that never read: the TLS
/// 1.3 session tickets sit unread in its socket. The peer must still get
/// every byte, then close_notify. (Closing a socket with unread bytes makes
/// the kernel send a reset and drop what it had not sent yet.)
hop::task<void> shutdown_now_after_writing(tls::version v) {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    // The server takes little at a time (a small window), so most of what
    // the client writes waits in the client's send buffer (a large one).
    const int small = 4096;
    REQUIRE(::setsockopt(lis.native_handle(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    auto cctx = trusting_client();
    cctx.set_versions(v, v);
    auto p = co_await make_tls_pair(lis, cctx, server_with(certs().localhost));
    const int large = 1 << 20;
    REQUIRE(::setsockopt(p.client.lower().native_handle(), SOL_SOCKET, SO_SNDBUF, &large, sizeof large) == 0);
    int sndbuf = 0;
    socklen_t len = sizeof sndbuf;
    REQUIRE(::getsockopt(p.client.lower().native_handle(), SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) == 0);
    const std::size_t size = std::min<std::size_t>(static_cast<std::size_t>(sndbuf) / 4, 256 * KiB);
    REQUIRE(size > 32 * KiB);
    const std::string data = pattern_bytes(0, size);
    auto w = co_await failure_of(hop::with_timeout(hop_test::scaled(10s), p.client.write_all(data)));
    REQUIRE_MESSAGE(w.kind == failure::none, "the write did not fit the send buffer: " << toString(w));
    CHECK(co_await shutdown_returns(p.client, 0ms));
    auto got = co_await failure_of(read_to_end(p.server));
    CHECK_MESSAGE(got.kind == failure::none, "after the client's shutdown(0ms) the server's read ended with "
                                                 << toString(got));
}

}  // namespace

TEST_CASE("tls: shutdown() against a peer that never answers close_notify returns by its bound (trojan #77, asio #164)") {
    certs();
    for_each_backend([](hop::backend b) { run_on(b, shutdown_against_a_silent_peer()); });
}

TEST_CASE("tls: shutdown() against a peer that stopped reading (its window closed, our buffer full) returns by its bound") {
    certs();
    for_each_backend([](hop::backend b) { run_on(b, shutdown_against_a_peer_that_does_not_read()); });
}

TEST_CASE("tls: shutdown(0ms) by a side that wrote but never read (TLS 1.3 tickets unread): the peer gets every byte") {
    certs();
    for_each_backend([](hop::backend b) {
        run_on(b, shutdown_now_after_writing(tls::version::tls1_2));
        run_on(b, shutdown_now_after_writing(tls::version::tls1_3));
    });
}

// ============================================================================
// Key updates, post-handshake records
// ============================================================================

namespace {

struct key_update_counter {
    int sent = 0;
    int received = 0;
};

void count_key_updates(int write_p, int, int content_type, const void* buf, std::size_t len, SSL*, void* arg) {
    if (content_type != SSL3_RT_HANDSHAKE || len < 1) return;
    if (static_cast<const unsigned char*>(buf)[0] != SSL3_MT_KEY_UPDATE) return;
    auto* c = static_cast<key_update_counter*>(arg);
    if (write_p) {
        ++c->sent;
    } else {
        ++c->received;
    }
}

/// Writes `total` pattern bytes; after every `every`-th chunk (but the last)
/// asks OpenSSL for a key update (`type`). Returns how many it asked for.
hop::task<int> write_with_key_updates(tls::stream& s, std::uint64_t offset, std::uint64_t total, std::size_t chunk,
                                      int every, int type) {
    const auto& pat = hop_test::shared_pattern();
    int updates = 0;
    int i = 0;
    for (std::uint64_t done = 0; done < total; ++i) {
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, total - done));
        co_await s.write_all(pat.at(offset + done, n));
        done += n;
        if (i % every == every - 1 && done < total) {
            REQUIRE(SSL_key_update(s.native_handle(), type) == 1);
            ++updates;
        }
    }
    co_return updates;
}

hop::task<void> key_updates_mid_stream(std::size_t total) {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await make_tls_pair(lis, trusting_client(), server_with(certs().localhost));
    REQUIRE(p.server.protocol_version() == "TLSv1.3");
    key_update_counter at_server, at_client;
    SSL_set_msg_callback(p.server.native_handle(), count_key_updates);
    SSL_set_msg_callback_arg(p.server.native_handle(), &at_server);
    SSL_set_msg_callback(p.client.native_handle(), count_key_updates);
    SSL_set_msg_callback_arg(p.client.native_handle(), &at_client);

    // openssl #13729: the server asks for key updates between its writes
    // while its reader is mid-record; the client updates on its own too.
    auto sw = write_with_key_updates(p.server, 1000, total, 96 * KiB + 3, 4, SSL_KEY_UPDATE_REQUESTED);
    auto sr = read_pattern(p.server, 0, total, 33'333);
    auto cw = write_with_key_updates(p.client, 0, total, 128 * KiB + 11, 7, SSL_KEY_UPDATE_NOT_REQUESTED);
    auto cr = read_pattern(p.client, 1000, total, 50'000);
    auto r = co_await hop::when_all(std::move(sw), std::move(sr), std::move(cw), std::move(cr));
    const int server_asked = std::get<0>(r);
    const int client_own = std::get<2>(r);
    CHECK_MESSAGE(std::get<1>(r), "client -> server: the bytes are not the ones written");
    CHECK_MESSAGE(std::get<3>(r), "server -> client: the bytes are not the ones written");
    REQUIRE(server_asked > 0);
    REQUIRE(client_own > 0);

    // A last exchange, so every KeyUpdate sent is read on the other side.
    co_await p.server.write_all("fin"sv);
    std::array<char, 3> fin{};
    co_await p.client.read_exact(fin);
    co_await p.client.write_all("ack"sv);
    co_await p.server.read_exact(fin);
    CHECK(std::string_view(fin.data(), 3) == "ack");

    CHECK(at_server.sent == server_asked);
    CHECK(at_client.received == server_asked);
    // The client answered every request and sent its own; a request that
    // arrives while one of its own is still pending is answered by that one
    // (OpenSSL keeps one pending KeyUpdate; RFC 8446 4.6.3 allows it), so
    // the two may share a message.
    CHECK(at_server.received == at_client.sent);
    CHECK(at_client.sent >= std::max(server_asked, client_own));
    CHECK(at_client.sent <= server_asked + client_own);
}

/// openssl #11211: the client writes 4 MiB at once after the handshake,
/// before it ever reads, while the server sends tickets, key updates and
/// data; then it reads everything the server sent.
hop::task<void> write_while_the_peer_sends_post_handshake_records(tls::version v) {
    auto cctx = trusting_client();
    cctx.set_versions(v, v);
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await make_tls_pair(lis, cctx, server_with(certs().localhost));
    const std::size_t total = 4 * MiB;
    auto server_side = [](tls::stream& s, std::size_t n, bool tls13) -> hop::task<bool> {
        // Small records, with a key update before each when TLS 1.3.
        for (int i = 0; i < 16; ++i) {
            if (tls13) REQUIRE(SSL_key_update(s.native_handle(), SSL_KEY_UPDATE_REQUESTED) == 1);
            co_await s.write_all(hop_test::shared_pattern().at(static_cast<std::uint64_t>(i) * 100, 100));
        }
        co_return co_await read_pattern(s, 0, n, 64 * KiB);
    };
    auto srv = server_side(p.server, total, v == tls::version::tls1_3);
    auto cw = write_pattern(p.client, 0, total, total);
    auto r = co_await hop::when_all(std::move(srv), std::move(cw));
    CHECK(std::get<0>(r));
    std::vector<char> got(1600);
    co_await p.client.read_exact(got);
    for (int i = 0; i < 16; ++i) {
        CHECK(hop_test::shared_pattern().matches(static_cast<std::uint64_t>(i) * 100, got.data() + i * 100, 100));
    }
    co_await p.client.write_all("after"sv);
    std::array<char, 5> after{};
    co_await p.server.read_exact(after);
    CHECK(std::string_view(after.data(), 5) == "after");
}

}  // namespace

TEST_CASE("tls: key updates requested between writes while both sides stream 8 MiB: data intact, each one answered") {
    certs();
    for_each_backend([](hop::backend b) { run_on(b, key_updates_mid_stream(8 * MiB)); });
}

TEST_CASE("tls: write_all while the peer sends post-handshake records (tickets, key updates, data) (openssl #11211)") {
    certs();
    for_each_backend([](hop::backend b) {
        run_on(b, write_while_the_peer_sends_post_handshake_records(tls::version::tls1_3));
        run_on(b, write_while_the_peer_sends_post_handshake_records(tls::version::tls1_2));
    });
}

// ============================================================================
// Cancellation
// ============================================================================

namespace {

/// connect() to a peer that accepts and never answers: cancelled by
/// with_timeout and by a stop request. The peer sees a ClientHello, then
/// the end (the socket closed, nothing left behind).
hop::task<void> cancel_connect_mid_handshake() {
    auto& loop = *hop::current_loop();
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    {
        auto tcp = co_await hop::tcp_stream::connect(lis.local_endpoint());
        auto silent = co_await lis.accept();
        auto f = co_await failure_of(hop::with_timeout(200ms, tls::stream::connect(trusting_client(), std::move(tcp), "localhost")));
        CHECK_MESSAGE(f.kind == failure::timeout, toString(f));
        const std::string hello = co_await hop_test::read_until_close(silent);
        REQUIRE(!hello.empty());
        CHECK(static_cast<unsigned char>(hello[0]) == 0x16);  // a handshake record
    }
    {
        auto tcp = co_await hop::tcp_stream::connect(lis.local_endpoint());
        auto silent = co_await lis.accept();
        auto fut = loop.spawn(tls::stream::connect(trusting_client(), std::move(tcp), "localhost"));
        char first = 0;
        co_await silent.read_exact(std::span<char>(&first, 1));  // the ClientHello is on its way: mid-handshake
        CHECK(fut.cancel());
        auto f = co_await failure_of(await_future(std::move(fut)));
        CHECK_MESSAGE(f.kind == failure::cancelled, toString(f));
        const std::string rest = co_await hop_test::read_until_close(silent);
        CHECK(!rest.empty());
    }
}

/// accept() of a client that sends nothing, or half a ClientHello record.
hop::task<void> cancel_accept_mid_handshake() {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    for (bool half : {false, true}) {
        INFO("client sends " << (half ? "half a record" : "nothing"));
        auto client = co_await hop::tcp_stream::connect(lis.local_endpoint());
        if (half) co_await client.write_all("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"sv);
        auto f = co_await failure_of(hop::with_timeout(200ms, accept_one(lis, server_with(certs().localhost))));
        CHECK_MESSAGE(f.kind == failure::timeout, toString(f));
        char buf[64];
        const std::size_t n = co_await client.read_some(buf);  // the server's socket is closed
        CHECK(n == 0);
    }
}

// A proxy between a TLS client and a TLS server that can cut a chunk: pass
// `pass` bytes, hold the rest until released.
struct gate {
    bool armed = false;
    std::size_t pass = 0;
    hop::event holding;  // set once a chunk was cut
    hop::event release;

    void arm(std::size_t bytes) {
        holding.reset();
        release.reset();
        pass = bytes;
        armed = true;
    }
};

hop::task<void> pump(hop::tcp_stream& from, hop::tcp_stream& to, gate* g) {
    std::vector<char> buf(64 * KiB);
    try {
        for (;;) {
            const std::size_t n = co_await from.read_some(buf);
            if (n == 0) break;
            std::string_view chunk(buf.data(), n);
            if (g != nullptr && g->armed) {
                g->armed = false;
                const std::size_t first = std::min(g->pass, n);
                co_await to.write_all(chunk.substr(0, first));
                chunk.remove_prefix(first);
                g->holding.set();
                co_await g->release.wait();
            }
            if (!chunk.empty()) co_await to.write_all(chunk);
        }
    } catch (const std::system_error&) {
        // an end went away (a reset): the proxy stops that way
    }
    // Pass the end on, however it came.
    try {
        to.shutdown_write();
    } catch (const std::system_error&) {
    }
}

hop::task<void> mid_record_body(hop::tcp_stream client_tcp, hop::tcp_stream server_tcp, gate& g) {
    auto& loop = *hop::current_loop();
    auto s = tls::stream::accept(server_with(certs().localhost), std::move(server_tcp));
    auto c = tls::stream::connect(trusting_client(), std::move(client_tcp), "localhost");
    auto hs = co_await hop::when_all(std::move(s), std::move(c));
    auto server = std::move(std::get<0>(hs));
    auto client = std::move(std::get<1>(hs));
    // A first exchange: what the server sent after its handshake (tickets)
    // has passed the proxy.
    co_await server.write_all("ping"sv);
    std::array<char, 4> ping{};
    co_await client.read_exact(ping);

    const auto& pat = hop_test::shared_pattern();
    std::vector<char> got(1000);

    // 1. with_timeout: the read sees half a record, then times out.
    g.arm(100);
    co_await server.write_all(pat.at(0, 1000));
    co_await g.holding.wait();
    auto f1 = co_await failure_of(hop::with_timeout(200ms, client.read_some(got)));
    CHECK_MESSAGE(f1.kind == failure::timeout, toString(f1));
    g.release.set();
    co_await client.read_exact(got);
    CHECK_MESSAGE(pat.matches(0, got.data(), got.size()), "the record read after the cancelled read is not intact");

    // 2. a stop request on a read spawned on the loop.
    g.arm(100);
    co_await server.write_all(pat.at(1000, 1000));
    co_await g.holding.wait();
    auto fut = loop.spawn(read_some_into(client, got));
    co_await yield_times(loop, 4);  // it has run to its first suspension
    CHECK(fut.cancel());
    auto f2 = co_await failure_of(await_future(std::move(fut)));
    CHECK_MESSAGE(f2.kind == failure::cancelled, toString(f2));
    g.release.set();
    co_await client.read_exact(got);
    CHECK_MESSAGE(pat.matches(1000, got.data(), got.size()), "the record read after the stop request is not intact");

    // And the other way still works.
    co_await client.write_all("still usable"sv);
    std::array<char, 12> back{};
    co_await server.read_exact(back);
    CHECK(std::string_view(back.data(), back.size()) == "still usable");

    // 3. the stream destroyed while OpenSSL holds half a record (LSan
    // checks nothing leaks); the server then sees truncation.
    g.arm(100);
    co_await server.write_all(pat.at(2000, 1000));
    co_await g.holding.wait();
    auto f3 = co_await failure_of(hop::with_timeout(100ms, client.read_some(got)));
    CHECK_MESSAGE(f3.kind == failure::timeout, toString(f3));
    client = tls::stream();
    g.release.set();
    auto f4 = co_await failure_of(server.read_some(got));
    CHECK_MESSAGE(f4.kind == failure::truncated, toString(f4));
}

hop::task<void> cancel_read_mid_record() {
    auto p1 = co_await hop_test::make_pair();  // the client's leg
    auto p2 = co_await hop_test::make_pair();  // the server's leg
    gate g;
    auto up = pump(p1.server, p2.client, nullptr);
    auto down = pump(p2.client, p1.server, &g);
    auto body = mid_record_body(std::move(p1.client), std::move(p2.server), g);
    (void)co_await hop::when_all(std::move(up), std::move(down), std::move(body));
}

/// A write_all cancelled while the peer does not read: the peer later reads
/// a prefix of what was written and then what comes after, intact.
hop::task<void> cancel_write_then_continue() {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await make_tls_pair(lis, trusting_client(), server_with(certs().localhost));
    const auto& pat = hop_test::shared_pattern();
    const std::string big = pattern_bytes(0, 64 * MiB);
    auto f = co_await failure_of(hop::with_timeout(300ms, p.client.write_all(big)));
    REQUIRE_MESSAGE(f.kind == failure::timeout, "64 MiB went through a peer that does not read: " << toString(f));
    // Now the server reads everything up to a marker.
    constexpr std::string_view marker = "<<marker after the cancelled write>>";
    auto finish = [](tls::stream& s, std::string_view m) -> hop::task<void> {
        co_await s.write_all(m);
        co_await s.shutdown(5s);  // reads (drops) the tickets and the server's close_notify
    };
    auto read_all = [](tls::stream& s) -> hop::task<std::string> {
        std::string all = co_await read_to_end(s);
        co_await s.shutdown(0ms);
        co_return all;
    };
    auto w = finish(p.client, marker);
    auto r = read_all(p.server);
    auto both = co_await hop::when_all(std::move(w), std::move(r));
    const std::string& all = std::get<1>(both);
    REQUIRE(all.size() >= marker.size());
    const std::size_t prefix = all.size() - marker.size();
    CHECK(all.substr(prefix) == marker);
    CHECK(prefix > 0);
    CHECK(prefix < big.size());
    CHECK_MESSAGE(pat.matches(0, all.data(), prefix), "the " << prefix << " bytes before the marker are not the data");
}

}  // namespace

TEST_CASE("tls: cancelling connect mid-handshake (a peer that never answers): timeout and stop request, nothing left open") {
    certs();
    for_each_backend([](hop::backend b) {
        hop_test::fd_leak_check fds;
        run_on(b, cancel_connect_mid_handshake());
    });
}

TEST_CASE("tls: cancelling accept mid-handshake (a client that sends nothing or half a record)") {
    certs();
    for_each_backend([](hop::backend b) {
        hop_test::fd_leak_check fds;
        run_on(b, cancel_accept_mid_handshake());
    });
}

TEST_CASE("tls: a read cancelled mid-record (timeout, stop request): the record arrives intact later; destroying the stream then leaks nothing") {
    certs();
    for_each_backend([](hop::backend b) {
        hop_test::fd_leak_check fds;
        run_on(b, cancel_read_mid_record());
    });
}

TEST_CASE("tls: a write_all cancelled while the peer does not read leaves the record stream whole") {
    certs();
    for_each_backend([](hop::backend b) { run_on(b, cancel_write_then_continue()); });
}

// ============================================================================
// Bad input
// ============================================================================

namespace {

hop::task<void> bad_stream_arguments() {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto sctx = server_with(certs().localhost);
    auto cctx = trusting_client();

    auto expect_invalid = [](const failure& f, std::string_view part) {
        CHECK_MESSAGE(f.kind == failure::invalid, toString(f));
        CHECK_MESSAGE(contains(f.what, part), f.what);
    };
    {
        auto tcp = co_await hop::tcp_stream::connect(lis.local_endpoint());
        auto peer = co_await lis.accept();
        auto f = co_await failure_of(tls::stream::connect(sctx, std::move(tcp), "localhost"));
        expect_invalid(f, "server context");
        // The stream given was closed: the peer sees the end.
        char c;
        const std::size_t n = co_await peer.read_some(std::span<char>(&c, 1));
        CHECK(n == 0);
    }
    {
        auto tcp = co_await hop::tcp_stream::connect(lis.local_endpoint());
        auto peer = co_await lis.accept();
        auto f = co_await failure_of(tls::stream::accept(cctx, std::move(peer)));
        expect_invalid(f, "client context");
    }
    {
        auto f = co_await failure_of(tls::stream::connect(cctx, hop::tcp_stream(), "localhost"));
        expect_invalid(f, "not open");
        auto g = co_await failure_of(tls::stream::accept(sctx, hop::tcp_stream()));
        expect_invalid(g, "not open");
        auto tcp = co_await hop::tcp_stream::connect(lis.local_endpoint());
        auto peer = co_await lis.accept();
        tcp.close();
        auto h = co_await failure_of(tls::stream::connect(cctx, std::move(tcp), "localhost"));
        expect_invalid(h, "not open");
    }
    for (std::string host : {std::string("bad host"), std::string("tab\there"), std::string("a/b"),
                             std::string("nul\0inside", 10), std::string("ctl\x01byte"), std::string("del\x7f"),
                             std::string(300, 'h')}) {
        auto tcp = co_await hop::tcp_stream::connect(lis.local_endpoint());
        auto peer = co_await lis.accept();
        auto f = co_await failure_of(tls::stream::connect(cctx, std::move(tcp), host));
        expect_invalid(f, "is not a host name");
        expect_invalid(f, host.substr(0, 3));
        if (host.size() == 10) expect_invalid(f, "'nul\\x00inside'");  // a NUL would cut what() short
    }
    {
        auto tcp = co_await hop::tcp_stream::connect(lis.local_endpoint());
        auto peer = co_await lis.accept();
        auto f = co_await failure_of(tls::stream::connect(cctx, std::move(tcp), ""));
        expect_invalid(f, "host name is empty");
    }
    {
        // Not TLS on the other end: an HTTP server's answer to the ClientHello.
        auto tcp = co_await hop::tcp_stream::connect(lis.local_endpoint());
        auto peer = co_await lis.accept();
        auto plain = [](hop::tcp_stream& s) -> hop::task<void> {
            char buf[512];
            (void)co_await s.read_some(buf);
            co_await s.write_all("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"sv);
            s.close();
        };
        auto srv = plain(peer);
        auto cli = failure_of(tls::stream::connect(cctx, std::move(tcp), "localhost"));
        auto r = co_await hop::when_all(std::move(srv), std::move(cli));
        const failure& f = std::get<1>(r);
        CHECK_MESSAGE(f.kind == failure::tls_error, toString(f));
        CHECK_MESSAGE(contains(f.what, "hop::tls::stream::connect to localhost (127.0.0.1:"), f.what);
    }
    {
        // A server that reads the ClientHello and hangs up; a client that
        // sends half a ClientHello and hangs up.
        auto tcp = co_await hop::tcp_stream::connect(lis.local_endpoint());
        auto peer = co_await lis.accept();
        auto hang_up = [](hop::tcp_stream& s) -> hop::task<void> {
            char buf[512];
            (void)co_await s.read_some(buf);
            s.close();
        };
        auto srv = hang_up(peer);
        auto cli = failure_of(tls::stream::connect(cctx, std::move(tcp), "localhost"));
        auto r = co_await hop::when_all(std::move(srv), std::move(cli));
        const failure& f = std::get<1>(r);
        CHECK_MESSAGE(f.kind == failure::tls_error, toString(f));
        CHECK_MESSAGE(contains(f.what, "closed the connection during the handshake"), f.what);

        auto client = co_await hop::tcp_stream::connect(lis.local_endpoint());
        auto server_tcp = co_await lis.accept();
        co_await client.write_all("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"sv);
        client.close();
        auto g = co_await failure_of(tls::stream::accept(sctx, std::move(server_tcp)));
        CHECK_MESSAGE(g.kind == failure::tls_error, toString(g));
        CHECK_MESSAGE(contains(g.what, "hop::tls::stream::accept from 127.0.0.1:"), g.what);
        CHECK_MESSAGE(contains(g.what, "closed the connection during the handshake"), g.what);
    }
}

hop::task<void> default_stream_use() {
    tls::stream s;
    char buf[4];
    {
        auto a = co_await failure_of(s.read_some(buf));
        auto b = co_await failure_of(s.read_exact(buf));
        auto c = co_await failure_of(s.write_some("x"sv));
        auto d = co_await failure_of(s.write_all("x"sv));
        for (const auto* x : {&a, &b, &c, &d}) {
            CHECK_MESSAGE(x->kind == failure::logic, toString(*x));
            CHECK_MESSAGE(contains(x->what, "empty"), x->what);
        }
    }
    CHECK(!s.is_open());
    CHECK(s.native_handle() == nullptr);
    CHECK(s.protocol_version().empty());
    CHECK(s.alpn_protocol().empty());
    CHECK(s.cipher().empty());
    CHECK(s.server_name().empty());
    CHECK(!s.session_reused());
    auto l = failure_of_call([&] { (void)s.lower(); });
    CHECK_MESSAGE(l.kind == failure::logic, toString(l));
    s.close();
    co_await s.shutdown();

    // Moved from, and closed.
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await make_tls_pair(lis, trusting_client(), server_with(certs().localhost));
    tls::stream moved = std::move(p.client);
    auto e = co_await failure_of(p.client.read_some(buf));  // NOLINT(bugprone-use-after-move): on purpose
    CHECK_MESSAGE(e.kind == failure::logic, toString(e));
    moved.close();
    CHECK(!moved.is_open());
    auto g = co_await failure_of(moved.write_all("x"sv));
    CHECK_MESSAGE(g.kind == failure::logic, toString(g));
    CHECK_MESSAGE(contains(g.what, "closed"), g.what);
    auto h = co_await failure_of(moved.read_some(buf));
    CHECK_MESSAGE(h.kind == failure::logic, toString(h));
}

}  // namespace

TEST_CASE("tls: bad arguments to connect/accept: wrong context kind, closed tcp_stream, empty or malformed host; plain-text and hanging-up peers") {
    certs();
    for_each_backend([](hop::backend b) {
        hop_test::fd_leak_check fds;
        run_on(b, bad_stream_arguments());
    });
}

TEST_CASE("tls: a default-made, moved-from or closed stream: reads and writes throw std::logic_error; accessors are empty") {
    certs();
    for_each_backend([](hop::backend b) { run_on(b, default_stream_use()); });
}

TEST_CASE("tls: context bad input: missing files, a key that does not match, a bad CA file, ALPN names, versions; each names the value") {
    const auto& c = certs();
    auto check = [](const failure& f, failure::kind_t kind, std::vector<std::string> parts) {
        CHECK_MESSAGE(f.kind == kind, toString(f));
        for (const auto& p : parts) CHECK_MESSAGE(contains(f.what, p), "'" << p << "' is not in: " << f.what);
    };
    const std::string missing = (c.dir / "no-such-file.pem").string();

    check(failure_of_call([&] { (void)tls::context::server(missing, c.localhost.key); }), failure::tls_error,
          {missing, "hop::tls::context::server", "certificate"});
    check(failure_of_call([&] { (void)tls::context::server(c.localhost.cert, missing); }), failure::tls_error,
          {missing, "private key"});
    // OpenSSL already refuses a key that does not match the certificate
    // while loading it ("key values mismatch").
    check(failure_of_call([&] { (void)tls::context::server(c.localhost.cert, c.wrong_host.key); }), failure::tls_error,
          {"mismatch", c.wrong_host.key});
    check(failure_of_call([&] { (void)tls::context::server(c.localhost.key, c.localhost.key); }), failure::tls_error,
          {c.localhost.key});
    check(failure_of_call([&] { (void)tls::context::server("", c.localhost.key); }), failure::invalid, {"empty"});
    check(failure_of_call([&] { (void)tls::context::server(c.localhost.cert, ""); }), failure::invalid, {"empty"});

    auto client = tls::context::client();
    CHECK(client.verifies_peer());
    CHECK(!client.is_server());
    check(failure_of_call([&] { client.load_ca_file(missing); }), failure::tls_error, {missing, "load_ca_file"});
    check(failure_of_call([&] { client.load_ca_file(c.localhost.key); }), failure::tls_error, {c.localhost.key});
    check(failure_of_call([&] { client.load_ca_file(""); }), failure::invalid, {"empty"});
    check(failure_of_call([&] { client.load_cert_chain(missing, c.localhost.key); }), failure::tls_error, {missing});

    check(failure_of_call([&] { client.set_alpn({"http/1.1", ""}); }), failure::invalid, {"set_alpn", "not 0"});
    check(failure_of_call([&] { client.set_alpn({std::string(256, 'p')}); }), failure::invalid, {"not 256"});
    CHECK(failure_of_call([&] { client.set_alpn({std::string(255, 'p')}); }).kind == failure::none);
    CHECK(failure_of_call([&] { client.set_alpn({}); }).kind == failure::none);

    check(failure_of_call([&] { client.set_versions(tls::version::tls1_3, tls::version::tls1_2); }), failure::invalid,
          {"set_versions", "min (1)", "max (0)"});
    check(failure_of_call([&] { client.set_versions(tls::version::tls1_2, static_cast<tls::version>(7)); }),
          failure::invalid, {"7"});

    auto server = tls::context::server(c.localhost.cert, c.localhost.key);
    CHECK(server.is_server());
    CHECK(!server.verifies_peer());
    client.insecure_skip_verify();
    CHECK(!client.verifies_peer());
}

}  // TEST_SUITE
