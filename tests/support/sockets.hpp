#pragma once
// Helpers for the socket tests: run a task on a loop (on the calling thread,
// with a watchdog), snapshot the process's open descriptors, raise
// RLIMIT_NOFILE, make connected TCP pairs, and a byte pattern that tells a
// lost, repeated or reordered byte from the right one.

#include <hop/net.hpp>

#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>

#include "backend.hpp"
#include "guard.hpp"

#include <doctest/doctest.h>

#include <dirent.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace hop_test {

// A failure guard only: every wait in the socket tests is released by the
// test itself; the bound turns a hang into a failed check.
inline constexpr auto socket_guard = scaled(std::chrono::seconds(30));

/// Runs `t` on `loop` on the calling thread until it is done, and returns
/// its future (done, unless the watchdog had to stop the loop: then not).
/// The loop is restarted afterwards so it can run again.
template <class T>
hop::future<T> drive(hop::io_loop& loop, hop::task<T> t, std::chrono::nanoseconds guard = socket_guard) {
    auto f = loop.spawn(std::move(t));
    f.on_done([&loop](const hop::future<T>&) noexcept { loop.stop(); });
    std::thread watchdog([f, &loop, guard] {
        if (!f.wait_for(guard)) loop.stop();
    });
    loop.run();
    watchdog.join();
    loop.restart();
    return f;
}

/// drive() for doctest: REQUIREs that `t` ended, returns its value (or
/// rethrows its exception). If the guard fires, the failure quotes
/// `pending()` (what the task still waits for; called on this thread with the
/// loop stopped), so that a lost wakeup can be told from a slow run.
template <class T>
T run_on(hop::io_loop& loop, hop::task<T> t, const std::function<std::string()>& pending = {}) {
    auto f = drive(loop, std::move(t));
    REQUIRE_MESSAGE(f.done(), "the test's task did not end within the guard ("
                                  << std::chrono::duration<double>(socket_guard).count()
                                  << " s): a lost wakeup or a hang; pending: " << (pending ? pending() : "(not described)"));
    if constexpr (std::is_void_v<T>) {
        std::move(f).get();
    } else {
        return std::move(f).get();
    }
}

/// run_on a fresh loop of backend `b` (destroyed before this returns).
template <class T>
T run_on(hop::backend b, hop::task<T> t, const std::function<std::string()>& pending = {}) {
    hop::io_loop loop{options_for(b)};
    return run_on(loop, std::move(t), pending);
}

/// Aborts the process with `what` on stderr if it is still alive after
/// `guard`: for a step no check can time out (a destructor that hangs).
class abort_if_stuck {
public:
    explicit abort_if_stuck(std::string what, std::chrono::nanoseconds guard = socket_guard)
        : m_thread([done = m_done.get_future(), what = std::move(what), guard] {
              if (!done.wait_for(guard)) {
                  std::fprintf(stderr, "FATAL: stuck for %lld s: %s\n",
                               static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(guard).count()),
                               what.c_str());
                  std::abort();
              }
          }) {}
    ~abort_if_stuck() {
        m_done.set_value();
        m_thread.join();
    }
    abort_if_stuck(const abort_if_stuck&) = delete;
    abort_if_stuck& operator=(const abort_if_stuck&) = delete;

private:
    hop::promise<void> m_done;
    std::thread m_thread;
};

/// The descriptors open in this process now, sorted.
inline std::vector<int> open_fds() {
    std::vector<int> fds;
    DIR* d = ::opendir("/proc/self/fd");
    if (d == nullptr) return fds;
    const int own = ::dirfd(d);
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        const int fd = std::atoi(e->d_name);
        if (fd != own) fds.push_back(fd);
    }
    ::closedir(d);
    std::sort(fds.begin(), fds.end());
    return fds;
}

/// "5 -> socket:[1234]" for each fd (the first 8, then a count).
inline std::string describe_fds(const std::vector<int>& fds) {
    std::ostringstream out;
    out << ' ' << fds.size() << ':';
    for (std::size_t i = 0; i < fds.size() && i < 8; ++i) {
        const int fd = fds[i];
        char target[256] = {};
        const std::string link = "/proc/self/fd/" + std::to_string(fd);
        const auto n = ::readlink(link.c_str(), target, sizeof target - 1);
        out << ' ' << fd << " -> " << (n > 0 ? target : "?") << ';';
    }
    if (fds.size() > 8) out << " ...";
    return out.str();
}

/// Checks, when it goes out of scope, that the process has the same open
/// descriptors as when it was made: every fd a test opened was closed (and
/// exactly once: closing one twice would close an fd opened since, which
/// shows as a missing one). Declare it before the loops and sockets.
class fd_leak_check {
public:
    fd_leak_check() : m_before(open_fds()) {}
    ~fd_leak_check() {
        const auto after = open_fds();
        std::vector<int> leaked, lost;
        std::set_difference(after.begin(), after.end(), m_before.begin(), m_before.end(), std::back_inserter(leaked));
        std::set_difference(m_before.begin(), m_before.end(), after.begin(), after.end(), std::back_inserter(lost));
        CHECK_MESSAGE(leaked.empty(), "descriptors left open:" << describe_fds(leaked));
        CHECK_MESSAGE(lost.empty(), "descriptors closed that the test did not open:" << describe_fds(lost));
    }
    fd_leak_check(const fd_leak_check&) = delete;
    fd_leak_check& operator=(const fd_leak_check&) = delete;

private:
    std::vector<int> m_before;
};

/// Raises RLIMIT_NOFILE's soft limit to the hard limit for its lifetime.
class nofile_raised {
public:
    nofile_raised() {
        ::getrlimit(RLIMIT_NOFILE, &m_old);
        rlimit raised = m_old;
        raised.rlim_cur = raised.rlim_max;
        m_ok = ::setrlimit(RLIMIT_NOFILE, &raised) == 0;
    }
    ~nofile_raised() { ::setrlimit(RLIMIT_NOFILE, &m_old); }
    nofile_raised(const nofile_raised&) = delete;
    nofile_raised& operator=(const nofile_raised&) = delete;

    /// The soft limit now.
    std::size_t limit() const {
        rlimit now{};
        ::getrlimit(RLIMIT_NOFILE, &now);
        return now.rlim_cur == RLIM_INFINITY ? std::size_t(1) << 20 : static_cast<std::size_t>(now.rlim_cur);
    }

private:
    rlimit m_old{};
    bool m_ok = false;
};

/// True if a TCP socket can bind [::1]:0 here.
inline bool ipv6_loopback_available() {
    static const bool ok = [] {
        const int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return false;
        const auto ep = hop::endpoint::loopback_v6(0);
        const bool bound = ::bind(fd, ep.data(), ep.size()) == 0;
        ::close(fd);
        return bound;
    }();
    return ok;
}

/// The loopback endpoints to test on: 127.0.0.1, and [::1] where it works.
inline std::vector<hop::endpoint> loopbacks() {
    std::vector<hop::endpoint> v{hop::endpoint::loopback_v4(0)};
    if (ipv6_loopback_available()) {
        v.push_back(hop::endpoint::loopback_v6(0));
    } else {
        MESSAGE("IPv6 loopback unavailable here: the [::1] cases are skipped");
    }
    return v;
}

/// A raw socket bound to a free port of `family`'s loopback that does not
/// listen: a connect to its port is refused, and nobody else can take the
/// port while it lives.
class refusing_port {
public:
    explicit refusing_port(bool v6 = false) {
        m_fd = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(m_fd >= 0);
        const auto ep = v6 ? hop::endpoint::loopback_v6(0) : hop::endpoint::loopback_v4(0);
        REQUIRE(::bind(m_fd, ep.data(), ep.size()) == 0);
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        REQUIRE(::getsockname(m_fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0);
        m_endpoint = hop::endpoint::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
    }
    ~refusing_port() { ::close(m_fd); }
    refusing_port(const refusing_port&) = delete;
    refusing_port& operator=(const refusing_port&) = delete;
    const hop::endpoint& endpoint() const noexcept { return m_endpoint; }

private:
    int m_fd = -1;
    hop::endpoint m_endpoint;
};

/// Both ends of one TCP connection.
struct stream_pair {
    hop::tcp_stream client;
    hop::tcp_stream server;
};

/// Connects to `lis` and accepts the connection (on the calling loop).
inline hop::task<stream_pair> connect_pair(hop::tcp_listener& lis) {
    stream_pair p;
    p.client = co_await hop::tcp_stream::connect(lis.local_endpoint());
    p.server = co_await lis.accept();
    co_return p;
}

/// A listener on `local` (port 0), one connection through it; the listener
/// is closed again.
inline hop::task<stream_pair> make_pair(hop::endpoint local = hop::endpoint::loopback_v4(0)) {
    auto lis = hop::tcp_listener::bind(local);
    co_return co_await connect_pair(lis);
}

/// A deterministic byte stream: byte `i` is a hash of `i mod period`, with a
/// period that is no power of two, so a lost, repeated or reordered run of
/// bytes does not line up again. Any window of up to `period` bytes is one
/// contiguous span (the table holds two periods).
class pattern {
public:
    static constexpr std::size_t period = (std::size_t(1) << 20) + 7;

    pattern() : m_bytes(2 * period) {
        for (std::size_t i = 0; i < period; ++i) {
            std::uint64_t x = i * 0x9E3779B97F4A7C15ull;
            x ^= x >> 29;
            x *= 0xBF58476D1CE4E5B9ull;
            x ^= x >> 32;
            m_bytes[i] = m_bytes[i + period] = static_cast<char>(x & 0xff);
        }
    }

    /// The bytes at [offset, offset + n); n <= period.
    std::span<const char> at(std::uint64_t offset, std::size_t n) const {
        return {m_bytes.data() + offset % period, std::min(n, period)};
    }

    /// True if `data` holds the bytes at [offset, offset + size).
    bool matches(std::uint64_t offset, const char* data, std::size_t size) const {
        while (size > 0) {
            const std::size_t n = std::min(size, period);
            if (std::memcmp(data, m_bytes.data() + offset % period, n) != 0) return false;
            data += n;
            offset += n;
            size -= n;
        }
        return true;
    }

private:
    std::vector<char> m_bytes;
};

inline const pattern& shared_pattern() {
    static const pattern p;
    return p;
}

}  // namespace hop_test
