// hop::http::server on an io_pool (serve(io_pool&)), both accept modes,
// with real peers (curl, wrk) and plain blocking client sockets: requests
// served on every loop, graceful shutdown with connections on every loop,
// a handler failing on one loop, the connection cap over all loops, the
// balance of 1,000 connections, out of descriptors, and bad input.
// Runs once per backend (HOP_BACKEND), like every loop test.
#include <hop/http/server.hpp>

#include <hop/cpu_pool.hpp>
#include <hop/io_pool.hpp>
#include <hop/net.hpp>
#include <hop/sync.hpp>
#include <hop/task.hpp>

#include "support/backend.hpp"
#include "support/child.hpp"
#include "support/http_peers.hpp"
#include "support/http_server_fixture.hpp"
#include "support/sockets.hpp"
#include "support/tls_certs.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using hop_test::for_each_backend;
using hop_test::peer_process;
using hop_test::peer_result;

namespace {

constexpr std::size_t max_loops = 4;

hop::io_pool_options pool_options(hop::backend b, std::size_t loops) {
    hop::io_pool_options o;
    o.loops = loops;
    o.loop = hop_test::options_for(b);
    return o;
}

std::string mode_name(hop::accept_mode m) {
    return m == hop::accept_mode::least_loaded ? "least_loaded" : "reuse_port";
}

constexpr hop::accept_mode both_modes[] = {hop::accept_mode::least_loaded, hop::accept_mode::reuse_port};

/// Spins (yielding) until `done()`; false if the guard ran out first. For
/// waits on other threads' progress that no event reports.
template <class Pred>
bool wait_until(Pred done) {
    const auto until = std::chrono::steady_clock::now() + hop_test::socket_guard;
    while (!done()) {
        if (std::chrono::steady_clock::now() > until) return false;
        std::this_thread::yield();
    }
    return true;
}

/// The pool test application. Every request is counted on the loop that
/// serves it (io_pool::this_index(), which throws on any other thread):
///   /where        "N": the index of the loop that served it
///   /slow         waits for `release`, then "slow N"
///   /throw        throws on loop 1; "N" elsewhere
///   /size/N       N bytes of 'x'
struct pool_app {
    hop::io_pool* pool = nullptr;
    std::array<std::atomic<int>, max_loops> served{};
    std::array<std::atomic<int>, max_loops> slow_on{};
    std::atomic<int> slow_in{0};
    hop::event release;

    hop::task<hop::http::response> operator()(hop::http::request& req) {
        const std::size_t i = pool->this_index();
        served.at(i).fetch_add(1);
        hop::http::response r;
        r.headers.add("Content-Type", "text/plain");
        if (req.url == "/slow") {
            slow_on.at(i).fetch_add(1);
            slow_in.fetch_add(1);
            co_await release.wait();
            r.body = "slow " + std::to_string(pool->this_index());
            co_return r;
        }
        if (req.url == "/throw" && i == 1) throw std::runtime_error("thrown on loop 1");
        if (req.url.rfind("/size/", 0) == 0) {
            r.body.assign(std::stoul(req.url.substr(6)), 'x');
            co_return r;
        }
        r.body = std::to_string(i);
        co_return r;
    }

    int total_served() const {
        int n = 0;
        for (const auto& s : served) n += s.load();
        return n;
    }
};

/// The handler bind() stores: a copyable callable that calls `app`.
auto handler_for(pool_app& app) {
    return [&app](hop::http::request& req) -> hop::task<hop::http::response> { return app(req); };
}

hop::http::server_options pool_server_options(hop::accept_mode mode) {
    auto o = hop_test::test_options();
    o.accept = mode;
    return o;
}

/// A response read off a blocking socket.
struct plain_response {
    int status = 0;  // 0: the connection ended first
    std::string head;
    std::string body;
};

/// A blocking client connection to 127.0.0.1:port, with a receive guard so
/// a read nobody answers fails instead of hanging.
class client {
public:
    explicit client(std::uint16_t port) {
        m_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(m_fd >= 0);
        timeval tv{static_cast<time_t>(hop_test::socket_guard.count()), 0};
        ::setsockopt(m_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        const auto ep = hop::endpoint::loopback_v4(port);
        int rc;
        while ((rc = ::connect(m_fd, ep.data(), ep.size())) != 0 && errno == EINTR) {
        }
        REQUIRE_MESSAGE(rc == 0, "connect to port " << port << ": " << std::string(std::strerror(errno)));
    }
    ~client() { close(); }
    client(const client&) = delete;
    client& operator=(const client&) = delete;

    void close() {
        if (m_fd >= 0) ::close(m_fd);
        m_fd = -1;
    }
    int fd() const { return m_fd; }

    void send(const std::string& bytes) {
        std::size_t done = 0;
        while (done < bytes.size()) {
            const auto n = ::send(m_fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            REQUIRE_MESSAGE(n > 0, "send: " << std::string(std::strerror(errno)));
            done += static_cast<std::size_t>(n);
        }
    }
    void send_get(const std::string& path) { send("GET " + path + " HTTP/1.1\r\nHost: pool\r\n\r\n"); }

    /// One response (the server always sends Content-Length here).
    plain_response read_response() {
        plain_response r;
        std::size_t end;
        while ((end = m_buffered.find("\r\n\r\n")) == std::string::npos) {
            if (!more()) return r;
        }
        r.head = m_buffered.substr(0, end + 2);
        m_buffered.erase(0, end + 4);
        r.status = std::atoi(r.head.c_str() + 9);
        std::size_t length = 0;
        const auto cl = r.head.find("Content-Length: ");
        if (cl != std::string::npos) length = std::strtoul(r.head.c_str() + cl + 16, nullptr, 10);
        while (m_buffered.size() < length) {
            if (!more()) break;
        }
        r.body = m_buffered.substr(0, std::min(length, m_buffered.size()));
        m_buffered.erase(0, r.body.size());
        return r;
    }
    plain_response get(const std::string& path) {
        send_get(path);
        return read_response();
    }
    /// The index of the loop serving this connection (a /where request).
    int loop() {
        const auto r = get("/where");
        REQUIRE_MESSAGE(r.status == 200, "GET /where: status " << r.status << " " << r.head);
        return std::atoi(r.body.c_str());
    }
    /// True if the server closes the connection with nothing more sent.
    bool closed_silently() {
        if (!m_buffered.empty()) return false;
        return !more() && m_buffered.empty() && m_last_read == 0;
    }

private:
    bool more() {
        char buf[16384];
        ssize_t n;
        while ((n = ::recv(m_fd, buf, sizeof buf, 0)) < 0 && errno == EINTR) {
        }
        m_last_read = n;
        if (n <= 0) return false;
        m_buffered.append(buf, static_cast<std::size_t>(n));
        return true;
    }

    int m_fd = -1;
    std::string m_buffered;
    ssize_t m_last_read = 1;
};

/// Opens connections until each of the `loops` loops serves at least one;
/// returns one per loop, in loop order. Connections landing on a loop that
/// has one already are closed. The guard turns a bug into a failed check
/// (with reuse_port, the kernel's hash decides, and a loop whose listener
/// serve() has not bound yet gets none: so a time bound, not a count).
std::vector<std::unique_ptr<client>> one_per_loop(std::uint16_t port, std::size_t loops) {
    std::vector<std::unique_ptr<client>> by_loop(loops);
    std::size_t have = 0;
    int attempt = 0;
    const auto until = std::chrono::steady_clock::now() + hop_test::socket_guard;
    for (; have < loops && std::chrono::steady_clock::now() < until; ++attempt) {
        auto c = std::make_unique<client>(port);
        const int i = c->loop();
        REQUIRE(i >= 0);
        REQUIRE(static_cast<std::size_t>(i) < loops);
        if (!by_loop[i]) {
            by_loop[i] = std::move(c);
            ++have;
        }
    }
    REQUIRE_MESSAGE(have == loops, attempt << " connections reached only " << have << " of " << loops << " loops");
    return by_loop;
}

/// How many sockets listen on 127.0.0.1:`port` (IPv4, from /proc/net/tcp).
std::size_t listeners_on(std::uint16_t port) {
    std::ifstream table("/proc/net/tcp");
    std::string line;
    std::getline(table, line);  // the column names
    char suffix[8];
    std::snprintf(suffix, sizeof suffix, ":%04X", static_cast<unsigned>(port));
    std::size_t n = 0;
    while (std::getline(table, line)) {
        std::istringstream fields(line);
        std::string slot, local, remote, state;
        fields >> slot >> local >> remote >> state;
        if (state == "0A" && local.size() > 5 && local.ends_with(suffix)) ++n;  // 0A: LISTEN
    }
    return n;
}

/// Waits until serve(pool) listens on every socket it will: with
/// accept_mode::reuse_port it binds one more per loop when it starts, and a
/// client started before that lands on the first loop only.
void wait_listening(const hop::http::server& srv, hop::accept_mode mode, std::size_t loops) {
    const std::size_t want = mode == hop::accept_mode::reuse_port ? loops : 1;
    const std::uint16_t port = srv.local_endpoint().port();
    REQUIRE_MESSAGE(wait_until([&] { return listeners_on(port) >= want; }),
                    "serve() listens on " << listeners_on(port) << " sockets of " << want);
}

/// True if a connect to 127.0.0.1:port is refused.
bool connect_refused(std::uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const auto ep = hop::endpoint::loopback_v4(port);
    const int rc = ::connect(fd, ep.data(), ep.size());
    const int e = errno;
    ::close(fd);
    return rc != 0 && e == ECONNREFUSED;
}

/// Stops `serving` (a serve(io_pool&) future) and checks that it returned
/// normally, within the guard.
void stop_and_check(hop::future<void>& serving) {
    serving.cancel();
    REQUIRE_MESSAGE(serving.wait_for(hop_test::socket_guard), "serve(io_pool&) did not return after its stop");
    CHECK_FALSE(serving.cancelled());
    CHECK_NOTHROW(serving.get());
}

std::vector<int> lines_as_ints(const std::string& text) {
    std::vector<int> v;
    for (const auto& l : hop_test::lines_of(text)) {
        if (!l.empty()) v.push_back(std::atoi(l.c_str()));
    }
    return v;
}

}  // namespace

TEST_SUITE("http_pool") {

// ============================================================================
// Real peers
// ============================================================================

TEST_CASE("curl: 30 connections to a server on 2 and 3 loops are served on every loop, both accept modes") {
    for_each_backend([](hop::backend b) {
        for (std::size_t loops : {std::size_t(2), std::size_t(3)}) {
            for (hop::accept_mode mode : both_modes) {
                INFO(loops << " loops, " << mode_name(mode));
                hop::io_pool pool{pool_options(b, loops)};
                pool_app app;
                app.pool = &pool;
                auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler_for(app),
                                                   pool_server_options(mode));
                // serve(io_pool&) awaited from a pool loop (2 loops: loop 1
                // accepts) and from a loop outside the pool (3: loop 0 does).
                std::unique_ptr<hop_test::running_loop> outside;
                hop::future<void> serving;
                if (loops == 2) {
                    serving = pool.spawn_on(1, srv.serve(pool));
                } else {
                    outside = std::make_unique<hop_test::running_loop>(b);
                    serving = outside->loop().spawn(srv.serve(pool));
                }
                wait_listening(srv, mode, loops);
                // "Connection: close": a new connection for each URL.
                std::vector<std::string> argv{"curl", "-sS", "-H", "Connection: close", "-w", "\n"};
                const std::string url = hop_test::url_of(srv, "/where");
                for (int i = 0; i < 30; ++i) argv.push_back(url);
                peer_process curl(argv);
                const peer_result r = curl.wait();
                REQUIRE_MESSAGE(r.exited_ok(), r.describe());
                const auto where = lines_as_ints(r.out);
                CHECK(where.size() == 30);
                std::set<int> distinct(where.begin(), where.end());
                CHECK_MESSAGE(distinct.size() == loops, r.out);
                for (std::size_t i = 0; i < loops; ++i) {
                    CHECK(app.served[i].load() == std::count(where.begin(), where.end(), static_cast<int>(i)));
                }
                CHECK(srv.stats().accepted == 30);
                CHECK(srv.stats().requests == 30);
                stop_and_check(serving);
                CHECK(srv.stats().connections == 0);
            }
        }
    });
}

TEST_CASE("wrk -t2 -c40 against 2 loops: no errors, only 2xx, both loops serve; both accept modes") {
    for_each_backend([](hop::backend b) {
        for (hop::accept_mode mode : both_modes) {
            INFO(mode_name(mode));
            hop::io_pool pool{pool_options(b, 2)};
            pool_app app;
            app.pool = &pool;
            auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler_for(app),
                                               pool_server_options(mode));
            auto serving = pool.spawn_on(0, srv.serve(pool));
            wait_listening(srv, mode, 2);
            peer_process wrk({"wrk", "-t2", "-c40", "-d1s", hop_test::url_of(srv, "/size/4096")});
            const peer_result r = wrk.wait();
            const long requests = hop_test::wrk_clean_requests(r);
            CHECK(app.served[0].load() > 0);
            CHECK(app.served[1].load() > 0);
            CHECK(static_cast<long>(app.total_served()) >= requests);
            CHECK(srv.stats().accepted >= 40);  // wrk may open one more to try the address
            stop_and_check(serving);
        }
    });
}

TEST_CASE("wrk over https against 2 loops (least_loaded): the handshake runs on the loop the connection went to") {
    for_each_backend([](hop::backend b) {
        const auto& certs = hop_test::test_certs();
        hop::io_pool pool{pool_options(b, 2)};
        pool_app app;
        app.pool = &pool;
        auto o = pool_server_options(hop::accept_mode::least_loaded);
        o.tls = hop::tls::context::server(certs.localhost.cert, certs.localhost.key);
        o.log = [](std::string_view) {};  // wrk's first connection, closed mid-handshake, is logged
        auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler_for(app), o);
        auto serving = pool.spawn_on(0, srv.serve(pool));
        const std::string url = "https://127.0.0.1:" + std::to_string(srv.local_endpoint().port()) + "/size/1000";
        peer_process wrk({"wrk", "-t2", "-c10", "-d1s", url});
        const peer_result r = wrk.wait();
        hop_test::wrk_clean_requests(r);
        CHECK(app.served[0].load() > 0);
        CHECK(app.served[1].load() > 0);
        stop_and_check(serving);
    });
}

TEST_CASE("a streaming handler on a pool writes from the CPU pool; each chunk goes out on the connection's loop") {
    for_each_backend([](hop::backend b) {
        hop::io_pool pool{pool_options(b, 2)};
        hop::cpu_pool cpu{2};
        std::atomic<int> wrong_loop{0};
        auto handler = [&](hop::http::request&, hop::http::response_writer& out) -> hop::task<void> {
            const std::size_t mine = pool.this_index();
            co_await cpu.schedule();
            for (int i = 0; i < 5; ++i) co_await out.write(std::to_string(mine) + ",");
            co_await pool[mine].schedule();
            if (pool.this_index() != mine) wrong_loop.fetch_add(1);
        };
        auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler, hop_test::test_options());
        auto serving = pool.spawn_on(0, srv.serve(pool));
        std::vector<std::string> argv{"curl", "-sS", "-H", "Connection: close", "-w", "\n"};
        for (int i = 0; i < 6; ++i) argv.push_back(hop_test::url_of(srv, "/stream"));
        peer_process curl(argv);
        const peer_result r = curl.wait();
        REQUIRE_MESSAGE(r.exited_ok(), r.describe());
        const auto lines = hop_test::lines_of(r.out);
        REQUIRE(lines.size() == 6);
        std::set<std::string> seen(lines.begin(), lines.end());
        CHECK(seen == std::set<std::string>{"0,0,0,0,0,", "1,1,1,1,1,"});  // least_loaded: turns about
        CHECK(wrong_loop.load() == 0);
        stop_and_check(serving);
    });
}

// ============================================================================
// Graceful shutdown and failures, on every loop
// ============================================================================

TEST_CASE("shutdown with connections on every loop: requests in flight finish, idle ones close, serve returns") {
    for_each_backend([](hop::backend b) {
        for (hop::accept_mode mode : both_modes) {
            INFO(mode_name(mode));
            hop_test::fd_leak_check fds;
            const std::size_t loops = 3;
            hop::io_pool pool{pool_options(b, loops)};
            pool_app app;
            app.pool = &pool;
            auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler_for(app),
                                               pool_server_options(mode));
            const std::uint16_t port = srv.local_endpoint().port();
            auto serving = pool.spawn_on(2, srv.serve(pool));
            auto busy = one_per_loop(port, loops);
            auto idle = one_per_loop(port, loops);
            for (auto& c : busy) c->send_get("/slow");
            REQUIRE(wait_until([&] { return app.slow_in.load() == static_cast<int>(loops); }));
            for (std::size_t i = 0; i < loops; ++i) CHECK(app.slow_on[i].load() == 1);

            serving.cancel();
            // Idle connections, on every loop, are closed without a word,
            // after every listener closed.
            for (auto& c : idle) CHECK(c->closed_silently());
            CHECK(connect_refused(port));
            CHECK_FALSE(serving.done());  // the slow requests hold it

            app.release.set();
            for (std::size_t i = 0; i < loops; ++i) {
                const auto r = busy[i]->read_response();
                CHECK(r.status == 200);
                CHECK(r.body == "slow " + std::to_string(i));
                CHECK(r.head.find("Connection: close\r\n") != std::string::npos);
                CHECK(busy[i]->closed_silently());
            }
            REQUIRE(serving.wait_for(hop_test::socket_guard));
            CHECK_FALSE(serving.cancelled());
            CHECK_NOTHROW(serving.get());
            CHECK(srv.stats().connections == 0);
        }
    });
}

TEST_CASE("shutdown_grace over: handlers still running on every loop are cancelled; serve returns normally") {
    for_each_backend([](hop::backend b) {
        const std::size_t loops = 2;
        hop::io_pool pool{pool_options(b, loops)};
        pool_app app;
        app.pool = &pool;
        auto o = pool_server_options(hop::accept_mode::least_loaded);
        o.shutdown_grace = 0s;  // cancel at once
        auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler_for(app), o);
        auto serving = pool.spawn_on(0, srv.serve(pool));
        auto busy = one_per_loop(srv.local_endpoint().port(), loops);
        for (auto& c : busy) c->send_get("/slow");
        REQUIRE(wait_until([&] { return app.slow_in.load() == static_cast<int>(loops); }));
        serving.cancel();
        for (auto& c : busy) CHECK(c->closed_silently());  // cancelled: no response
        REQUIRE(serving.wait_for(hop_test::socket_guard));
        CHECK_NOTHROW(serving.get());
    });
}

TEST_CASE("a handler that throws on loop 1 gets a 500 there; every loop goes on serving") {
    for_each_backend([](hop::backend b) {
        for (hop::accept_mode mode : both_modes) {
            INFO(mode_name(mode));
            const std::size_t loops = 3;
            hop::io_pool pool{pool_options(b, loops)};
            pool_app app;
            app.pool = &pool;
            std::mutex log_mutex;
            std::vector<std::string> log;
            auto o = pool_server_options(mode);
            o.log = [&](std::string_view line) {
                std::lock_guard lock(log_mutex);
                log.emplace_back(line);
            };
            auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler_for(app), o);
            auto serving = pool.spawn_on(0, srv.serve(pool));
            auto conns = one_per_loop(srv.local_endpoint().port(), loops);
            for (std::size_t i = 0; i < loops; ++i) {
                const auto r = conns[i]->get("/throw");
                CHECK(r.status == (i == 1 ? 500 : 200));
            }
            // The same connections (loop 1's too) are served again.
            for (std::size_t i = 0; i < loops; ++i) CHECK(conns[i]->loop() == static_cast<int>(i));
            {
                std::lock_guard lock(log_mutex);
                REQUIRE(log.size() == 1);
                CHECK(log[0].find("thrown on loop 1") != std::string::npos);
            }
            stop_and_check(serving);
        }
    });
}

TEST_CASE("max_connections holds for the whole server: at the cap idle connections make room, both modes") {
    for_each_backend([](hop::backend b) {
        for (hop::accept_mode mode : both_modes) {
            INFO(mode_name(mode));
            hop::io_pool pool{pool_options(b, 2)};
            pool_app app;
            app.pool = &pool;
            auto o = pool_server_options(mode);
            o.max_connections = 2;
            auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler_for(app), o);
            const std::uint16_t port = srv.local_endpoint().port();
            auto serving = pool.spawn_on(0, srv.serve(pool));
            client c1(port), c2(port);
            CHECK(c1.get("/one").status == 200);
            CHECK(c2.get("/two").status == 200);
            // Both wait for a next request: the server closes idle ones
            // (each loop its longest-idle) to serve c3.
            client c3(port);
            c3.send_get("/three");
            const auto r3 = c3.read_response();
            CHECK(r3.status == 200);
            CHECK(srv.stats().accepted == 3);
            CHECK(srv.stats().connections <= 2);
            CHECK(app.total_served() == 3);
            stop_and_check(serving);
        }
    });
}

TEST_CASE("destroying the server while it serves on a pool shuts it down gracefully; so does destroying the pool") {
    for_each_backend([](hop::backend b) {
        const std::size_t loops = 2;
        {
            hop::io_pool pool{pool_options(b, loops)};
            pool_app app;
            app.pool = &pool;
            auto srv = std::make_unique<hop::http::server>(hop::http::server::bind(
                hop::endpoint::loopback_v4(0), handler_for(app), pool_server_options(hop::accept_mode::least_loaded)));
            const std::uint16_t port = srv->local_endpoint().port();
            auto serving = pool.spawn_on(1, srv->serve(pool));
            auto busy = one_per_loop(port, loops);
            for (auto& c : busy) c->send_get("/slow");
            REQUIRE(wait_until([&] { return app.slow_in.load() == static_cast<int>(loops); }));
            srv.reset();  // on this thread, while serving
            REQUIRE(wait_until([&] { return connect_refused(port); }));
            CHECK_FALSE(serving.done());
            app.release.set();
            for (auto& c : busy) CHECK(c->read_response().status == 200);
            REQUIRE(serving.wait_for(hop_test::socket_guard));
            CHECK_NOTHROW(serving.get());
        }
        {
            std::vector<std::unique_ptr<client>> idle;
            hop::future<void> serving;
            pool_app app;
            auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler_for(app),
                                               pool_server_options(hop::accept_mode::reuse_port));
            {
                hop::io_pool pool{pool_options(b, loops)};
                app.pool = &pool;
                serving = pool.spawn_on(0, srv.serve(pool));
                idle = one_per_loop(srv.local_endpoint().port(), loops);
                // The pool goes first: its stop is the server's graceful shutdown.
            }
            CHECK(serving.done());
            CHECK_NOTHROW(serving.get());
            for (auto& c : idle) CHECK(c->closed_silently());
            CHECK(srv.stats().connections == 0);
        }
    });
}

// ============================================================================
// Balance
// ============================================================================

TEST_CASE("balance: 1,000 connections kept open on 2 and 3 loops; no loop over 1.5x the mean in either mode") {
    for_each_backend([](hop::backend b) {
        hop_test::nofile_raised nofile;
        REQUIRE_MESSAGE(nofile.limit() >= 2200, "RLIMIT_NOFILE's hard limit " << nofile.limit()
                                                                              << " is too low for 1,000 connections");
        for (std::size_t loops : {std::size_t(2), std::size_t(3)}) {
            for (hop::accept_mode mode : both_modes) {
                INFO(loops << " loops, " << mode_name(mode));
                hop::io_pool pool{pool_options(b, loops)};
                pool_app app;
                app.pool = &pool;
                auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler_for(app),
                                                   pool_server_options(mode));
                const std::uint16_t port = srv.local_endpoint().port();
                auto serving = pool.spawn_on(0, srv.serve(pool));
                {
                    // Every listener is bound once one request was served.
                    client probe(port);
                    (void)probe.loop();
                }
                REQUIRE(wait_until([&] { return srv.stats().connections == 0; }));
                // In bursts of 100: connect, send, then read the answers.
                const int total = 1000;
                std::vector<std::unique_ptr<client>> conns;
                std::vector<int> per_loop(loops, 0);
                for (int burst = 0; burst < total / 100; ++burst) {
                    const std::size_t first = conns.size();
                    for (int i = 0; i < 100; ++i) {
                        conns.push_back(std::make_unique<client>(port));
                        conns.back()->send_get("/where");
                    }
                    for (std::size_t i = first; i < conns.size(); ++i) {
                        const auto r = conns[i]->read_response();
                        REQUIRE(r.status == 200);
                        per_loop.at(static_cast<std::size_t>(std::atoi(r.body.c_str())))++;
                    }
                }
                CHECK(srv.stats().connections == static_cast<std::size_t>(total));
                const double mean = static_cast<double>(total) / static_cast<double>(loops);
                std::string shares;
                for (int n : per_loop) shares += std::to_string(n) + " ";
                MESSAGE(std::string(hop_test::backend_label(b)) << ", " << loops << " loops, " << mode_name(mode)
                                                      << ": connections per loop " << shares);
                for (int n : per_loop) CHECK_MESSAGE(n <= 1.5 * mean, "per loop: " << shares);
                if (mode == hop::accept_mode::least_loaded) {
                    // Exact: each went to a loop with the fewest.
                    const auto [lo, hi] = std::minmax_element(per_loop.begin(), per_loop.end());
                    CHECK_MESSAGE(*hi - *lo <= 1, "per loop: " << shares);
                }
                conns.clear();
                stop_and_check(serving);
                CHECK(srv.stats().connections == 0);
            }
        }
    });
}

// ============================================================================
// Bad input
// ============================================================================

TEST_CASE("serve(io_pool&): an empty server, a second serve, a stopped pool, a bad accept mode") {
    for_each_backend([](hop::backend b) {
        hop::io_pool pool{pool_options(b, 2)};
        hop::http::server none;
        CHECK(hop_test::what_of<std::logic_error>([&] { pool.spawn_on(0, none.serve(pool)).get(); })
                  .find("the server is empty") != std::string::npos);

        pool_app app;
        app.pool = &pool;
        auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler_for(app), hop_test::test_options());
        auto serving = pool.spawn_on(0, srv.serve(pool));
        {
            client c(srv.local_endpoint().port());  // served: the first serve has begun
            CHECK(c.get("/x").status == 200);
        }
        CHECK(hop_test::what_of<std::logic_error>([&] { pool.spawn_on(1, srv.serve(pool)).get(); })
                  .find("served already") != std::string::npos);
        CHECK(hop_test::what_of<std::logic_error>([&] {
                  hop_test::run_on(b, srv.serve());
              }).find("served already") != std::string::npos);
        stop_and_check(serving);

        hop::http::server_options bad;
        bad.accept = static_cast<hop::accept_mode>(7);
        CHECK(hop_test::what_of<std::invalid_argument>([&] {
                  (void)hop::http::server::bind(hop::endpoint::loopback_v4(0), handler_for(app), bad);
              }).find("accept is 7") != std::string::npos);

        // A server that served on one loop cannot serve on a pool.
        auto once = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler_for(app));
        once.shutdown();
        hop_test::run_on(b, once.serve());
        CHECK(hop_test::what_of<std::logic_error>([&] { pool.spawn_on(0, once.serve(pool)).get(); })
                  .find("served already") != std::string::npos);

        // A pool that is stopping: refused before anything starts.
        hop::io_pool stopped{pool_options(b, 2)};
        stopped.stop();
        auto fresh = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler_for(app));
        CHECK(hop_test::what_of<hop::executor_shutdown_error>([&] {
                  hop_test::run_on(b, fresh.serve(stopped));
              }).find("stopping") != std::string::npos);
        // ... and the server can still serve elsewhere.
        auto again = pool.spawn_on(1, fresh.serve(pool));
        client c(fresh.local_endpoint().port());
        CHECK(c.get("/x").status == 200);
        stop_and_check(again);
    });
}

}  // TEST_SUITE

// ============================================================================
// Out of descriptors, on a pool (a child process runs the server)
// ============================================================================

namespace {

/// Reads the server's next log line from `fd` (blocking, guarded). Other
/// lines (a sanitizer prints through the pipe too) are kept in `other`.
std::string read_log_line(int fd, std::string& pending, std::string& other) {
    for (;;) {
        const auto nl = pending.find('\n');
        if (nl != std::string::npos) {
            std::string line = pending.substr(0, nl);
            pending.erase(0, nl + 1);
            if (line.rfind("hop::http::server:", 0) != 0) {
                other += line + '\n';
                continue;
            }
            return line;
        }
        pollfd p{fd, POLLIN, 0};
        const int ready = ::poll(&p, 1, static_cast<int>(hop_test::socket_guard.count() * 1000));
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

// The child: a server on a pool of 2 with room for 4 connections' descriptors.
// HOP_POOL_EMFILE_CHILD=<backend>:<mode>. Prints its port, logs to stderr,
// serves until /quit; exit code 0 if serve returned normally.
TEST_CASE("http_pool: out-of-descriptors server (child)" * doctest::skip()) {
    const char* spec = std::getenv("HOP_POOL_EMFILE_CHILD");
    if (spec == nullptr) return;
    ::alarm(static_cast<unsigned>(hop_test::scaled(std::chrono::seconds(60)).count()));  // a hang: SIGALRM
    const std::string s = spec;
    const hop::backend b = s.rfind("epoll", 0) == 0 ? hop::backend::epoll : hop::backend::io_uring;
    const hop::accept_mode mode =
        s.find("reuse_port") != std::string::npos ? hop::accept_mode::reuse_port : hop::accept_mode::least_loaded;
    hop::io_pool pool{pool_options(b, 2)};
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
    auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler, pool_server_options(mode));
    self = &srv;
    // Fill the holes below the highest descriptor (the limit counts
    // numbers), then leave room for 4 connections, plus the listener
    // reuse_port binds for loop 1 when serve starts.
    const auto open = hop_test::open_fds();
    for (;;) {
        const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        REQUIRE(fd >= 0);
        if (fd > open.back()) {
            ::close(fd);
            break;
        }
    }
    rlimit low{};
    ::getrlimit(RLIMIT_NOFILE, &low);
    low.rlim_cur = static_cast<rlim_t>(open.back() + 1 + 4 + (mode == hop::accept_mode::reuse_port ? 1 : 0));
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
    auto serving = pool.spawn_on(0, srv.serve(pool));
    // The port goes out once every listener is bound: with reuse_port, a
    // client accepted before loop 1's listener would take the descriptor
    // kept for it, and serve() would fail with EMFILE.
    wait_listening(srv, mode, 2);
    std::printf("%u\n", static_cast<unsigned>(srv.local_endpoint().port()));
    std::fflush(stdout);
    REQUIRE(serving.wait_for(hop_test::scaled(std::chrono::seconds(50))));
    serving.get();
    std::fflush(stderr);
    std::_Exit(0);
}

TEST_CASE("http_pool: out of descriptors, every acceptor backs off, logs once per burst, and serves again") {
    for_each_backend([](hop::backend b) {
        for (hop::accept_mode mode : both_modes) {
            INFO(mode_name(mode));
            int out[2], err[2];
            REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
            REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
            // The child runs with no descriptor to spare, where UBSan's vptr
            // check makes false reports: see starved_child_ubsan_options.
            const pid_t pid = hop_test::spawn_self(
                "http_pool: out-of-descriptors server*",
                {std::string("HOP_POOL_EMFILE_CHILD=") + hop_test::backend_label(b) + ":" + mode_name(mode),
                 hop_test::starved_child_ubsan_options()},
                out[1], err[1]);
            ::close(out[1]);
            ::close(err[1]);
            std::string port_line;
            {
                pollfd p{out[0], POLLIN, 0};
                char ch;
                while (::poll(&p, 1, static_cast<int>(hop_test::scaled(std::chrono::milliseconds(30000)).count())) == 1 && ::read(out[0], &ch, 1) == 1 && ch != '\n') port_line += ch;
            }
            const auto port = static_cast<std::uint16_t>(std::atoi(port_line.c_str()));
            std::string pending;
            std::string other;  // what the child wrote besides the server's log
            // Why the child cannot go on: what it wrote to stderr, and whether
            // it ended (then it is reaped) or still runs (then it is killed).
            const auto child_story = [&] {
                std::string child_err = other + pending;
                pollfd p{err[0], POLLIN, 0};
                char buf[4096];
                ssize_t n = 0;
                while (::poll(&p, 1, static_cast<int>(hop_test::scaled(std::chrono::milliseconds(5000)).count())) == 1 &&
                       (n = ::read(err[0], buf, sizeof buf)) > 0) {
                    child_err.append(buf, static_cast<std::size_t>(n));
                }
                int status = 0;
                const pid_t ended = ::waitpid(pid, &status, WNOHANG);
                if (ended != pid) {
                    ::kill(pid, SIGKILL);
                    ::waitpid(pid, nullptr, 0);
                }
                return std::string(ended == pid ? "ended" : "still ran") + " (status " + std::to_string(status) +
                       "); its stderr:\n" + child_err;
            };
            if (port == 0) FAIL("the child printed no port: '" << port_line << "'; it " << child_story());
            std::string first;
            {
                // Four connections, each served, fill the child's table; the
                // fifth and sixth wait while the accepts fail.
                std::vector<std::unique_ptr<client>> clients;
                for (int i = 0; i < 4; ++i) {
                    clients.push_back(std::make_unique<client>(port));
                    CHECK(clients.back()->get("/c" + std::to_string(i)).body == "ok /c" + std::to_string(i));
                }
                for (int i = 4; i < 6; ++i) {
                    clients.push_back(std::make_unique<client>(port));
                    clients.back()->send_get("/late" + std::to_string(i));
                }
                first = read_log_line(err[0], pending, other);
                if (first.empty()) FAIL("the child logged nothing; it " << child_story());
                CHECK_MESSAGE(first.find("accept failed") != std::string::npos, first);
                CHECK(first.find("Too many open files") != std::string::npos);
                CHECK(first.find(": loop ") != std::string::npos);  // which loop's acceptor
                // Served meanwhile; wait (by asking) for 3 failed accepts.
                std::uint64_t failures = 0;
                for (int i = 0; i < 100000 && failures < 3; ++i) {
                    failures = std::strtoull(clients[0]->get("/failures").body.c_str(), nullptr, 10);
                }
                CHECK(failures >= 3);
                // Free three descriptors: both waiting connections are served.
                for (int i = 1; i < 4; ++i) clients[i]->close();
                CHECK(clients[4]->read_response().body == "ok /late4");
                CHECK(clients[5]->read_response().body == "ok /late5");
                CHECK(clients[0]->get("/quit").body == "bye");
            }
            int status = 0;
            while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
            }
            std::vector<std::string> log{};
            for (std::string l; !(l = read_log_line(err[0], pending, other)).empty();) log.push_back(l);
            hop_test::check_starved_child_reports(other + pending);
            ::close(out[0]);
            ::close(err[0]);
            std::string joined = first + " | ";
            for (auto& l : log) joined += l + " | ";
            INFO("child log: " << joined);
            CHECK_MESSAGE((WIFEXITED(status) && WEXITSTATUS(status) == 0), "child status " << status);
            // Per acceptor: "accept failed" once per burst, then one
            // "accepting again" when an accept succeeds. An accept fails on a
            // full table even when no connection waits (it takes a descriptor
            // before it looks at the queue), so a burst may still be open at
            // the end: with reuse_port, loop 1's acceptor whose queue was
            // empty; in either mode, the one that took both late connections
            // before the child had closed its side of all three freed ones.
            log.insert(log.begin(), first);
            std::array<int, 2> open_bursts{};
            std::size_t ended = 0;
            for (const auto& l : log) {
                const auto at = l.find(": loop ");
                REQUIRE_MESSAGE(at != std::string::npos, l);
                const int i = std::atoi(l.c_str() + at + 7);
                REQUIRE((i == 0 || i == 1));
                if (l.find("accept failed") != std::string::npos) {
                    CHECK_MESSAGE(open_bursts[i] == 0, "a second burst logged before the first ended: " << l);
                    open_bursts[i] = 1;
                } else if (l.find("accepting again after ") != std::string::npos) {
                    CHECK_MESSAGE(open_bursts[i] == 1, "an end without a burst: " << l);
                    open_bursts[i] = 0;
                    ++ended;
                }
            }
            CHECK(ended >= 1);  // the acceptor(s) with waiting connections took them
        }
    });
}
