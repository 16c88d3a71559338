#include <hop/net.hpp>

#include <hop/combinators.hpp>
#include <hop/cpu_pool.hpp>
#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/sync.hpp>
#include <hop/task.hpp>
#include <hop/task_group.hpp>
#include <hop/time.hpp>

#include "support/backend.hpp"
#include "support/counted.hpp"
#include "support/counting_new.hpp"
#include "support/sockets.hpp"

#include <doctest/doctest.h>

#include <asio/io_context.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <coroutine>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>


using namespace std::chrono_literals;
using namespace std::string_view_literals;
using hop_test::fd_leak_check;
using hop_test::for_each_backend;
using hop_test::options_for;
using hop_test::run_on;
using hop_test::stream_pair;

namespace {

constexpr auto guard = hop_test::socket_guard;
constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

/// What an operation ended with.
struct outcome {
    enum kind_t { none, system, cancelled, timeout, end_of_stream, invalid, other };
    kind_t kind = none;
    int code = 0;            // system: the errno
    std::string category;    // system: the error category's name
    std::size_t bytes = 0;   // end_of_stream: bytes_read()
    std::string what;
};

const char* kind_name(outcome::kind_t k) {
    switch (k) {
        case outcome::none:
            return "no exception";
        case outcome::system:
            return "std::system_error";
        case outcome::cancelled:
            return "hop::cancelled_error";
        case outcome::timeout:
            return "hop::timeout_error";
        case outcome::end_of_stream:
            return "hop::end_of_stream_error";
        case outcome::invalid:
            return "std::invalid_argument";
        case outcome::other:
            return "another exception";
    }
    return "?";
}

doctest::String toString(const outcome& o) {
    std::string s = kind_name(o.kind);
    if (o.kind == outcome::system) s += " errno " + std::to_string(o.code) + " (" + o.category + ")";
    if (!o.what.empty()) s += ": " + o.what;
    return s.c_str();
}

outcome classify(std::exception_ptr e) {
    outcome o;
    if (!e) return o;
    try {
        std::rethrow_exception(e);
    } catch (const hop::end_of_stream_error& x) {
        o.kind = outcome::end_of_stream;
        o.bytes = x.bytes_read();
        o.what = x.what();
    } catch (const hop::timeout_error& x) {
        o.kind = outcome::timeout;
        o.what = x.what();
    } catch (const hop::cancelled_error& x) {
        o.kind = outcome::cancelled;
        o.what = x.what();
    } catch (const std::system_error& x) {
        o.kind = outcome::system;
        o.code = x.code().value();
        o.category = x.code().category().name();
        o.what = x.what();
    } catch (const std::invalid_argument& x) {
        o.kind = outcome::invalid;
        o.what = x.what();
    } catch (const std::exception& x) {
        o.kind = outcome::other;
        o.what = x.what();
    } catch (...) {
        o.kind = outcome::other;
    }
    return o;
}

/// `co_await` `expr` (its value dropped) and store how it ended in `out`.
#define HOP_AWAIT_OUTCOME(out, expr)                        \
    do {                                                    \
        std::exception_ptr hop_err_;                        \
        try {                                               \
            (void)(co_await expr);                          \
        } catch (...) {                                     \
            hop_err_ = std::current_exception();            \
        }                                                   \
        (out) = classify(hop_err_);                         \
    } while (0)

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

bool is_system(const outcome& o, int code) { return o.kind == outcome::system && o.code == code; }

/// Resumes the caller from the loop's queue: everything queued on the loop
/// before this runs first (a task spawned from the loop thread has run to
/// its first suspension by then).
struct post_yield {
    hop::io_loop& loop;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) { loop.post([h] { h.resume(); }); }
    void await_resume() const noexcept {}
};

hop::task<void> yield_times(hop::io_loop& loop, int n) {
    for (int i = 0; i < n; ++i) co_await post_yield{loop};
}

int tcp_nodelay(int fd) {
    int v = -1;
    socklen_t len = sizeof v;
    if (::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len) != 0) return -1;
    return v;
}

/// Closes `s` with SO_LINGER {1, 0}: the peer gets a RST, not a FIN.
void abort_close(hop::tcp_stream& s) {
    linger lg{};
    lg.l_onoff = 1;
    lg.l_linger = 0;
    REQUIRE(::setsockopt(s.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    s.close();
}

// ---- streaming the pattern -------------------------------------------------

/// Writes pattern bytes [offset, offset + total) in chunks of `chunk`.
hop::task<void> write_pattern(hop::tcp_stream& s, std::uint64_t offset, std::uint64_t total,
                              std::size_t chunk = 256 * KiB) {
    const auto& pat = hop_test::shared_pattern();
    for (std::uint64_t done = 0; done < total;) {
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, total - done));
        co_await s.write_all(pat.at(offset + done, n));
        done += n;
    }
}

/// Reads `total` bytes with read_exact in chunks; true if they are the
/// pattern's bytes from `offset`.
hop::task<bool> read_pattern(hop::tcp_stream& s, std::uint64_t offset, std::uint64_t total,
                             std::size_t chunk = 256 * KiB) {
    const auto& pat = hop_test::shared_pattern();
    std::vector<char> buf(chunk);
    bool ok = true;
    for (std::uint64_t done = 0; done < total;) {
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, total - done));
        co_await s.read_exact(std::span<char>(buf.data(), n));
        ok = ok && pat.matches(offset + done, buf.data(), n);
        done += n;
    }
    co_return ok;
}

/// Reads until the end of the stream (read_some, `chunk` bytes at a time);
/// returns everything.
hop::task<std::vector<char>> read_to_end(hop::tcp_stream& s, std::size_t chunk = 256 * KiB) {
    std::vector<char> all;
    std::vector<char> buf(chunk);
    for (;;) {
        const std::size_t n = co_await s.read_some(buf);
        if (n == 0) break;
        all.insert(all.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n));
    }
    co_return all;
}

constexpr std::string_view marker = "<<end of stream marker>>";

hop::task<void> send_marker(hop::tcp_stream& s) {
    co_await s.write_all(marker);
    s.shutdown_write();
}

/// After a cancelled write on `writer` (which had moved at least
/// `at_least` pattern bytes from offset 0): the stream still carries a
/// prefix of the pattern, then what is written after. Checks both ways:
/// `reader` -> `writer` gets "ping" intact, then `writer` sends a marker
/// and FIN, and `reader` gets pattern bytes [0, L) then the marker, L >=
/// at_least.
hop::task<void> check_still_usable(hop::tcp_stream& writer, hop::tcp_stream& reader, std::uint64_t at_least) {
    co_await reader.write_all("ping"sv);
    std::array<char, 4> ping{};
    co_await writer.read_exact(ping);
    CHECK(std::string_view(ping.data(), 4) == "ping");

    // The reader drains while the marker goes out: the kernel's buffers
    // may still be full of the cancelled write's bytes.
    auto r = co_await hop::when_all(send_marker(writer), read_to_end(reader));
    auto& all = std::get<1>(r);
    REQUIRE(all.size() >= marker.size());
    const std::size_t prefix = all.size() - marker.size();
    CHECK(prefix >= at_least);
    CHECK(std::string_view(all.data() + prefix, marker.size()) == marker);
    CHECK_MESSAGE(hop_test::shared_pattern().matches(0, all.data(), prefix),
                  "the bytes before the marker are not the pattern's first " << prefix << " bytes");
}

}  // namespace

TEST_SUITE("socket") {

// ============================================================================
// Basics
// ============================================================================

namespace {

hop::task<void> read_into(hop::tcp_stream& s, std::span<char> buf) { co_await s.read_exact(buf); }
hop::task<void> write_from(hop::tcp_stream& s, std::span<const char> bytes) { co_await s.write_all(bytes); }

hop::task<void> basics(hop::endpoint local) {
    auto lis = hop::tcp_listener::bind(local);
    const auto lep = lis.local_endpoint();
    CHECK(lis.is_open());
    CHECK(lis.native_handle() >= 0);
    CHECK(lep.port() != 0);
    CHECK(lep.address() == local.address());
    CHECK(lep.is_v6() == local.is_v6());

    auto p = co_await hop_test::connect_pair(lis);
    REQUIRE(p.client.is_open());
    REQUIRE(p.server.is_open());
    CHECK(p.client.native_handle() != p.server.native_handle());
    CHECK(p.client.remote_endpoint() == lep);
    CHECK(p.server.local_endpoint() == lep);
    CHECK(p.client.local_endpoint() == p.server.remote_endpoint());
    CHECK(p.client.local_endpoint().address() == local.address());
    CHECK(p.client.local_endpoint().port() != 0);

    p.client.set_nodelay(true);
    CHECK(tcp_nodelay(p.client.native_handle()) == 1);
    p.client.set_nodelay(false);
    CHECK(tcp_nodelay(p.client.native_handle()) == 0);
    p.server.set_nodelay(true);
    CHECK(tcp_nodelay(p.server.native_handle()) == 1);

    // 1 MiB each way; the reader is waiting before the writer starts.
    const auto& pat = hop_test::shared_pattern();
    std::vector<char> in(1 * MiB);
    (void)co_await hop::when_all(read_into(p.server, in), write_from(p.client, pat.at(0, in.size())));
    CHECK(pat.matches(0, in.data(), in.size()));
    std::fill(in.begin(), in.end(), '\0');
    (void)co_await hop::when_all(read_into(p.client, in), write_from(p.server, pat.at(12345, in.size())));
    CHECK(pat.matches(12345, in.data(), in.size()));

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

    // Half-close: the server's reads end (and stay ended); it can still send.
    p.client.shutdown_write();
    char buf[16];
    const std::size_t eof1 = co_await p.server.read_some(buf);
    CHECK(eof1 == 0);
    const std::size_t eof2 = co_await p.server.read_some(buf);
    CHECK(eof2 == 0);
    co_await p.server.write_all("after fin"sv);
    std::array<char, 9> after{};
    co_await p.client.read_exact(after);
    CHECK(std::string_view(after.data(), after.size()) == "after fin");
    p.server.shutdown_write();
    const std::size_t eof3 = co_await p.client.read_some(buf);
    CHECK(eof3 == 0);

    p.client.close();
    CHECK_FALSE(p.client.is_open());
    CHECK(p.client.native_handle() < 0);
    p.client.close();  // twice is allowed
    lis.close();
    CHECK_FALSE(lis.is_open());
    lis.close();
}

}  // namespace

TEST_CASE("tcp: connect, accept, both ways, endpoints, nodelay, half-close (IPv4 and IPv6)") {
    for_each_backend([](hop::backend b) {
        for (const auto& local : hop_test::loopbacks()) {
            INFO("on " << local.address());
            fd_leak_check fds;
            run_on(b, basics(local));
        }
    });
}

namespace {

hop::task<bool> duplex_side(hop::tcp_stream& s, std::uint64_t out_offset, std::uint64_t in_offset,
                            std::uint64_t total) {
    auto r = co_await hop::when_all(write_pattern(s, out_offset, total), read_pattern(s, in_offset, total));
    co_return std::get<1>(r);
}

hop::task<void> full_duplex(std::uint64_t total) {
    auto p = co_await hop_test::make_pair();
    // Both ends write more than the kernel can hold before either reads all:
    // this only ends if one read and one write are in flight on each socket.
    auto r = co_await hop::when_all(duplex_side(p.client, 0, 777, total), duplex_side(p.server, 777, 0, total));
    CHECK(std::get<0>(r));
    CHECK(std::get<1>(r));
}

}  // namespace

TEST_CASE("tcp: a read and a write in flight on one stream at once (48 MiB each way, both ends)") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        run_on(b, full_duplex(48 * MiB));
    });
}

namespace {

hop::task<void> empty_buffers() {
    auto p = co_await hop_test::make_pair();
    std::span<char> none;
    // Nothing has been sent: these must not wait for data.
    const std::size_t a = co_await p.server.read_some(none);
    CHECK(a == 0);
    outcome exact;
    HOP_AWAIT_OUTCOME(exact, p.server.read_exact(none));
    CHECK_MESSAGE(exact.kind == outcome::none, "read_exact of an empty buffer: " << toString(exact));
    const std::size_t c = co_await p.client.write_all(std::string_view{});
    CHECK(c == 0);
    const std::size_t d = co_await p.client.write_some(std::string_view{});
    CHECK(d == 0);
    // The stream is as it was.
    co_await p.client.write_all("x"sv);
    char one[1];
    co_await p.server.read_exact(one);
    CHECK(one[0] == 'x');
}

}  // namespace

namespace {

hop::task<void> one_byte_writes(hop::tcp_stream& s, int n) {
    for (int i = 0; i < n; ++i) co_await s.write_all(hop_test::shared_pattern().at(static_cast<std::uint64_t>(i), 1));
}

hop::task<void> small_pieces_and_moves() {
    auto p = co_await hop_test::make_pair();
    p.client.set_nodelay(true);
    // One read_exact gathers 1,000 one-byte writes (many partial receives).
    std::vector<char> in(1000);
    (void)co_await hop::when_all(read_into(p.server, in), one_byte_writes(p.client, 1000));
    CHECK(hop_test::shared_pattern().matches(0, in.data(), in.size()));

    // Move-assigning over an open stream closes the one it held.
    auto q = co_await hop_test::make_pair();
    const int old_fd = p.client.native_handle();
    p.client = std::move(q.client);
    CHECK_FALSE(q.client.is_open());
    CHECK(p.client.native_handle() != old_fd);
    char buf[8];
    const std::size_t n = co_await p.server.read_some(buf);  // its peer sees the end
    CHECK(n == 0);
    co_await p.client.write_all("moved"sv);  // the moved-in one works
    std::array<char, 5> got{};
    co_await q.server.read_exact(got);
    CHECK(std::string_view(got.data(), got.size()) == "moved");
}

// Reads that keep finishing at once must not hold the loop: with 4,096 bytes
// already buffered, a callable posted before 4,096 one-byte reads runs while
// they go on, not after them. (On epoll every such read used to complete
// inline or inside one Asio poll(), so the post ran after the last one; on
// io_uring each read is a completion from the ring.) The backends hand the
// turn back after a few dozen handlers at most, so the post runs well before
// the end.
hop::task<void> buffered_reads_let_posts_run() {
    auto p = co_await hop_test::make_pair();
    const std::string data(4096, 'x');
    co_await p.client.write_all(data);
    // Wait (the kernel's loopback delivery, no loop involved) until every
    // byte is in the server's receive queue.
    for (int queued = 0; queued < 4096;) {
        REQUIRE(::ioctl(p.server.native_handle(), FIONREAD, &queued) == 0);
        if (queued < 4096) std::this_thread::yield();
    }
    std::size_t reads = 0;
    std::size_t reads_when_posted_ran = 0;
    bool posted_ran = false;
    hop::io_loop* loop = hop::current_loop();
    REQUIRE(loop != nullptr);
    loop->post([&] {
        posted_ran = true;
        reads_when_posted_ran = reads;
    });
    char c = 0;
    while (reads < 4096) {
        const std::size_t n = co_await p.server.read_some(std::span(&c, 1));
        REQUIRE(n == 1);
        ++reads;
    }
    CHECK(posted_ran);
    CHECK(reads_when_posted_ran <= 256);
}

}  // namespace

TEST_CASE("tcp: a callable posted before 4,096 one-byte reads of buffered bytes runs while they go on") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        run_on(b, buffered_reads_let_posts_run());
    });
}

TEST_CASE("tcp: read_exact across 1,000 one-byte writes; move-assignment closes the stream it replaces") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        run_on(b, small_pieces_and_moves());
    });
}

TEST_CASE("tcp: empty buffers complete at once with 0 bytes (read_some, read_exact, write_some, write_all)") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        run_on(b, empty_buffers());
    });
}

namespace {

// Writes a gathered head + 8 MiB body + tail (an empty part between) while
// the other end reads it all: the socket takes it in many partial sends,
// each continuing where the last one stopped.
hop::task<std::size_t> write_parts(hop::tcp_stream& s, std::span<const std::string_view> parts) {
    co_return co_await s.write_all(parts);
}

hop::task<void> gathered_writes() {
    auto p = co_await hop_test::make_pair();
    const std::string head = "head:";
    std::string body(8 * MiB, '\0');
    for (std::size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>('a' + i % 23);
    const std::string tail = ":tail";
    const std::array<std::string_view, 4> parts{head, body, std::string_view(), tail};
    const std::size_t total = head.size() + body.size() + tail.size();
    std::vector<char> in(total);
    auto both = co_await hop::when_all(write_parts(p.client, parts), read_into(p.server, in));
    CHECK(std::get<0>(both) == total);
    CHECK(std::string_view(in.data(), head.size()) == head);
    CHECK(std::string_view(in.data() + head.size(), body.size()) == body);
    CHECK(std::string_view(in.data() + head.size() + body.size(), tail.size()) == tail);

    // write_some: one call, some bytes from the first part on, in order.
    const std::array<std::string_view, 2> two{"ab"sv, "cd"sv};
    const std::size_t n = co_await p.client.write_some(two);
    CHECK(n >= 1);
    CHECK(n <= 4);
    std::vector<char> some(n);
    co_await p.server.read_exact(some);
    CHECK(std::string_view(some.data(), n) == std::string_view("abcd").substr(0, n));

    // Nothing to send: 0 at once.
    const std::array<std::string_view, 2> empty{};
    CHECK(co_await p.client.write_all(empty) == 0);

    // Too many parts: refused at the call, naming the count.
    const std::array<std::string_view, 17> many{};
    std::string what;
    try {
        (void)p.client.write_all(many);
    } catch (const std::invalid_argument& e) {
        what = e.what();
    }
    CHECK_MESSAGE(what.find("17 parts") != std::string::npos, what);
}

}  // namespace

TEST_CASE("tcp: gathered write_all / write_some send their parts in order (8 MiB in many partial sends); 17 parts refused") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        run_on(b, gathered_writes());
    });
}

// ============================================================================
// connect by name, adopt
// ============================================================================

namespace {

hop::task<void> connect_by_name() {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    const auto port = lis.local_endpoint().port();
    auto c = co_await hop::tcp_stream::connect("localhost", port);
    auto s = co_await lis.accept();
    CHECK(c.remote_endpoint() == lis.local_endpoint());
    CHECK(s.remote_endpoint() == c.local_endpoint());
    co_await c.write_all("by name"sv);
    std::array<char, 7> got{};
    co_await s.read_exact(got);
    CHECK(std::string_view(got.data(), got.size()) == "by name");

    // Nobody listens there (on any of localhost's addresses, most surely).
    hop_test::refusing_port closed;
    outcome o;
    HOP_AWAIT_OUTCOME(o, hop::tcp_stream::connect("localhost", closed.endpoint().port()));
    CHECK_MESSAGE(is_system(o, ECONNREFUSED), toString(o));
    CHECK_MESSAGE(contains(o.what, "localhost"), o.what);
}

}  // namespace

namespace {

/// A listener whose accept queue is full: the kernel drops further SYNs, so
/// a connect to it waits (until cancelled). Filled with raw non-blocking
/// connects the test owns.
struct black_hole {
    hop::tcp_listener lis;
    std::vector<int> fillers;
    black_hole() {
        hop::listen_options opts;
        opts.backlog = 1;
        lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0), opts);
        const auto ep = lis.local_endpoint();
        for (int i = 0; i < 8; ++i) {
            int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            REQUIRE(fd >= 0);
            (void)::connect(fd, ep.data(), ep.size());
            fillers.push_back(fd);
        }
    }
    ~black_hole() {
        for (int fd : fillers) ::close(fd);
    }
    black_hole(const black_hole&) = delete;
    black_hole& operator=(const black_hole&) = delete;
};

hop::task<void> connect_to_candidates() {
    auto good = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    {
        // The first refuses at once: the next starts without waiting.
        hop_test::refusing_port closed;
        // (Named: GCC 12 cannot hold an initializer_list across co_await.)
        std::vector<hop::endpoint> targets{closed.endpoint(), good.local_endpoint()};
        auto c = co_await hop::tcp_stream::connect(std::move(targets));
        CHECK(c.remote_endpoint() == good.local_endpoint());
        auto s = co_await good.accept();
        co_await c.write_all("a"sv);
        char one[1];
        co_await s.read_exact(one);
        CHECK(one[0] == 'a');
    }
    {
        // The first never answers: the next starts 250 ms later and wins;
        // the first is cancelled (its socket closed: the fd check sees it).
        black_hole hole;
        std::vector<hop::endpoint> targets{hole.lis.local_endpoint(), hole.lis.local_endpoint(), good.local_endpoint()};
        auto c = co_await hop::tcp_stream::connect(std::move(targets));
        CHECK(c.remote_endpoint() == good.local_endpoint());
        auto s = co_await good.accept();
    }
    {
        hop_test::refusing_port a;
        hop_test::refusing_port b;
        outcome o;
        std::vector<hop::endpoint> targets{a.endpoint(), b.endpoint()};
        HOP_AWAIT_OUTCOME(o, hop::tcp_stream::connect(std::move(targets)));
        CHECK_MESSAGE(is_system(o, ECONNREFUSED), toString(o));
        CHECK_MESSAGE(contains(o.what, "none of 2"), o.what);
        CHECK_MESSAGE(contains(o.what, a.endpoint().to_string()), o.what);
    }
    CHECK_THROWS_AS((void)hop::tcp_stream::connect(std::vector<hop::endpoint>{}), std::invalid_argument);
}

}  // namespace

TEST_CASE("tcp: connect to a list of endpoints, happy eyeballs: refused and silent addresses are passed over") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        run_on(b, connect_to_candidates());
    });
}

TEST_CASE("tcp: connect(\"localhost\", port) resolves and connects; nothing listening: system_error naming the host") {
    for_each_backend([](hop::backend b) {
        // The lookup runs on the blocking pool: its threads hold no fds.
        fd_leak_check fds;
        run_on(b, connect_by_name());
    });
}

namespace {

hop::task<int> adopt_case() {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    const auto ep = lis.local_endpoint();
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    REQUIRE(::connect(fd, ep.data(), ep.size()) == 0);  // blocking: done by the kernel's backlog
    auto s = co_await lis.accept();
    auto c = hop::tcp_stream::adopt(fd);
    CHECK(c.is_open());
    CHECK(c.native_handle() == fd);
    CHECK(c.remote_endpoint() == ep);
    CHECK(c.local_endpoint() == s.remote_endpoint());

    co_await c.write_all("adopted"sv);
    std::array<char, 7> got{};
    co_await s.read_exact(got);
    CHECK(std::string_view(got.data(), got.size()) == "adopted");
    const auto& pat = hop_test::shared_pattern();
    std::vector<char> in(256 * KiB);
    (void)co_await hop::when_all(read_into(c, in), write_from(s, pat.at(99, in.size())));
    CHECK(pat.matches(99, in.data(), in.size()));

    // Closing the adopted stream closes the fd: the peer sees the end.
    c.close();
    char buf[8];
    const std::size_t n = co_await s.read_some(buf);
    CHECK(n == 0);

    outcome bad;
    try {
        (void)hop::tcp_stream::adopt(-1);
    } catch (...) {
        bad = classify(std::current_exception());
    }
    CHECK_MESSAGE(bad.kind == outcome::invalid, toString(bad));
    try {
        (void)hop::tcp_stream::adopt(-42);
        bad = outcome{};
    } catch (...) {
        bad = classify(std::current_exception());
    }
    CHECK_MESSAGE(bad.kind == outcome::invalid, toString(bad));
    co_return fd;
}

}  // namespace

TEST_CASE("tcp: adopt takes a connected fd and closes it once; adopt(negative) throws std::invalid_argument") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        const int fd = run_on(b, adopt_case());
        errno = 0;
        CHECK(::fcntl(fd, F_GETFD) == -1);
        CHECK(errno == EBADF);
    });
}

// ============================================================================
// Many connections
// ============================================================================

namespace {

/// Where each of the many connections has got to, so that a guard that
/// fires can say which connections and operations are still pending.
struct many_state {
    enum stage : char { connecting, waiting_for_all, writing, reading, ok, wrong };
    explicit many_state(int n) : total(n), client(static_cast<std::size_t>(n), connecting) {}
    int total;
    int connected = 0;
    int accepted = 0;
    int handlers_ended = 0;
    hop::event all_connected;
    std::vector<stage> client;

    /// "accepted 2000/2000, handlers ended 1990; clients: reading 10 (#17 #230 ...)".
    std::string describe() const {
        static constexpr const char* names[] = {"connecting", "waiting for all", "writing", "reading", "ok", "wrong"};
        std::ostringstream out;
        out << "connected " << connected << '/' << total << ", accepted " << accepted << ", handlers ended "
            << handlers_ended << "; clients:";
        for (int k = connecting; k <= wrong; ++k) {
            int count = 0;
            std::ostringstream ids;
            for (std::size_t i = 0; i < client.size(); ++i) {
                if (client[i] != k) continue;
                if (++count <= 8) ids << " #" << i;
            }
            if (count == 0) continue;
            out << ' ' << names[k] << ' ' << count;
            if (k != ok) out << " (" << ids.str().substr(1) << (count > 8 ? " ..." : "") << ')';
            out << ';';
        }
        return out.str();
    }
};

hop::task<void> echo_handler(hop::tcp_stream s) {
    std::array<char, 4096> buf;
    for (;;) {
        const std::size_t n = co_await s.read_some(buf);
        if (n == 0) break;
        co_await s.write_all(std::span<const char>(buf.data(), n));
    }
}

hop::task<void> counted_echo_handler(hop::tcp_stream s, many_state& st) {
    co_await echo_handler(std::move(s));
    ++st.handlers_ended;
}

hop::task<void> echo_server(hop::tcp_listener& lis, int n, many_state& st) {
    hop::task_group g;
    for (int i = 0; i < n; ++i) {
        auto s = co_await lis.accept();
        ++st.accepted;
        g.spawn(counted_echo_handler(std::move(s), st));
    }
    co_await g.wait();
}

hop::task<int> echo_client(hop::endpoint ep, int id, many_state& st, std::size_t size) {
    auto& stage = st.client[static_cast<std::size_t>(id)];
    auto c = co_await hop::tcp_stream::connect(ep);
    stage = many_state::waiting_for_all;
    if (++st.connected == st.total) st.all_connected.set();
    co_await st.all_connected.wait();  // every connection is open at once
    stage = many_state::writing;
    const std::uint64_t offset = static_cast<std::uint64_t>(id) * 7919;
    co_await c.write_all(hop_test::shared_pattern().at(offset, size));
    c.shutdown_write();
    stage = many_state::reading;
    // A read buffer of the echo's size: 256 KiB for each of 2,000 clients
    // was 512 MB to zero, and 2 GB of shadow under TSan, which made this case
    // 5x slower there than its connections alone.
    auto back = co_await read_to_end(c, size);
    const bool right = back.size() == size && hop_test::shared_pattern().matches(offset, back.data(), back.size());
    stage = right ? many_state::ok : many_state::wrong;
    co_return right ? 1 : 0;
}

hop::task<std::vector<int>> all_of(std::vector<hop::task<int>> ts) { co_return co_await hop::when_all(std::move(ts)); }

hop::task<int> many_connections(many_state& st, std::size_t size) {
    hop::listen_options opts;
    opts.backlog = 4096;
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0), opts);
    std::vector<hop::task<int>> clients;
    clients.reserve(static_cast<std::size_t>(st.total));
    for (int i = 0; i < st.total; ++i) clients.push_back(echo_client(lis.local_endpoint(), i, st, size));
    auto r = co_await hop::when_all(echo_server(lis, st.total, st), all_of(std::move(clients)));
    int ok = 0;
    for (int v : std::get<1>(r)) ok += v;
    co_return ok;
}

}  // namespace

TEST_CASE("tcp on a loop hosted by an asio::io_context that 3 threads run: 300 connections echo") {
    // Hosted loops always use the readiness backend; socket handlers then
    // come from any host thread and are handed to hop's serialised drain.
    fd_leak_check fds;
    hop_test::nofile_raised raised;
    asio::io_context ctx;
    hop::io_loop loop(ctx);
    REQUIRE(loop.backend_kind() == hop::backend::epoll);
    many_state st{300};
    auto f = loop.spawn(many_connections(st, 16 * KiB));
    std::vector<std::thread> hosts;
    for (int t = 0; t < 3; ++t) hosts.emplace_back([&] { ctx.run(); });
    for (auto& h : hosts) h.join();  // run() returns once hop has nothing left
    REQUIRE(f.done());
    CHECK(f.get() == 300);
}

TEST_CASE("tcp: 2,000 concurrent connections, each echoing 4 KiB") {
    for_each_backend([](hop::backend b) {
        hop_test::nofile_raised raised;
        int n = 2000;  // about 1 s under TSan on an idle machine (0.3 s without)
        const std::size_t in_use = hop_test::open_fds().size() + 64;
        const std::size_t needed = 2 * static_cast<std::size_t>(n) + in_use;
        if (raised.limit() < needed) {
            n = static_cast<int>((raised.limit() - std::min(raised.limit(), in_use)) / 2);
            MESSAGE("RLIMIT_NOFILE's hard limit is " << raised.limit() << ": " << n << " connections only");
        }
        REQUIRE(n > 0);
        fd_leak_check fds;
        many_state st{n};
        CHECK(run_on(b, many_connections(st, 4 * KiB), [&st] { return st.describe(); }) == n);
        CHECK_MESSAGE(st.handlers_ended == n, st.describe());
    });
}

// ============================================================================
// Peers that go away
// ============================================================================

namespace {

hop::task<void> read_exact_outcome(hop::tcp_stream& s, std::span<char> buf, outcome& o) {
    HOP_AWAIT_OUTCOME(o, s.read_exact(buf));
}

hop::task<void> write_then_close(hop::tcp_stream& s, std::size_t n) {
    co_await write_pattern(s, 0, n);
    s.close();
}

hop::task<void> peer_closes_mid_stream() {
    auto p = co_await hop_test::make_pair();
    const std::size_t sent = 1 * MiB + 17;
    std::vector<char> buf(2 * MiB, '\0');
    outcome o;
    // The read is waiting before the peer writes; it fills part of its buffer.
    (void)co_await hop::when_all(read_exact_outcome(p.client, buf, o), write_then_close(p.server, sent));
    CHECK_MESSAGE(o.kind == outcome::end_of_stream, toString(o));
    CHECK(o.bytes == sent);
    CHECK(hop_test::shared_pattern().matches(0, buf.data(), sent));
    CHECK_MESSAGE(contains(o.what, "read_exact"), o.what);

    // The end stays: read_some gives 0; read_exact throws again, 0 bytes.
    char more[10];
    const std::size_t n = co_await p.client.read_some(more);
    CHECK(n == 0);
    outcome again;
    HOP_AWAIT_OUTCOME(again, p.client.read_exact(more));
    CHECK_MESSAGE(again.kind == outcome::end_of_stream, toString(again));
    CHECK(again.bytes == 0);
}

}  // namespace

TEST_CASE("tcp: a peer closing mid-stream: read_exact throws end_of_stream_error with the bytes that came") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        run_on(b, peer_closes_mid_stream());
    });
}

namespace {

hop::task<void> read_some_outcome(hop::tcp_stream& s, outcome& o) {
    char buf[64];
    HOP_AWAIT_OUTCOME(o, s.read_some(buf));
}

hop::task<void> reset(hop::tcp_stream& s) {
    abort_close(s);
    co_return;
}

hop::task<void> write_some_reset(hop::tcp_stream& s, std::size_t n) {
    co_await s.write_all(hop_test::shared_pattern().at(0, n));
    abort_close(s);
}

/// write_all 64 KiB at a time until it throws (at most 256 MiB).
hop::task<outcome> write_until_error(hop::tcp_stream& s) {
    outcome w;
    const auto chunk = hop_test::shared_pattern().at(0, 64 * KiB);
    for (int i = 0; i < 4096 && w.kind == outcome::none; ++i) HOP_AWAIT_OUTCOME(w, s.write_all(chunk));
    co_return w;
}

hop::task<outcome> write_some_until_error(hop::tcp_stream& s) {
    outcome w;
    const auto chunk = hop_test::shared_pattern().at(0, 64 * KiB);
    for (int i = 0; i < 4096 && w.kind == outcome::none; ++i) HOP_AWAIT_OUTCOME(w, s.write_some(chunk));
    co_return w;
}

hop::task<void> peer_resets() {
    {
        // A read waiting when the RST comes, after some bytes went by.
        auto p = co_await hop_test::make_pair();
        co_await p.server.write_all("hello"sv);
        std::array<char, 5> five{};
        co_await p.client.read_exact(five);
        outcome o;
        (void)co_await hop::when_all(read_some_outcome(p.client, o), reset(p.server));
        CHECK_MESSAGE(is_system(o, ECONNRESET), "read_some after a reset: " << toString(o));
        CHECK_MESSAGE(contains(o.what, "read_some"), o.what);
    }
    {
        // read_exact with part of its buffer filled when the RST comes.
        auto p = co_await hop_test::make_pair();
        std::vector<char> buf(100);
        outcome o;
        (void)co_await hop::when_all(read_exact_outcome(p.client, buf, o), write_some_reset(p.server, 10));
        CHECK_MESSAGE(is_system(o, ECONNRESET), "read_exact across a reset: " << toString(o));
        CHECK_MESSAGE(contains(o.what, "read_exact"), o.what);
    }
    {
        // Writes to a reset peer.
        auto p = co_await hop_test::make_pair();
        abort_close(p.server);
        const auto w = co_await write_until_error(p.client);
        CHECK_MESSAGE((is_system(w, EPIPE) || is_system(w, ECONNRESET)), "write_all to a reset peer: " << toString(w));
        CHECK_MESSAGE(contains(w.what, "write_all"), w.what);
        const auto ws = co_await write_some_until_error(p.client);
        CHECK_MESSAGE((is_system(ws, EPIPE) || is_system(ws, ECONNRESET)), "write_some to a reset peer: " << toString(ws));
        CHECK_MESSAGE(contains(ws.what, "write_some"), ws.what);
    }
}

}  // namespace

TEST_CASE("tcp: a peer resetting mid-stream: ECONNRESET on read; EPIPE or ECONNRESET on write") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        run_on(b, peer_resets());
    });
}

namespace {

/// Runs `body()` in a forked child on a fresh loop of backend `b` (no
/// threads are started in the child); returns the child's wait status. The
/// child's exit code is the body's result (100+: the harness failed).
template <class Body>
int in_child(hop::backend b, Body body, bool default_sigpipe) {
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int code = 100;
        try {
            if (default_sigpipe) std::signal(SIGPIPE, SIG_DFL);
            ::alarm(60);  // a hang becomes SIGALRM
            hop::io_loop loop{options_for(b)};
            auto f = loop.spawn(body());
            f.on_done([&loop](const hop::future<int>&) noexcept { loop.stop(); });
            loop.run();
            code = f.done() ? std::move(f).get() : 101;
        } catch (...) {
            code = 102;
        }
        std::_Exit(code);
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
}

std::string describe_status(int status, const char* (*text)(int)) {
    if (WIFSIGNALED(status)) {
        return "the child was killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
               ::strsignal(WTERMSIG(status)) + ")";
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 1) {
        return "the child exited with 1: a sanitizer's report? (see its stderr)";
    }
    if (WIFEXITED(status)) {
        return "the child exited with " + std::to_string(WEXITSTATUS(status)) + ": " + text(WEXITSTATUS(status));
    }
    return "the child ended oddly: status " + std::to_string(status);
}

const char* sigpipe_code_text(int code) {
    switch (code) {
        case 0:
            return "ok";
        case 2:
            return "write_all to a closed peer did not throw std::system_error";
        case 3:
            return "write_all to a closed peer threw std::system_error with neither EPIPE nor ECONNRESET";
        case 4:
            return "write_some to a closed peer did not throw std::system_error";
        case 5:
            return "write_some to a closed peer threw std::system_error with neither EPIPE nor ECONNRESET";
        case 6:
            return "SIGPIPE is not at its default action in the child";
        case 100:
            return "harness";
        case 101:
            return "the loop stopped before the body ended";
        case 102:
            return "the body threw";
    }
    return "unexpected exit code";
}

hop::task<int> write_to_closed_peer() {
    struct sigaction now {};
    ::sigaction(SIGPIPE, nullptr, &now);
    if (now.sa_handler != SIG_DFL) co_return 6;
    auto p = co_await hop_test::make_pair();
    p.server.close();
    const auto w = co_await write_until_error(p.client);
    if (w.kind != outcome::system) co_return 2;
    if (w.code != EPIPE && w.code != ECONNRESET) co_return 3;
    const auto ws = co_await write_some_until_error(p.client);
    if (ws.kind != outcome::system) co_return 4;
    if (ws.code != EPIPE && ws.code != ECONNRESET) co_return 5;
    co_return 0;
}

}  // namespace

TEST_CASE("tcp: writing to a closed peer with SIGPIPE at its default action throws; the process lives (child)") {
    for_each_backend([](hop::backend b) {
        const int status = in_child(b, write_to_closed_peer, true);
        CHECK_MESSAGE((WIFEXITED(status) && WEXITSTATUS(status) == 0), describe_status(status, sigpipe_code_text));
    });
}

namespace {

hop::task<void> connect_refused(bool v6) {
    {
        hop_test::refusing_port port(v6);
        outcome o;
        HOP_AWAIT_OUTCOME(o, hop::tcp_stream::connect(port.endpoint()));
        CHECK_MESSAGE(is_system(o, ECONNREFUSED), toString(o));
        CHECK_MESSAGE(contains(o.what, port.endpoint().to_string()), o.what);
    }
    // A listener that was closed: its port refuses at once.
    auto lis = hop::tcp_listener::bind(v6 ? hop::endpoint::loopback_v6(0) : hop::endpoint::loopback_v4(0));
    const auto ep = lis.local_endpoint();
    lis.close();
    outcome after;
    HOP_AWAIT_OUTCOME(after, hop::tcp_stream::connect(ep));
    CHECK_MESSAGE(is_system(after, ECONNREFUSED), "connect to a closed listener's port: " << toString(after));
    CHECK_MESSAGE(contains(after.what, ep.to_string()), after.what);
}

}  // namespace

TEST_CASE("tcp: connect to a port nobody listens on: std::system_error ECONNREFUSED naming the endpoint") {
    for_each_backend([](hop::backend b) {
        for (const auto& local : hop_test::loopbacks()) {
            INFO("on " << local.address());
            fd_leak_check fds;
            run_on(b, connect_refused(local.is_v6()));
        }
    });
}

// ============================================================================
// Timeouts
// ============================================================================

namespace {

hop::task<void> read_timeouts(int rounds) {
    auto p = co_await hop_test::make_pair();
    char buf[64];
    for (int r = 0; r < rounds; ++r) {
        outcome o;
        HOP_AWAIT_OUTCOME(o, hop::with_timeout(10ms, p.server.read_some(buf)));
        CHECK_MESSAGE(o.kind == outcome::timeout, toString(o));
        const std::string msg = "round " + std::to_string(r) + " of the payload";
        co_await p.client.write_all(msg);
        std::string got;
        while (got.size() < msg.size()) {
            const std::size_t n = co_await p.server.read_some(buf);
            REQUIRE(n > 0);
            got.append(buf, n);
        }
        CHECK(got == msg);
    }
    // read_exact that times out with nothing read: the stream goes on.
    std::array<char, 8> eight{};
    outcome o;
    HOP_AWAIT_OUTCOME(o, hop::with_timeout(10ms, p.server.read_exact(eight)));
    CHECK_MESSAGE(o.kind == outcome::timeout, toString(o));
    co_await p.client.write_all("12345678"sv);
    co_await p.server.read_exact(eight);
    CHECK(std::string_view(eight.data(), 8) == "12345678");
}

}  // namespace

TEST_CASE("tcp: with_timeout on a read times out and leaves the stream usable, no byte lost") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        run_on(b, read_timeouts(hop_test::under_tsan ? 5 : 20));
    });
}

namespace {

/// write_all pattern chunks until stopped; `written`: the chunks finished.
hop::task<void> write_until_stopped(hop::tcp_stream& s, std::uint64_t& written) {
    const auto& pat = hop_test::shared_pattern();
    while (written < std::uint64_t(1) << 30) {
        co_await s.write_all(pat.at(written, 256 * KiB));
        written += 256 * KiB;
    }
}

hop::task<void> close_soon(hop::tcp_stream& s) {
    s.close();
    co_return;
}

hop::task<outcome> wait_readable_outcome(hop::tcp_stream& s) {
    outcome o;
    HOP_AWAIT_OUTCOME(o, s.wait_readable());
    co_return o;
}

hop::task<void> writable_then_fin(hop::tcp_stream& s) {
    co_await s.wait_writable();
    s.shutdown_write();
}

hop::task<void> readiness_waits() {
    auto p = co_await hop_test::make_pair();
    {
        // Nothing sent: the wait does not end (a spurious wake-up would
        // return instead of timing out).
        outcome o;
        HOP_AWAIT_OUTCOME(o, hop::with_timeout(10ms, p.server.wait_readable()));
        CHECK_MESSAGE(o.kind == outcome::timeout, toString(o));
    }
    // Bytes come: the wait ends and consumes nothing (a second wait ends at
    // once; the read gets every byte).
    co_await p.client.write_all("ping"sv);
    CHECK((co_await p.server.wait_readable() & POLLIN) != 0);
    CHECK((co_await p.server.wait_readable() & POLLIN) != 0);
    std::string got;
    char buf[16];
    while (got.size() < 4) {
        const std::size_t n = co_await p.server.read_some(buf);
        REQUIRE(n > 0);
        got.append(buf, n);
    }
    CHECK(got == "ping");

    // A fresh stream can be written at once; one whose peer stopped
    // reading, once the peer drains it. (Not checked: that it is not
    // writable before. ACKs of bytes in flight free send buffer space at
    // times nobody here controls.)
    CHECK((co_await p.client.wait_writable() & POLLOUT) != 0);
    std::uint64_t written = 0;
    outcome o;
    HOP_AWAIT_OUTCOME(o, hop::with_timeout(10ms, write_until_stopped(p.client, written)));
    CHECK_MESSAGE(o.kind == outcome::timeout, toString(o));
    auto drained = co_await hop::when_all(read_to_end(p.server), writable_then_fin(p.client));
    CHECK(std::get<0>(drained).size() >= written);

    // The peer's FIN: readable, and the read says end of stream.
    auto q = co_await hop_test::make_pair();
    q.client.shutdown_write();
    co_await q.server.wait_readable();
    CHECK(co_await q.server.read_some(buf) == 0);

    // Closed while waiting: cancelled_error; closed before: EBADF naming the call.
    auto r = co_await hop::when_all(wait_readable_outcome(q.client), close_soon(q.client));
    CHECK_MESSAGE(std::get<0>(r).kind == outcome::cancelled, toString(std::get<0>(r)));
    HOP_AWAIT_OUTCOME(o, q.client.wait_readable());
    CHECK_MESSAGE((o.kind == outcome::system && o.code == EBADF), toString(o));
    CHECK(o.what.find("hop::tcp_stream::wait_readable") != std::string::npos);
    HOP_AWAIT_OUTCOME(o, q.client.wait_writable());
    CHECK_MESSAGE((o.kind == outcome::system && o.code == EBADF), toString(o));
    CHECK(o.what.find("hop::tcp_stream::wait_writable") != std::string::npos);
}

}  // namespace

TEST_CASE("tcp: wait_readable / wait_writable end on readiness, consume nothing, and are cancelled by close") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        run_on(b, readiness_waits());
    });
}

namespace {

hop::task<void> write_accept_connect_timeouts() {
    {
        // A write to a peer that does not read.
        auto p = co_await hop_test::make_pair();
        std::uint64_t written = 0;
        outcome o;
        HOP_AWAIT_OUTCOME(o, hop::with_timeout(10ms, write_until_stopped(p.client, written)));
        CHECK_MESSAGE(o.kind == outcome::timeout, toString(o));
        co_await check_still_usable(p.client, p.server, written);
    }
    {
        // An accept with nobody connecting.
        auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
        outcome o;
        HOP_AWAIT_OUTCOME(o, hop::with_timeout(10ms, lis.accept()));
        CHECK_MESSAGE(o.kind == outcome::timeout, toString(o));
        auto p = co_await hop_test::connect_pair(lis);
        co_await p.client.write_all("!"sv);
        char one[1];
        co_await p.server.read_exact(one);
        CHECK(one[0] == '!');
    }
    {
        // A connect to a listener whose accept queue is full: the kernel
        // drops the SYN, so the connect waits until it is cancelled.
        hop::listen_options opts;
        opts.backlog = 1;
        auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0), opts);
        std::vector<hop::tcp_stream> queued;
        outcome o;
        for (int i = 0; i < 16; ++i) {
            std::exception_ptr err;
            try {
                queued.push_back(co_await hop::with_timeout(10ms, hop::tcp_stream::connect(lis.local_endpoint())));
            } catch (...) {
                err = std::current_exception();
            }
            if (err) {
                o = classify(err);
                break;
            }
        }
        CHECK_MESSAGE(o.kind == outcome::timeout, "after " << queued.size() << " connections: " << toString(o));
        // The listener works on: take the queued ones, then a new one.
        std::vector<hop::tcp_stream> accepted;
        for (std::size_t i = 0; i < queued.size(); ++i) accepted.push_back(co_await lis.accept());
        auto p = co_await hop_test::connect_pair(lis);
        co_await p.server.write_all("?"sv);
        char one[1];
        co_await p.client.read_exact(one);
        CHECK(one[0] == '?');
    }
}

}  // namespace

TEST_CASE("tcp: with_timeout on write_all, accept and connect: timeout_error, and the sockets stay usable") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        run_on(b, write_accept_connect_timeouts());
    });
}

// ============================================================================
// Cancellation
// ============================================================================

namespace {

/// What an operation under test did.
struct probe {
    bool entered = false;
    outcome result;
    std::uint64_t moved = 0;  // bytes read, or written by finished write_alls
};

hop::task<void> probe_read(hop::tcp_stream& s, probe& pr, hop_test::counted) {
    char buf[64];
    pr.entered = true;
    std::size_t n = 0;
    std::exception_ptr err;
    try {
        n = co_await s.read_some(buf);
    } catch (...) {
        err = std::current_exception();
    }
    pr.result = classify(err);
    pr.moved = n;
}

hop::task<void> probe_write(hop::tcp_stream& s, probe& pr, hop_test::counted) {
    pr.entered = true;
    std::exception_ptr err;
    try {
        co_await write_until_stopped(s, pr.moved);
    } catch (...) {
        err = std::current_exception();
    }
    pr.result = classify(err);
}

hop::task<void> probe_accept(hop::tcp_listener& l, probe& pr, hop_test::counted) {
    pr.entered = true;
    std::exception_ptr err;
    try {
        auto s = co_await l.accept();
    } catch (...) {
        err = std::current_exception();
    }
    pr.result = classify(err);
}

hop::task<void> probe_recv(hop::udp_socket& u, probe& pr, hop_test::counted) {
    char buf[64];
    pr.entered = true;
    std::exception_ptr err;
    try {
        auto r = co_await u.recv_from(buf);
        pr.moved = r.size;
    } catch (...) {
        err = std::current_exception();
    }
    pr.result = classify(err);
}

hop::task<void> nothing() { co_return; }

hop::task<void> cancel_in_flight(hop::io_loop& loop, hop_test::counters& alive) {
    {
        // task_group::cancel: a read and a write in flight on one stream.
        auto p = co_await hop_test::make_pair();
        probe r, w;
        hop::task_group g;
        g.spawn(probe_read(p.client, r, hop_test::counted(alive)));
        g.spawn(probe_write(p.client, w, hop_test::counted(alive)));
        co_await yield_times(loop, 4);
        CHECK(r.entered);
        CHECK(w.entered);
        g.cancel();
        co_await g.wait();
        CHECK_MESSAGE(r.result.kind == outcome::cancelled, "read: " << toString(r.result));
        CHECK_MESSAGE(w.result.kind == outcome::cancelled, "write: " << toString(w.result));
        co_await check_still_usable(p.client, p.server, w.moved);
    }
    CHECK(alive.alive() == 0);
    {
        // future::cancel (a stop request) on a spawned read and write.
        auto p = co_await hop_test::make_pair();
        probe r, w;
        auto fr = loop.spawn(probe_read(p.server, r, hop_test::counted(alive)));
        auto fw = loop.spawn(probe_write(p.server, w, hop_test::counted(alive)));
        co_await yield_times(loop, 4);
        CHECK(r.entered);
        CHECK(w.entered);
        fr.cancel();
        fw.cancel();
        outcome ignored;
        HOP_AWAIT_OUTCOME(ignored, fr);
        HOP_AWAIT_OUTCOME(ignored, fw);
        CHECK_MESSAGE(r.result.kind == outcome::cancelled, "read: " << toString(r.result));
        CHECK_MESSAGE(w.result.kind == outcome::cancelled, "write: " << toString(w.result));
        co_await check_still_usable(p.server, p.client, w.moved);
        // A spawned task's frame goes just after its future completes.
        co_await yield_times(loop, 4);
    }
    CHECK(alive.alive() == 0);
    {
        // when_any: the read loses to a task that ends at once; it is
        // cancelled and has ended by the time when_any returns.
        auto p = co_await hop_test::make_pair();
        probe r;
        std::vector<hop::task<void>> racers;
        racers.push_back(probe_read(p.client, r, hop_test::counted(alive)));
        racers.push_back(nothing());
        auto won = co_await hop::when_any(std::move(racers));
        CHECK(won.index == 1);
        CHECK(r.entered);
        CHECK_MESSAGE(r.result.kind == outcome::cancelled, "read: " << toString(r.result));
        CHECK(alive.alive() == 0);
        co_await p.server.write_all("after"sv);
        std::array<char, 5> got{};
        co_await p.client.read_exact(got);
        CHECK(std::string_view(got.data(), got.size()) == "after");
    }
}

}  // namespace

TEST_CASE("tcp: a read and a write cancelled mid-flight (task_group, future::cancel, when_any) end with "
          "cancelled_error and leave the stream usable") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        hop_test::counters alive;
        {
            hop::io_loop loop{options_for(b)};
            run_on(loop, cancel_in_flight(loop, alive));
        }
        CHECK(alive.alive() == 0);
    });
}

namespace {

hop::task<void> race_reader(hop::tcp_stream& s, std::string& sink, int& cancels, std::atomic<bool>& entered) {
    char buf[64];
    std::size_t n = 0;
    std::exception_ptr err;
    entered.store(true);
    try {
        n = co_await s.read_some(buf);
    } catch (...) {
        err = std::current_exception();
    }
    if (err) {
        const auto o = classify(err);
        if (o.kind == outcome::cancelled) {
            ++cancels;
        } else {
            sink += "<unexpected " + std::string(toString(o).c_str()) + ">";
        }
        co_return;
    }
    sink.append(buf, n);
}

/// Busy-waits up to ~100 us: moves a race's second step around (jitter,
/// not synchronisation).
void jitter(std::mt19937& rng) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(rng() % 100);
    while (std::chrono::steady_clock::now() < until) std::this_thread::yield();
}

hop::task<std::string> read_n(hop::tcp_stream& s, std::size_t n) {
    std::string out(n, '\0');
    co_await s.read_exact(out);
    co_return out;
}

}  // namespace

TEST_CASE("tcp: reads cancelled from another thread while bytes arrive: every byte is read exactly once") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        hop_test::running_loop rl(b);
        auto pf = rl.loop().spawn(hop_test::make_pair());
        REQUIRE(pf.wait_for(guard));
        auto p = std::move(pf).get();
        const int rounds = hop_test::under_tsan ? 300 : 1000;
        std::string sink, sent;
        int cancels = 0;
        std::mt19937 rng(20240611);
        for (int i = 0; i < rounds; ++i) {
            std::atomic<bool> entered{false};
            auto f = rl.loop().spawn(race_reader(p.server, sink, cancels, entered));
            while (!entered.load()) std::this_thread::yield();  // the read is (about to be) in flight
            const char byte = static_cast<char>('a' + i % 26);
            const bool cancel_first = (rng() & 1) != 0;
            if (!cancel_first) REQUIRE(::send(p.client.native_handle(), &byte, 1, MSG_NOSIGNAL) == 1);
            jitter(rng);
            f.cancel();
            if (cancel_first) REQUIRE(::send(p.client.native_handle(), &byte, 1, MSG_NOSIGNAL) == 1);
            sent += byte;
            REQUIRE(f.wait_for(guard));
            // A cancelled read left its byte: take it, so the next round
            // starts with nothing to read (else every read ends at once).
            REQUIRE(sink.size() <= sent.size());
            if (sink.size() < sent.size()) {
                auto rest = rl.loop().spawn(read_n(p.server, sent.size() - sink.size()));
                REQUIRE(rest.wait_for(guard));
                sink += rest.get();
            }
        }
        CHECK(sink == sent);
        MESSAGE(cancels << " of " << rounds << " reads were cancelled");
    });
}

namespace {

hop::task<hop::tcp_listener> bind_here() { co_return hop::tcp_listener::bind(hop::endpoint::loopback_v4(0)); }

hop::task<void> race_accept(hop::tcp_listener& lis, std::vector<hop::tcp_stream>& accepted, int& cancels,
                            std::string& unexpected, std::atomic<bool>& entered) {
    std::exception_ptr err;
    entered.store(true);
    try {
        accepted.push_back(co_await lis.accept());
    } catch (...) {
        err = std::current_exception();
    }
    if (err) {
        const auto o = classify(err);
        if (o.kind == outcome::cancelled) {
            ++cancels;
        } else {
            unexpected += std::string(toString(o).c_str()) + "; ";
        }
    }
}

hop::task<void> accept_rest(hop::tcp_listener& lis, std::vector<hop::tcp_stream>& accepted, std::size_t total) {
    while (accepted.size() < total) accepted.push_back(co_await lis.accept());
}

/// Reads each stream's 4-byte id; returns how many streams carried each.
hop::task<std::vector<int>> read_ids(std::vector<hop::tcp_stream>& streams, std::size_t total) {
    std::vector<int> seen(total, 0);
    for (auto& s : streams) {
        std::uint32_t id = 0;
        co_await s.read_exact(std::span<char>(reinterpret_cast<char*>(&id), sizeof id));
        if (id < total) ++seen[id];
    }
    co_return seen;
}

}  // namespace

TEST_CASE("tcp: accepts cancelled from another thread while clients connect: each connection accepted exactly once") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        std::vector<int> clients;
        {
            hop_test::running_loop rl(b);
            auto lf = rl.loop().spawn(bind_here());
            REQUIRE(lf.wait_for(guard));
            auto lis = std::move(lf).get();
            const auto ep = lis.local_endpoint();
            const int rounds = hop_test::under_tsan ? 150 : 400;
            std::vector<hop::tcp_stream> accepted;
            std::string unexpected;
            int cancels = 0;
            std::mt19937 rng(99);
            for (int i = 0; i < rounds; ++i) {
                std::atomic<bool> entered{false};
                auto f = rl.loop().spawn(race_accept(lis, accepted, cancels, unexpected, entered));
                while (!entered.load()) std::this_thread::yield();  // the accept is (about to be) in flight
                const bool cancel_first = (rng() & 1) != 0;
                auto connect_one = [&] {
                    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                    REQUIRE(fd >= 0);
                    clients.push_back(fd);
                    REQUIRE(::connect(fd, ep.data(), ep.size()) == 0);  // the kernel's backlog completes it
                    const std::uint32_t id = static_cast<std::uint32_t>(i);
                    REQUIRE(::send(fd, &id, sizeof id, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof id));
                };
                if (!cancel_first) connect_one();
                jitter(rng);
                f.cancel();
                if (cancel_first) connect_one();
                REQUIRE(f.wait_for(guard));
                // A cancelled accept left its connection queued: take it, so
                // the next round's accept has to wait.
                REQUIRE(accepted.size() <= static_cast<std::size_t>(i) + 1);
                auto rest = rl.loop().spawn(accept_rest(lis, accepted, static_cast<std::size_t>(i) + 1));
                REQUIRE(rest.wait_for(guard));
            }
            CHECK_MESSAGE(unexpected.empty(), unexpected);
            const std::size_t total = static_cast<std::size_t>(rounds);
            REQUIRE(accepted.size() == total);
            auto ids = rl.loop().spawn(read_ids(accepted, total));
            REQUIRE(ids.wait_for(guard));
            const auto seen = ids.get();
            int once = 0;
            for (int v : seen) once += v == 1;
            CHECK(once == rounds);
            std::vector<int> afds;
            for (auto& s : accepted) afds.push_back(s.native_handle());
            std::sort(afds.begin(), afds.end());
            CHECK_MESSAGE(std::adjacent_find(afds.begin(), afds.end()) == afds.end(), "two streams own one fd");
            MESSAGE(cancels << " of " << rounds << " accepts were cancelled");
            // The streams and the listener close before the loop goes.
            accepted.clear();
            lis.close();
        }
        for (int fd : clients) ::close(fd);
    });
}

// ============================================================================
// Back-pressure
// ============================================================================

namespace {

hop::task<void> counting_writer(hop::tcp_stream& s, std::uint64_t total, std::uint64_t& written, hop::event& done) {
    const auto& pat = hop_test::shared_pattern();
    while (written < total) {
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(1 * MiB, total - written));
        co_await s.write_all(pat.at(written, n));
        written += n;
    }
    done.set();
}

hop::task<void> back_pressure(hop::io_loop& loop, std::uint64_t total) {
    auto p = co_await hop_test::make_pair();
    const auto& pat = hop_test::shared_pattern();
    std::vector<char> buf(1 * MiB);
    hop::event done;
    std::uint64_t written = 0;
    const std::uint64_t before = hop_test::allocated_bytes.load();
    auto wf = loop.spawn(counting_writer(p.client, total, written, done));
    // Nobody reads: the writer cannot finish (the kernel holds far less).
    outcome o;
    HOP_AWAIT_OUTCOME(o, hop::with_timeout(10ms, done.wait()));
    const std::uint64_t written_at_stall = written;
    const std::uint64_t allocated_at_stall = hop_test::allocated_bytes.load() - before;
    // Drain: every byte, in order.
    std::uint64_t got = 0;
    bool in_order = true;
    while (got < total) {
        const std::size_t n = co_await p.server.read_some(buf);
        if (n == 0) break;
        in_order = in_order && pat.matches(got, buf.data(), n);
        got += n;
    }
    co_await wf;
    const std::uint64_t allocated = hop_test::allocated_bytes.load() - before;
    CHECK_MESSAGE(o.kind == outcome::timeout, "the writer did not stall: " << toString(o));
    CHECK(written_at_stall < total);
    CHECK(got == total);
    CHECK(in_order);
    CHECK(written == total);
    // Buffering the data in user memory would allocate about `total`.
    CHECK_MESSAGE(allocated_at_stall < 8 * MiB, allocated_at_stall << " bytes allocated while stalled");
    CHECK_MESSAGE(allocated < 8 * MiB, allocated << " bytes allocated for the whole transfer");
}

}  // namespace

TEST_CASE("tcp: 64 MiB write_all to a peer that does not read stalls without buffering, then arrives in order") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        hop::io_loop loop{options_for(b)};
        run_on(loop, back_pressure(loop, 64 * MiB));
    });
}

// ============================================================================
// EMFILE
// ============================================================================

namespace {

const char* emfile_code_text(int code) {
    switch (code) {
        case 0:
            return "ok";
        case 10:
            return "setrlimit failed";
        case 11:
            return "filling the descriptor table failed with an errno other than EMFILE";
        case 12:
            return "accept with no descriptor free did not throw (it accepted)";
        case 13:
            return "accept with no descriptor free threw std::system_error with an errno other than EMFILE";
        case 14:
            return "accept's EMFILE message does not name the operation (\"accept\")";
        case 15:
            return "an existing connection was not served after EMFILE (client to server)";
        case 16:
            return "an existing connection was not served after EMFILE (server to client)";
        case 17:
            return "accept threw again after a descriptor was freed";
        case 18:
            return "the connection accepted after EMFILE carried the wrong bytes";
        case 19:
            return "the setup (bind, connect, accept, socket) failed";
        case 20:
            return "the raw connect to the listener failed";
        case 21:
            return "accept with no descriptor free threw cancelled_error";
        case 22:
            return "accept with no descriptor free threw something other than std::system_error";
        case 23:
            return "the third listener's accept did not throw EMFILE";
        case 24:
            return "the first connection was not served after the third listener closed";
        case 100:
            return "harness";
        case 101:
            return "the loop stopped before the body ended";
        case 102:
            return "the body threw";
    }
    return "unexpected exit code";
}

hop::task<int> emfile_body() {
    hop::tcp_listener lis;
    hop::tcp_stream c1, s1;
    {
        std::exception_ptr err;
        try {
            lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
            c1 = co_await hop::tcp_stream::connect(lis.local_endpoint());
            s1 = co_await lis.accept();
        } catch (...) {
            err = std::current_exception();
        }
        if (err) co_return 19;
    }
    // The listener under test has not accepted yet: io_uring's multishot
    // accept reads RLIMIT_NOFILE when it is armed, so it must be armed
    // after the limit is lowered (one armed before goes on accepting past
    // the new limit: see `lis`).
    hop::tcp_listener lis2, lis3;
    try {
        lis2 = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
        lis3 = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    } catch (...) {
        co_return 19;
    }
    const auto ep = lis2.local_endpoint();
    const auto ep3 = lis3.local_endpoint();
    // The clients' sockets are made now; they connect once no descriptor
    // is left (a blocking connect: the kernel completes it).
    const int raw = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int raw3 = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (raw < 0 || raw3 < 0) co_return 19;
    rlimit old{};
    ::getrlimit(RLIMIT_NOFILE, &old);
    const auto open = hop_test::open_fds();
    rlimit low = old;
    low.rlim_cur = static_cast<rlim_t>(open.back() + 8);
    if (::setrlimit(RLIMIT_NOFILE, &low) != 0) co_return 10;
    std::vector<int> fillers;
    fillers.reserve(64);
    for (;;) {
        const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            if (errno != EMFILE) co_return 11;
            break;
        }
        fillers.push_back(fd);
    }
    if (::connect(raw, ep.data(), ep.size()) != 0) co_return 20;
    auto c2 = hop::tcp_stream::adopt(raw);

    outcome o;
    HOP_AWAIT_OUTCOME(o, lis2.accept());
    if (o.kind == outcome::none) co_return 12;
    if (o.kind == outcome::cancelled) co_return 21;
    if (o.kind != outcome::system) co_return 22;
    if (o.code != EMFILE) co_return 13;
    if (!contains(o.what, "accept")) co_return 14;

    std::array<char, 4> got{};
    co_await c1.write_all("ping"sv);
    co_await s1.read_exact(got);
    if (std::string_view(got.data(), 4) != "ping") co_return 15;
    co_await s1.write_all("pong"sv);
    co_await c1.read_exact(got);
    if (std::string_view(got.data(), 4) != "pong") co_return 16;

    ::close(fillers.back());
    fillers.pop_back();
    hop::tcp_stream s2;
    {
        std::exception_ptr err;
        try {
            s2 = co_await lis2.accept();
        } catch (...) {
            err = std::current_exception();
        }
        if (err) co_return 17;
    }
    co_await c2.write_all("two!"sv);
    co_await s2.read_exact(got);
    if (std::string_view(got.data(), 4) != "two!") co_return 18;

    // s2 took the freed descriptor: none is left again. A server that
    // closes its listener as soon as accept reports EMFILE (on the stack
    // of the accept's completion): nothing of the listener may be touched
    // after (ASan / TSan builds see it).
    if (::connect(raw3, ep3.data(), ep3.size()) != 0) co_return 20;
    auto c3 = hop::tcp_stream::adopt(raw3);
    outcome o3;
    HOP_AWAIT_OUTCOME(o3, lis3.accept());
    lis3.close();
    if (!is_system(o3, EMFILE)) co_return 23;
    co_await c1.write_all("last"sv);
    co_await s1.read_exact(got);
    if (std::string_view(got.data(), 4) != "last") co_return 24;

    for (int fd : fillers) ::close(fd);
    ::setrlimit(RLIMIT_NOFILE, &old);
    co_return 0;
}

}  // namespace

TEST_CASE("tcp: accept out of descriptors throws EMFILE, the listener and its connections go on (child)") {
    for_each_backend([](hop::backend b) {
        const int status = in_child(b, emfile_body, false);
        CHECK_MESSAGE((WIFEXITED(status) && WEXITSTATUS(status) == 0), describe_status(status, emfile_code_text));
    });
}

// ============================================================================
// UDP
// ============================================================================

namespace {

hop::task<void> udp_exchange(hop::endpoint local) {
    auto a = hop::udp_socket::bind(local);
    auto b = hop::udp_socket::bind(local);
    REQUIRE(a.is_open());
    CHECK(a.native_handle() >= 0);
    const auto aep = a.local_endpoint();
    const auto bep = b.local_endpoint();
    CHECK(aep.port() != 0);
    CHECK(aep.address() == local.address());
    CHECK_FALSE(aep == bep);

    const std::size_t sent = co_await a.send_to("hello"sv, bep);
    CHECK(sent == 5);
    std::array<char, 1500> buf{};
    auto r = co_await b.recv_from(buf);
    CHECK(r.size == 5);
    CHECK(std::string_view(buf.data(), r.size) == "hello");
    CHECK(r.from == aep);
    // Back to where it came from.
    co_await b.send_to("world"sv, r.from);
    auto r2 = co_await a.recv_from(buf);
    CHECK(std::string_view(buf.data(), r2.size) == "world");
    CHECK(r2.from == bep);

    // Datagram boundaries are kept.
    const std::array<std::string_view, 3> msgs{"one"sv, "two"sv, "three"sv};
    for (auto m : msgs) co_await a.send_to(m, bep);
    for (auto m : msgs) {
        auto rm = co_await b.recv_from(buf);
        CHECK(std::string_view(buf.data(), rm.size) == m);
    }
    // An empty datagram.
    co_await a.send_to(std::string_view{}, bep);
    auto re = co_await b.recv_from(buf);
    CHECK(re.size == 0);
    CHECK(re.from == aep);

    // A datagram larger than the buffer: recv_from gives the part that
    // fits and the rest is dropped (the next recv_from gets the next one).
    const auto& pat = hop_test::shared_pattern();
    co_await a.send_to(pat.at(0, 100), bep);
    co_await a.send_to("next"sv, bep);
    std::array<char, 10> small{};
    auto rt = co_await b.recv_from(small);
    CHECK_MESSAGE(rt.size == 10, "recv_from of a 100-byte datagram into a 10-byte buffer returned " << rt.size);
    CHECK(pat.matches(0, small.data(), small.size()));
    CHECK(rt.from == aep);
    auto rn = co_await b.recv_from(buf);
    CHECK(std::string_view(buf.data(), rn.size) == "next");

    // A recv_from that timed out: the socket goes on.
    outcome o;
    HOP_AWAIT_OUTCOME(o, hop::with_timeout(10ms, b.recv_from(buf)));
    CHECK_MESSAGE(o.kind == outcome::timeout, toString(o));
    co_await a.send_to("late"sv, bep);
    auto rl = co_await b.recv_from(buf);
    CHECK(std::string_view(buf.data(), rl.size) == "late");

    // Too large for one datagram.
    std::vector<char> huge(70000);
    outcome big;
    HOP_AWAIT_OUTCOME(big, a.send_to(huge, bep));
    CHECK_MESSAGE(is_system(big, EMSGSIZE), toString(big));

    if (local.is_v4()) {
        // An IPv6 destination on an IPv4 socket.
        const auto v6 = hop::endpoint::loopback_v6(bep.port());
        outcome fam;
        HOP_AWAIT_OUTCOME(fam, a.send_to("x"sv, v6));
        CHECK_MESSAGE((is_system(fam, EAFNOSUPPORT) || is_system(fam, EINVAL)), toString(fam));
        MESSAGE("send_to an IPv6 endpoint on an IPv4 socket: " << toString(fam));
    }
}

hop::task<void> udp_in_use() {
    const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    auto any = hop::endpoint::loopback_v4(0);
    REQUIRE(::bind(fd, any.data(), any.size()) == 0);
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0);
    const auto ep = hop::endpoint::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
    outcome o;
    try {
        (void)hop::udp_socket::bind(ep);
    } catch (...) {
        o = classify(std::current_exception());
    }
    ::close(fd);
    CHECK_MESSAGE(is_system(o, EADDRINUSE), toString(o));
    CHECK_MESSAGE(contains(o.what, ep.to_string()), o.what);
    co_return;
}

}  // namespace

TEST_CASE("udp: send_to / recv_from, from is the sender, boundaries, truncation, EMSGSIZE, wrong family") {
    for_each_backend([](hop::backend b) {
        for (const auto& local : hop_test::loopbacks()) {
            INFO("on " << local.address());
            fd_leak_check fds;
            run_on(b, udp_exchange(local));
        }
        fd_leak_check fds;
        run_on(b, udp_in_use());
    });
}

// ============================================================================
// Bad input
// ============================================================================

namespace {

template <class F>
outcome outcome_of(F&& fn) {
    try {
        fn();
    } catch (...) {
        return classify(std::current_exception());
    }
    return {};
}

#define CHECK_EBADF(o, name)                                                        \
    do {                                                                            \
        const outcome& o_ = (o);                                                    \
        CHECK_MESSAGE(is_system(o_, EBADF), name << ": " << toString(o_));          \
        CHECK_MESSAGE(contains(o_.what, name), name << " not named in: " << o_.what); \
    } while (0)

hop::task<void> closed_stream_ops(hop::tcp_stream& s) {
    char buf[8];
    outcome o;
    HOP_AWAIT_OUTCOME(o, s.read_some(buf));
    CHECK_EBADF(o, "read_some");
    HOP_AWAIT_OUTCOME(o, s.read_exact(buf));
    CHECK_EBADF(o, "read_exact");
    HOP_AWAIT_OUTCOME(o, s.write_some("x"sv));
    CHECK_EBADF(o, "write_some");
    HOP_AWAIT_OUTCOME(o, s.write_all("x"sv));
    CHECK_EBADF(o, "write_all");
    CHECK_EBADF(outcome_of([&] { s.shutdown_write(); }), "shutdown_write");
    CHECK_EBADF(outcome_of([&] { s.set_nodelay(true); }), "set_nodelay");
    CHECK_EBADF(outcome_of([&] { (void)s.local_endpoint(); }), "local_endpoint");
    CHECK_EBADF(outcome_of([&] { (void)s.remote_endpoint(); }), "remote_endpoint");
    CHECK_FALSE(s.is_open());
    CHECK(s.native_handle() < 0);
    s.close();  // allowed on a closed stream
}

hop::task<void> bad_input() {
    {
        hop::tcp_stream none;
        co_await closed_stream_ops(none);
    }
    {
        auto p = co_await hop_test::make_pair();
        p.client.close();
        co_await closed_stream_ops(p.client);
        hop::tcp_stream moved = std::move(p.server);
        CHECK(moved.is_open());
        co_await closed_stream_ops(p.server);
    }
    {
        hop::tcp_listener none;
        CHECK_FALSE(none.is_open());
        outcome o;
        HOP_AWAIT_OUTCOME(o, none.accept());
        CHECK_EBADF(o, "accept");
        CHECK_EBADF(outcome_of([&] { (void)none.local_endpoint(); }), "local_endpoint");
        none.close();
    }
    {
        hop::udp_socket none;
        CHECK_FALSE(none.is_open());
        char buf[8];
        outcome o;
        HOP_AWAIT_OUTCOME(o, none.send_to("x"sv, hop::endpoint::loopback_v4(9)));
        CHECK_EBADF(o, "send_to");
        HOP_AWAIT_OUTCOME(o, none.recv_from(buf));
        CHECK_EBADF(o, "recv_from");
        CHECK_EBADF(outcome_of([&] { (void)none.local_endpoint(); }), "local_endpoint");
        none.close();
    }
    for (int backlog : {0, -1, std::numeric_limits<int>::min()}) {
        CAPTURE(backlog);
        hop::listen_options opts;
        opts.backlog = backlog;
        const auto o = outcome_of([&] { (void)hop::tcp_listener::bind(hop::endpoint::loopback_v4(0), opts); });
        CHECK_MESSAGE(o.kind == outcome::invalid, toString(o));
        CHECK_MESSAGE(contains(o.what, "backlog"), o.what);
    }
    {
        outcome o;
        HOP_AWAIT_OUTCOME(o, hop::tcp_stream::connect("", 80));
        CHECK_MESSAGE(o.kind == outcome::invalid, "connect(\"\", 80): " << toString(o));
        const auto a = outcome_of([] { (void)hop::tcp_stream::adopt(-1); });
        CHECK_MESSAGE(a.kind == outcome::invalid, "adopt(-1): " << toString(a));
    }
}

hop::task<void> address_in_use() {
    auto a = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    const auto ep = a.local_endpoint();
    const auto o = outcome_of([&] { (void)hop::tcp_listener::bind(ep); });
    CHECK_MESSAGE(is_system(o, EADDRINUSE), toString(o));
    CHECK_MESSAGE(contains(o.what, ep.to_string()), o.what);

    // reuse_port: two listeners share a port when both ask.
    hop::listen_options shared;
    shared.reuse_port = true;
    auto x = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0), shared);
    const auto xo = outcome_of([&] {
        auto y = hop::tcp_listener::bind(x.local_endpoint(), shared);
        CHECK(y.local_endpoint() == x.local_endpoint());
    });
    CHECK_MESSAGE(xo.kind == outcome::none, toString(xo));
    co_return;
}

}  // namespace

TEST_CASE("bad input: ops on closed sockets (EBADF naming the op), bad backlog, empty host, adopt(-1)") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        run_on(b, bad_input());
    });
}

TEST_CASE("listener: binding an address in use throws EADDRINUSE naming it; reuse_port shares a port") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        run_on(b, address_in_use());
    });
}

// ============================================================================
// Closing under a pending operation; destroying the loop
// ============================================================================

namespace {

// net.hpp: "Operations in flight on it end (cancelled_error)".
void check_ended_by_close(const probe& pr, const char* what) {
    CHECK_MESSAGE(pr.result.kind == outcome::cancelled,
                  what << " pending when its socket was closed: " << toString(pr.result));
}

hop::task<void> close_while_pending(hop::io_loop& loop, hop_test::counters& alive) {
    {
        auto p = co_await hop_test::make_pair();
        probe r;
        auto f = loop.spawn(probe_read(p.server, r, hop_test::counted(alive)));
        co_await yield_times(loop, 4);
        CHECK(r.entered);
        p.server.close();
        outcome ignored;
        HOP_AWAIT_OUTCOME(ignored, f);
        check_ended_by_close(r, "a read");
        char buf[4];
        const std::size_t n = co_await p.client.read_some(buf);
        CHECK(n == 0);  // the peer sees the end
    }
    {
        auto p = co_await hop_test::make_pair();
        probe r, w;
        auto fr = loop.spawn(probe_read(p.client, r, hop_test::counted(alive)));
        auto fw = loop.spawn(probe_write(p.client, w, hop_test::counted(alive)));
        co_await yield_times(loop, 4);
        CHECK(r.entered);
        CHECK(w.entered);
        p.client.close();
        outcome ignored;
        HOP_AWAIT_OUTCOME(ignored, fr);
        HOP_AWAIT_OUTCOME(ignored, fw);
        check_ended_by_close(r, "a read (with a write)");
        check_ended_by_close(w, "a write (with a read)");
    }
    {
        auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
        probe a;
        auto f = loop.spawn(probe_accept(lis, a, hop_test::counted(alive)));
        co_await yield_times(loop, 4);
        CHECK(a.entered);
        lis.close();
        outcome ignored;
        HOP_AWAIT_OUTCOME(ignored, f);
        check_ended_by_close(a, "an accept");
    }
    {
        auto u = hop::udp_socket::bind(hop::endpoint::loopback_v4(0));
        probe r;
        auto f = loop.spawn(probe_recv(u, r, hop_test::counted(alive)));
        co_await yield_times(loop, 4);
        CHECK(r.entered);
        u.close();
        outcome ignored;
        HOP_AWAIT_OUTCOME(ignored, f);
        check_ended_by_close(r, "a recv_from");
    }
}

}  // namespace

TEST_CASE("closing a socket under a pending read, write, accept or recv_from ends that operation") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        hop_test::counters alive;
        {
            hop::io_loop loop{options_for(b)};
            run_on(loop, close_while_pending(loop, alive));
        }
        CHECK(alive.alive() == 0);
    });
}

namespace {

hop::task<void> close_listener_with_queue(hop::io_loop& loop) {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await hop_test::connect_pair(lis);  // io_uring: arms the multishot accept
    std::vector<hop::tcp_stream> clients;
    for (int i = 0; i < 5; ++i) clients.push_back(co_await hop::tcp_stream::connect(lis.local_endpoint()));
    co_await yield_times(loop, 4);  // io_uring may take them from the kernel now, unasked
    lis.close();
    // Nobody accepted them: each is closed (FIN) or reset with the listener.
    for (auto& c : clients) {
        char buf[4];
        std::size_t n = 99;
        std::exception_ptr err;
        try {
            n = co_await c.read_some(buf);
        } catch (...) {
            err = std::current_exception();
        }
        const auto o = classify(err);
        CHECK_MESSAGE((n == 0 || is_system(o, ECONNRESET)), "read_some gave " << n << ", " << toString(o));
    }
    // The accepted connection is not affected.
    co_await p.client.write_all("still"sv);
    std::array<char, 5> got{};
    co_await p.server.read_exact(got);
    CHECK(std::string_view(got.data(), got.size()) == "still");
}

hop::task<void> accept_burst(hop::io_loop& loop, int n) {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto first = co_await hop_test::connect_pair(lis);  // io_uring: arms the multishot accept
    // A burst nobody accepts yet: each client connects and sends its number.
    std::vector<hop::tcp_stream> clients;
    for (int i = 0; i < n; ++i) {
        clients.push_back(co_await hop::tcp_stream::connect(lis.local_endpoint()));
        const std::uint32_t id = static_cast<std::uint32_t>(i);
        co_await clients.back().write_all(std::span<const char>(reinterpret_cast<const char*>(&id), sizeof id));
    }
    co_await yield_times(loop, 8);
    // Now each connection is accepted exactly once, with its own fd.
    std::vector<hop::tcp_stream> accepted;
    std::vector<int> seen(static_cast<std::size_t>(n), 0);
    std::vector<int> fds;
    for (int i = 0; i < n; ++i) {
        accepted.push_back(co_await lis.accept());
        const int fd = accepted.back().native_handle();
        if (std::find(fds.begin(), fds.end(), fd) != fds.end()) {
            // Two streams own one fd (it is closed twice); reading it again
            // would wait for an id that never comes.
            FAIL_CHECK("accept #" << i << " returned fd " << fd << ", which an earlier accept returned too");
            co_return;
        }
        fds.push_back(fd);
        std::uint32_t id = 0;
        co_await accepted.back().read_exact(std::span<char>(reinterpret_cast<char*>(&id), sizeof id));
        REQUIRE(id < static_cast<std::uint32_t>(n));
        ++seen[id];
    }
    int once = 0;
    for (int v : seen) once += v == 1;
    CHECK(once == n);
}

}  // namespace

TEST_CASE("a burst of 300 connections nobody accepts yet: each is accepted exactly once, with its own fd") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        hop::io_loop loop{options_for(b)};
        run_on(loop, accept_burst(loop, 300));
    });
}

TEST_CASE("a listener closed with connections nobody accepted closes them (their clients see the end)") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        hop::io_loop loop{options_for(b)};
        run_on(loop, close_listener_with_queue(loop));
    });
}

namespace {

struct doomed_state {
    int entered = 0;
    int cancelled = 0;
    int other = 0;
    int retry_cancelled = 0;
    std::vector<std::string> others;
};

void note_end(doomed_state& st, std::exception_ptr err) {
    const auto o = classify(err);
    if (o.kind == outcome::cancelled) {
        ++st.cancelled;
    } else {
        ++st.other;
        st.others.push_back(toString(o).c_str());
    }
}

hop::task<void> doomed_read(hop::tcp_stream s, doomed_state& st, hop_test::counted) {
    char buf[64];
    ++st.entered;
    std::exception_ptr err;
    try {
        (void)co_await s.read_some(buf);
    } catch (...) {
        err = std::current_exception();
    }
    note_end(st, err);
    // More IO while the loop goes away ends at once, too.
    std::exception_ptr again;
    try {
        (void)co_await s.read_some(buf);
    } catch (...) {
        again = std::current_exception();
    }
    if (classify(again).kind == outcome::cancelled) ++st.retry_cancelled;
    if (err) std::rethrow_exception(err);
}

hop::task<void> doomed_read_exact(hop::tcp_stream s, doomed_state& st, hop_test::counted) {
    std::array<char, 64> buf{};
    ++st.entered;
    std::exception_ptr err;
    try {
        co_await s.read_exact(buf);
    } catch (...) {
        err = std::current_exception();
    }
    note_end(st, err);
    if (err) std::rethrow_exception(err);
}

hop::task<void> doomed_write(hop::tcp_stream s, doomed_state& st, hop_test::counted) {
    ++st.entered;
    std::uint64_t written = 0;
    std::exception_ptr err;
    try {
        co_await write_until_stopped(s, written);
    } catch (...) {
        err = std::current_exception();
    }
    note_end(st, err);
    if (err) std::rethrow_exception(err);
}

hop::task<void> doomed_accept(hop::tcp_listener l, doomed_state& st, hop_test::counted) {
    ++st.entered;
    std::exception_ptr err;
    try {
        auto s = co_await l.accept();
    } catch (...) {
        err = std::current_exception();
    }
    note_end(st, err);
    if (err) std::rethrow_exception(err);
}

hop::task<void> doomed_recv(hop::udp_socket u, doomed_state& st, hop_test::counted) {
    char buf[64];
    ++st.entered;
    std::exception_ptr err;
    try {
        (void)co_await u.recv_from(buf);
    } catch (...) {
        err = std::current_exception();
    }
    note_end(st, err);
    if (err) std::rethrow_exception(err);
}

/// Holds a socket in its frame, asleep (timers end when the loop goes).
hop::task<void> doomed_hold([[maybe_unused]] hop::tcp_stream s, doomed_state& st, hop_test::counted) {
    ++st.entered;
    std::exception_ptr err;
    try {
        co_await hop::sleep_for(1h);
    } catch (...) {
        err = std::current_exception();
    }
    note_end(st, err);
    if (err) std::rethrow_exception(err);
}

struct doomed_kit {
    hop::tcp_listener lis;
    stream_pair a, b, c;
    hop::udp_socket u;
};

hop::task<doomed_kit> doomed_setup() {
    doomed_kit k;
    k.lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    k.a = co_await hop_test::connect_pair(k.lis);
    k.b = co_await hop_test::connect_pair(k.lis);
    k.c = co_await hop_test::connect_pair(k.lis);
    co_await k.c.client.write_all("half"sv);  // c.server's read_exact gets part of its buffer
    k.u = hop::udp_socket::bind(hop::endpoint::loopback_v4(0));
    co_return k;
}

}  // namespace

TEST_CASE("destroying a loop with sockets mid-operation: the coroutines unwind, nothing leaks, every fd is closed") {
    for_each_backend([](hop::backend b) {
        fd_leak_check fds;
        hop_test::counters alive;
        doomed_state st;
        std::vector<hop::future<void>> fs;
        constexpr int ops = 8;
        {
            hop_test::abort_if_stuck stuck("the io_loop destructor, with sockets mid-operation");
            hop::io_loop loop{options_for(b)};
            auto kit = run_on(loop, doomed_setup());
            fs.push_back(loop.spawn(doomed_read(std::move(kit.a.server), st, hop_test::counted(alive))));
            fs.push_back(loop.spawn(doomed_read(std::move(kit.a.client), st, hop_test::counted(alive))));
            fs.push_back(loop.spawn(doomed_write(std::move(kit.b.client), st, hop_test::counted(alive))));
            fs.push_back(loop.spawn(doomed_hold(std::move(kit.b.server), st, hop_test::counted(alive))));
            fs.push_back(loop.spawn(doomed_read_exact(std::move(kit.c.server), st, hop_test::counted(alive))));
            fs.push_back(loop.spawn(doomed_hold(std::move(kit.c.client), st, hop_test::counted(alive))));
            fs.push_back(loop.spawn(doomed_accept(std::move(kit.lis), st, hop_test::counted(alive))));
            fs.push_back(loop.spawn(doomed_recv(std::move(kit.u), st, hop_test::counted(alive))));
            for (int i = 0; i < 1000 && st.entered < ops; ++i) loop.poll();
            REQUIRE(st.entered == ops);
            for (int i = 0; i < 4; ++i) loop.poll();
            CHECK(alive.alive() == ops);
            CHECK(st.cancelled + st.other == 0);  // all still waiting
        }
        CHECK(alive.alive() == 0);
        CHECK(st.cancelled == ops);
        CHECK_MESSAGE(st.other == 0, "ended otherwise: " << (st.others.empty() ? std::string() : st.others.front()));
        CHECK(st.retry_cancelled == 2);
        for (auto& f : fs) {
            REQUIRE(f.done());
            CHECK_THROWS_AS(f.get(), hop::cancelled_error);
        }
    });
}

// ============================================================================
// A cpu_pool coroutine using a loop's sockets
// ============================================================================

namespace {

struct affinity_report {
    int checks = 0;
    int on_pool = 0;
    outcome timeout;
    std::string data;
    std::string echoed;
};

void note_affinity(hop::cpu_pool& pool, affinity_report& rep) {
    ++rep.checks;
    if (pool.running_in_this_thread()) ++rep.on_pool;
}

hop::task<void> pool_side(hop::cpu_pool& pool, hop::tcp_stream& s, hop::tcp_listener& lis, affinity_report& rep) {
    co_await pool.schedule();
    note_affinity(pool, rep);
    co_await s.write_all("ping"sv);
    note_affinity(pool, rep);
    std::array<char, 4> got{};
    co_await s.read_exact(got);
    note_affinity(pool, rep);
    rep.data.append(got.data(), got.size());
    // A timeout: its timer runs on the default loop, the read on the
    // socket's loop; the caller comes back to the pool.
    HOP_AWAIT_OUTCOME(rep.timeout, hop::with_timeout(10ms, s.read_some(got)));
    note_affinity(pool, rep);
    co_await s.write_all("more"sv);
    note_affinity(pool, rep);
    co_await s.read_exact(got);
    note_affinity(pool, rep);
    rep.data.append(got.data(), got.size());
    // An accept from the pool on the loop's listener: the stream is bound
    // to the listener's loop, and its operations resume on the pool.
    auto a = co_await lis.accept();
    note_affinity(pool, rep);
    auto back = co_await read_to_end(a);
    note_affinity(pool, rep);
    rep.echoed.assign(back.begin(), back.end());
}

hop::task<void> loop_side(hop::tcp_stream& s, hop::endpoint ep) {
    std::array<char, 4> buf{};
    co_await s.read_exact(buf);
    co_await s.write_all("pong"sv);
    co_await s.read_exact(buf);
    co_await s.write_all("data"sv);
    auto c = co_await hop::tcp_stream::connect(ep);
    co_await c.write_all("to the pool's accept"sv);
    c.shutdown_write();
    char one[1];
    const std::size_t n = co_await c.read_some(one);
    CHECK(n == 0);
}

hop::task<void> affinity(hop::cpu_pool& pool, affinity_report& rep) {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto p = co_await hop_test::connect_pair(lis);
    auto f = hop::spawn(pool, pool_side(pool, p.client, lis, rep));
    co_await loop_side(p.server, lis.local_endpoint());
    co_await f;
}

/// A connection made from the pool (bound to the default loop).
hop::task<std::string> pool_connects(hop::cpu_pool& pool, hop::endpoint ep, affinity_report& rep) {
    co_await pool.schedule();
    std::string back;
    {
        auto c = co_await hop::tcp_stream::connect(ep);
        note_affinity(pool, rep);
        co_await c.write_all("from the pool"sv);
        note_affinity(pool, rep);
        c.shutdown_write();
        auto all = co_await read_to_end(c);
        note_affinity(pool, rep);
        back.assign(all.begin(), all.end());
    }
    // The close was posted to the default loop; a trip there runs it.
    co_await hop::default_loop().schedule();
    co_return back;
}

hop::task<void> echo_one(hop::endpoint local, hop::cpu_pool& pool, affinity_report& rep, std::string& back) {
    auto lis = hop::tcp_listener::bind(local);
    auto f = hop::spawn(pool, pool_connects(pool, lis.local_endpoint(), rep));
    auto s = co_await lis.accept();
    co_await echo_handler(std::move(s));
    back = co_await f;
}

}  // namespace

TEST_CASE("socket operations awaited on a cpu_pool resume on the pool") {
    for_each_backend([](hop::backend b) {
        (void)hop::default_loop();  // its fds live as long as the process
        fd_leak_check fds;
        hop::cpu_pool pool{2};
        {
            affinity_report rep;
            run_on(b, affinity(pool, rep));
            CHECK(rep.checks == 8);
            CHECK(rep.on_pool == rep.checks);
            CHECK_MESSAGE(rep.timeout.kind == outcome::timeout, toString(rep.timeout));
            CHECK(rep.data == "pongdata");
            CHECK(rep.echoed == "to the pool's accept");
        }
        {
            affinity_report rep;
            std::string back;
            run_on(b, echo_one(hop::endpoint::loopback_v4(0), pool, rep, back));
            CHECK(rep.checks == 3);
            CHECK(rep.on_pool == rep.checks);
            CHECK(back == "from the pool");
        }
    });
}

}  // TEST_SUITE
