// A server out of descriptors rides it out (hop::accept_with_backoff): it
// backs off without spinning, keeps the connections it has, logs once per
// burst, and serves again once descriptors are free.
#include <hop/net.hpp>

#include <hop/io_loop.hpp>
#include <hop/task.hpp>
#include <hop/task_group.hpp>
#include <hop/time.hpp>

#include "support/backend.hpp"
#include "support/child.hpp"
#include "support/sockets.hpp"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace hop_test;

namespace {

constexpr int total_connections = 8;

hop::task<> echo(hop::tcp_stream conn) {
    std::array<char, 64> buf{};
    for (;;) {
        const std::size_t n = co_await conn.read_some(buf);
        if (n == 0) co_return;
        co_await conn.write_all(std::string_view(buf.data(), n));
    }
}

hop::task<> serve(hop::tcp_listener& lis, int count) {
    hop::task_group group;
    for (int i = 0; i < count; ++i) group.spawn(echo(co_await hop::accept_with_backoff(lis)));
    co_await group.wait();
}

// The descriptor limit that leaves exactly `room` numbers free (the kernel
// hands out the lowest free number, which must be below the limit).
rlim_t limit_leaving(int room) {
    const std::vector<int> open = open_fds();
    int fd = 0;
    for (int free_found = 0;; ++fd) {
        if (std::find(open.begin(), open.end(), fd) != open.end()) continue;
        if (++free_found == room) break;
    }
    return static_cast<rlim_t>(fd + 1);
}

// A blocking client connection to 127.0.0.1:port.
int connect_blocking(int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    return fd;
}

std::size_t count_of(const std::string& text, const std::string& part) {
    std::size_t n = 0;
    for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
    return n;
}

}  // namespace

TEST_SUITE("accept_backoff") {

// Run in a child process by the case below: a server whose descriptor limit
// leaves room for three connections.
TEST_CASE("starved echo server (child)" * doctest::skip()) {
    const char* which = std::getenv("HOP_STARVE_CHILD");
    if (which == nullptr) return;
    const hop::backend b = std::strcmp(which, "epoll") == 0 ? hop::backend::epoll : hop::backend::io_uring;
    hop::io_loop loop{options_for(b)};
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    run_on(loop, [](hop::tcp_listener& l) -> hop::task<> {
        // The loop's timers and the listener's registration exist before the limit.
        co_await hop::sleep_for(std::chrono::milliseconds(1));
        (void)l;
    }(lis));
    rlimit lim{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &lim) == 0);
    lim.rlim_cur = limit_leaving(3);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &lim) == 0);
    std::printf("%d\n", lis.local_endpoint().port());
    std::fflush(stdout);
    run_on(loop, serve(lis, total_connections));
}

TEST_CASE("a server out of descriptors backs off, keeps its connections and serves again") {
    for_each_backend([](hop::backend b) {
        int out[2];
        int err[2];
        REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
        // The child has no descriptor to spare: see starved_child_ubsan_options.
        const pid_t pid = spawn_self("starved echo server*",
                                     {std::string("HOP_STARVE_CHILD=") + backend_label(b),
                                      hop_test::starved_child_ubsan_options()},
                                     out[1], err[1]);
        ::close(out[1]);
        ::close(err[1]);
        abort_if_stuck guard("the starved server test");
        std::string first_line;
        char ch;
        for (;;) {
            const ssize_t n = ::read(out[0], &ch, 1);
            if (n < 0 && errno == EINTR) continue;
            if (n != 1 || ch == '\n') break;
            first_line += ch;
        }
        const int port = std::atoi(first_line.c_str());
        REQUIRE_MESSAGE(port > 0, "the child printed no port: '" << first_line << "'");

        // One connection at a time, each echoing one byte. When the server
        // says it is backing off, the oldest connection is closed: that
        // frees one descriptor, and the waiting connection must be served.
        std::vector<int> open_conns;
        std::string log;
        std::size_t bursts_seen = 0;
        std::size_t closed = 0;
        for (int j = 0; j < total_connections; ++j) {
            const int c = connect_blocking(port);
            const char sent = static_cast<char>('a' + j);
            REQUIRE(::send(c, &sent, 1, MSG_NOSIGNAL) == 1);
            for (;;) {
                // A signal (seen under the sanitizers) interrupts a call: retry it.
                pollfd p[2] = {{c, POLLIN, 0}, {err[0], POLLIN, 0}};
                const int ready = ::poll(p, 2, -1);
                if (ready < 0 && errno == EINTR) continue;
                REQUIRE(ready > 0);
                if (p[0].revents != 0) {
                    char got = 0;
                    ssize_t r;
                    while ((r = ::recv(c, &got, 1, 0)) < 0 && errno == EINTR) {
                    }
                    if (r != 1) {
                        // Drain what the server said before it failed (a reset
                        // usually means it died): the message names it.
                        char chunk[4096];
                        ssize_t n;
                        while ((n = ::read(err[0], chunk, sizeof chunk)) > 0) log.append(chunk, static_cast<std::size_t>(n));
                    }
                    REQUIRE_MESSAGE(r == 1, "recv on connection " << j << ": " << r << " (errno " << errno
                                                                   << "); the server's stderr: " << log);
                    CHECK(got == sent);  // no byte lost or mixed up
                    break;
                }
                char chunk[512];
                const ssize_t n = ::read(err[0], chunk, sizeof chunk);
                if (n < 0 && errno == EINTR) continue;
                REQUIRE(n > 0);
                log.append(chunk, static_cast<std::size_t>(n));
                const std::size_t bursts = count_of(log, "backing off");
                if (bursts > bursts_seen) {
                    bursts_seen = bursts;
                    REQUIRE_MESSAGE(closed < open_conns.size(), "starved with no connection to close: " << log);
                    ::close(open_conns[closed++]);
                }
            }
            open_conns.push_back(c);
        }
        for (std::size_t i = closed; i < open_conns.size(); ++i) ::close(open_conns[i]);
        int status = 0;
        pid_t waited;
        while ((waited = ::waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
        }
        REQUIRE(waited == pid);
        for (;;) {
            char chunk[512];
            const ssize_t n = ::read(err[0], chunk, sizeof chunk);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            log.append(chunk, static_cast<std::size_t>(n));
        }
        ::close(out[0]);
        ::close(err[0]);
        INFO("the server's log:\n" << log);
        hop_test::check_starved_child_reports(log);
        CHECK(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 0);
        // It did run out (3 slots, 8 connections), and said so once per burst.
        CHECK(bursts_seen >= 1);
        CHECK(count_of(log, "Too many open files") == count_of(log, "backing off"));
        CHECK(count_of(log, "accepting again") == count_of(log, "backing off"));
        // No spinning while starved: a burst of T ms has at most the
        // attempts the doubling back-off allows (5 ms doubling to 1 s).
        for (auto at = log.find("after "); at != std::string::npos; at = log.find("after ", at + 1)) {
            unsigned long failures = 0;
            long long ms = 0;
            if (std::sscanf(log.c_str() + at, "after %lu failed accepts over %lld ms", &failures, &ms) != 2) continue;
            const double allowed = 2 + std::log2(std::max(1.0, static_cast<double>(ms) / 5.0)) + ms / 1000.0;
            CHECK_MESSAGE(static_cast<double>(failures) <= allowed, failures << " failures in " << ms << " ms");
        }
    });
}

TEST_CASE("accept_with_backoff refuses a back-off that makes no sense, naming it") {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    auto bad = [](hop::tcp_listener& l, hop::accept_backoff o) -> hop::task<std::string> {
        try {
            (void)co_await hop::accept_with_backoff(l, o);
        } catch (const std::invalid_argument& e) {
            co_return std::string(e.what());
        }
        co_return std::string("(nothing thrown)");
    };
    for_each_backend([&](hop::backend b) {
        hop::accept_backoff zero;
        zero.initial = std::chrono::milliseconds(0);
        CHECK(run_on(b, bad(lis, zero)).find("initial 0 ms") != std::string::npos);
        hop::accept_backoff inverted;
        inverted.initial = std::chrono::milliseconds(50);
        inverted.max = std::chrono::milliseconds(10);
        CHECK(run_on(b, bad(lis, inverted)).find("max 10 ms") != std::string::npos);
    });
}

}  // TEST_SUITE
