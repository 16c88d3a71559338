#pragma once
// Shared by the benchmarks: command-line options, timing, running one side of
// a comparison in its own child process (so its peak RSS and CPU time are its
// own, not the sum of both libraries), and the "name | hop | asio | ratio"
// table.

#include "../tests/support/loopback.hpp"
#include "../tests/support/nginx.hpp"
#include "../tests/support/peer.hpp"

#include <hop/hop.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <memory>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

// Asio 1.22 looks for clang's old <experimental/coroutine>; clang 16 has the
// standard one (bench/meson.build passes this too; here for a bare compile).
#if defined(__clang__) && !defined(ASIO_HAS_CO_AWAIT)
#define ASIO_HAS_CO_AWAIT 1
#endif

// Asio is a reference here, not our code: its warnings are not ours to fix.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <asio.hpp>
#pragma GCC diagnostic pop

namespace bench {

using clock = std::chrono::steady_clock;

inline double seconds_since(clock::time_point t0) {
    return std::chrono::duration<double>(clock::now() - t0).count();
}

/// The machine's core count (at least 1).
inline std::size_t core_count() { return std::max(1u, std::thread::hardware_concurrency()); }

struct options {
    bool quick = false;           ///< smaller counts, for smoke runs
    std::size_t threads = 0;      ///< pool threads; 0 until parsed (then the core count)
    std::string only;             ///< run only the section with this name ("" = all)

    bool wants(const char* section) const { return only.empty() || only == section; }
};

/// Parses --quick, --threads N and --only SECTION (one of `sections`).
/// @throws std::invalid_argument naming the bad argument.
inline options parse_options(int argc, char** argv, std::initializer_list<const char*> sections) {
    options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--quick") {
            o.quick = true;
        } else if (a == "--threads") {
            if (i + 1 >= argc) throw std::invalid_argument("--threads needs a value, e.g. --threads 2");
            std::string v = argv[++i];
            char* end = nullptr;
            errno = 0;
            unsigned long n = std::strtoul(v.c_str(), &end, 10);
            if (v.empty() || *end != '\0' || errno != 0 || n == 0 || n > 1024 || v[0] == '-') {
                throw std::invalid_argument("--threads " + v + ": expected a whole number from 1 to 1024");
            }
            o.threads = n;
        } else if (a == "--only") {
            if (i + 1 >= argc) throw std::invalid_argument("--only needs a section name");
            o.only = argv[++i];
            bool known = false;
            std::string names;
            for (const char* s : sections) {
                known = known || o.only == s;
                names += std::string(names.empty() ? "" : ", ") + s;
            }
            if (!known) throw std::invalid_argument("--only " + o.only + ": expected one of " + names);
        } else {
            throw std::invalid_argument("unknown argument '" + a + "'");
        }
    }
    if (o.threads == 0) o.threads = core_count();
    return o;
}

/// What one side of a comparison reports back from its child process.
struct sample {
    double seconds = 0;          ///< wall time of the measured part
    std::uint64_t check = 0;     ///< a checksum of the results, compared between sides
    double user_seconds = 0;     ///< user CPU time of the measured part, if the side measured it
    double system_seconds = 0;   ///< system CPU time of the measured part, if the side measured it
    double value = 0;            ///< any other figure the side measured (e.g. bytes per connection)
};

/// A sample plus what the kernel says the child used.
struct measured {
    sample s;
    double peak_rss_mib = 0;     ///< ru_maxrss of the child
    double cpu_seconds = 0;      ///< user + system time of the child
};

/// What run_isolated_for reports: the child's figures, and whether it was
/// stopped for running past its time budget (then `m.s` is empty and only
/// the kernel's figures, peak RSS and CPU time until the kill, are set).
struct bounded {
    measured m;
    bool timed_out = false;
};

/// Runs `fn() -> sample` in a forked child, like run_isolated, but gives it at
/// most `budget_seconds` of wall time (a negative budget: no limit). A child
/// still running then is killed (SIGKILL) and reported as timed out.
/// @throws std::runtime_error if the child fails (its message is passed on).
template <class Fn>
bounded run_isolated_for(Fn fn, double budget_seconds) {
    struct payload {
        sample s;
        bool ok;
        char error[256];
    };
    int fds[2];
    if (::pipe(fds) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
        ::close(fds[0]);
        payload p{};
        try {
            p.s = fn();
            p.ok = true;
        } catch (const std::exception& e) {
            std::snprintf(p.error, sizeof p.error, "%s", e.what());
        } catch (...) {
            std::snprintf(p.error, sizeof p.error, "unknown exception");
        }
        // Smaller than PIPE_BUF: one write, never split.
        ssize_t w = ::write(fds[1], &p, sizeof p);
        ::_exit(p.ok && w == static_cast<ssize_t>(sizeof p) ? 0 : 1);
    }
    ::close(fds[1]);
    payload p{};
    std::size_t got = 0;
    bool timed_out = false;
    const auto deadline = clock::now() + std::chrono::duration_cast<clock::duration>(
                                             std::chrono::duration<double>(budget_seconds < 0 ? 0 : budget_seconds));
    while (got < sizeof p) {
        if (budget_seconds >= 0) {
            const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()).count();
            pollfd pfd{fds[0], POLLIN, 0};
            int ready = left > 0 ? ::poll(&pfd, 1, static_cast<int>(std::min<long long>(left, 1 << 30))) : 0;
            if (ready < 0 && errno == EINTR) continue;
            if (ready == 0) {
                timed_out = true;
                ::kill(pid, SIGKILL);
                break;
            }
        }
        ssize_t r = ::read(fds[0], reinterpret_cast<char*>(&p) + got, sizeof p - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += static_cast<std::size_t>(r);
    }
    ::close(fds[0]);
    int status = 0;
    rusage ru{};
    while (::wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
    }
    bounded b;
    b.timed_out = timed_out;
    measured& m = b.m;
    m.peak_rss_mib = static_cast<double>(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
    m.cpu_seconds = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                    static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    if (timed_out) return b;
    if (got != sizeof p || !p.ok || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        std::string why = got == sizeof p && p.error[0] ? p.error : "the child died (status " + std::to_string(status) + ")";
        throw std::runtime_error("benchmark child failed: " + why);
    }
    m.s = p.s;
    return b;
}

/// Runs `fn() -> sample` in a forked child and returns its sample with the
/// child's peak RSS and CPU time (from wait4's rusage). Call it only while the
/// process runs no other thread: every pool is created and destroyed inside
/// `fn`, in the child.
/// @throws std::runtime_error if the child fails (its message is passed on).
template <class Fn>
measured run_isolated(Fn fn) {
    return run_isolated_for(std::move(fn), -1).m;
}

/// Runs every side `rounds` times, alternating (a b c a b c ...), each run in
/// its own child, so background load on a shared machine falls on all sides
/// alike. Per side: seconds and CPU time are summed over the rounds, peak RSS
/// is the largest; the checks must agree between rounds.
/// @throws std::runtime_error if a run fails or a round's check differs.
template <class... Fn>
std::array<measured, sizeof...(Fn)> run_interleaved(std::size_t rounds, Fn... sides) {
    std::array<measured, sizeof...(Fn)> total{};
    for (std::size_t r = 0; r < rounds; ++r) {
        std::size_t k = 0;
        auto one = [&](auto& fn) {
            measured m = run_isolated(fn);
            measured& t = total[k++];
            if (r > 0 && m.s.check != t.s.check) throw std::runtime_error("a benchmark gave different results in two rounds");
            t.s.seconds += m.s.seconds;
            t.s.check = m.s.check;
            t.cpu_seconds += m.cpu_seconds;
            t.peak_rss_mib = std::max(t.peak_rss_mib, m.peak_rss_mib);
        };
        (one(sides), ...);
    }
    return total;
}

/// Runs every side `rounds` times, alternating like run_interleaved, but keeps
/// every round: result[side][round]. For figures reported as a median or best
/// of the rounds rather than a sum.
/// @throws std::runtime_error if a run fails or a round's check differs.
template <class... Fn>
std::array<std::vector<measured>, sizeof...(Fn)> run_rounds(std::size_t rounds, Fn... sides) {
    std::array<std::vector<measured>, sizeof...(Fn)> all{};
    for (std::size_t r = 0; r < rounds; ++r) {
        std::size_t k = 0;
        auto one = [&](auto& fn) {
            measured m = run_isolated(fn);
            auto& runs = all[k++];
            if (!runs.empty() && m.s.check != runs.front().s.check) {
                throw std::runtime_error("a benchmark gave different results in two rounds");
            }
            runs.push_back(m);
        };
        (one(sides), ...);
    }
    return all;
}

/// The median of `fig(m)` over the runs (the mean of the middle two for an
/// even count). @throws std::invalid_argument for no runs.
template <class Fig>
double median_of(const std::vector<measured>& runs, Fig fig) {
    if (runs.empty()) throw std::invalid_argument("median_of: no runs");
    std::vector<double> v;
    v.reserve(runs.size());
    for (const auto& m : runs) v.push_back(fig(m));
    std::sort(v.begin(), v.end());
    std::size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/// User and system CPU time this process has used so far (all its threads).
struct cpu_times {
    double user = 0;
    double system = 0;
};
inline cpu_times process_cpu_times() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return {static_cast<double>(ru.ru_utime.tv_sec) + static_cast<double>(ru.ru_utime.tv_usec) / 1e6,
            static_cast<double>(ru.ru_stime.tv_sec) + static_cast<double>(ru.ru_stime.tv_usec) / 1e6};
}

/// A point in time: the wall clock and this process's CPU times.
struct timed {
    clock::time_point wall;
    cpu_times cpu;
    static timed now() { return {clock::now(), process_cpu_times()}; }
};

/// Wall seconds from `t0` to `t1`.
inline double seconds_between(const timed& t0, const timed& t1) {
    return std::chrono::duration<double>(t1.wall - t0.wall).count();
}

/// This process's resident set size now, in bytes (/proc/self/statm).
/// @throws std::runtime_error if it cannot be read.
inline std::size_t current_rss_bytes() {
    std::FILE* f = std::fopen("/proc/self/statm", "r");
    if (!f) throw std::runtime_error(std::string("/proc/self/statm: ") + std::strerror(errno));
    unsigned long size = 0, resident = 0;
    int got = std::fscanf(f, "%lu %lu", &size, &resident);
    std::fclose(f);
    if (got != 2) throw std::runtime_error("/proc/self/statm: unexpected contents");
    return static_cast<std::size_t>(resident) * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit and
/// returns the new soft limit (how many descriptors it may have open).
inline std::size_t raise_fd_limit() {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) throw std::runtime_error(std::string("getrlimit: ") + std::strerror(errno));
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            throw std::runtime_error(std::string("setrlimit(RLIMIT_NOFILE): ") + std::strerror(errno));
        }
    }
    return rl.rlim_cur == RLIM_INFINITY ? static_cast<std::size_t>(1) << 20 : static_cast<std::size_t>(rl.rlim_cur);
}

/// This process's own peak RSS in MiB (getrusage).
inline double self_peak_rss_mib() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_maxrss) / 1024.0;
}

/// Which way is better for a row's figure.
enum class better { lower, higher };

inline void print_table_header(const char* title) {
    std::printf("\n%s\n", title);
    std::printf("%-46s | %14s | %14s | %7s\n", "benchmark", "hop", "asio", "ratio");
    std::printf("%s\n", std::string(46 + 3 + 14 + 3 + 14 + 3 + 7, '-').c_str());
}

/// Prints "name | hop | asio | ratio". The ratio is how many times better hop
/// is: asio/hop for lower-is-better figures, hop/asio for higher-is-better
/// ones; above 1 means hop wins.
inline void print_row(const std::string& name, double hop, double asio, better b, int decimals = 1) {
    double ratio = b == better::lower ? asio / hop : hop / asio;
    std::printf("%-46s | %14.*f | %14.*f | %6.2fx\n", name.c_str(), decimals, hop, decimals, asio, ratio);
}

/// The header of a table of hop with hop::metrics counting against hop with
/// it switched off (hop::metrics::set_enabled), in the same run.
inline void print_overhead_header(const char* title) {
    std::printf("\n%s\n", title);
    std::printf("%-46s | %14s | %14s | %7s\n", "benchmark", "metrics on", "metrics off", "on/off");
    std::printf("%s\n", std::string(46 + 3 + 14 + 3 + 14 + 3 + 7, '-').c_str());
}

/// "name | on | off | on/off": the ratio is the cost of counting (above 1:
/// slower or more CPU with metrics on), whichever way the figure goes.
inline void print_overhead_row(const std::string& name, double on, double off, better b, int decimals = 1) {
    const double cost = b == better::lower ? on / off : off / on;
    std::printf("%-46s | %14.*f | %14.*f | %6.3fx\n", name.c_str(), decimals, on, decimals, off, cost);
}

/// A row where hop and asio share one figure (a common baseline).
inline void print_note_row(const std::string& name, double value, int decimals = 1) {
    std::printf("%-46s | %14.*f | %14.*f | %7s\n", name.c_str(), decimals, value, decimals, value, "-");
}

/// Throws unless both sides computed the same results.
inline void check_same(const char* what, const measured& hop, const measured& asio) {
    if (hop.s.check != asio.s.check) {
        throw std::runtime_error(std::string(what) + ": hop and asio computed different results (checksum " +
                                 std::to_string(hop.s.check) + " vs " + std::to_string(asio.s.check) + ")");
    }
}

// ---- external programs (wrk, curl, nginx, openssl) and their ports ----------------
// Started as peers of tests/support/peer.hpp; nginx through
// tests/support/nginx.hpp.

/// A finished program: exit status, CPU and wall time, what it printed.
struct child_result {
    int status = 0;
    double cpu_seconds = 0;
    double wall_seconds = 0;
    std::string output;
};

inline std::string slurp(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::ostringstream s;
    s << f.rdbuf();
    return s.str();
}

/// Starts argv (argv[0] looked up in PATH) with stdout and stderr to
/// `out` (emptied first), stdin from /dev/null: a peer of
/// tests/support/peer.hpp, which stops it if it is dropped unfinished.
/// @throws std::runtime_error if it cannot start.
inline std::unique_ptr<hop_test::peer> start_program(const std::vector<std::string>& argv,
                                                     const std::filesystem::path& out) {
    hop_test::peer_options o = hop_test::peer_options::logged(argv, out);
    o.truncate_log = true;
    return std::make_unique<hop_test::peer>(std::move(o));
}

/// Waits for `p` to end; its CPU time. @throws std::runtime_error unless
/// it exited 0 (with what it wrote).
inline double finish(hop_test::peer& p) {
    const std::string name = p.name();
    const hop_test::peer_result r = p.wait_unguarded();
    if (!r.exited_ok()) {
        throw std::runtime_error(name + " failed (status " + std::to_string(r.wait_status) + "):\n" + r.out);
    }
    return r.cpu_seconds;
}

/// Runs argv to its end: its output, CPU and wall time.
/// @throws std::runtime_error if it cannot start or fails.
inline child_result run_program(const std::vector<std::string>& argv, const std::filesystem::path& out) {
    const auto t0 = clock::now();
    const auto p = start_program(argv, out);
    child_result r;
    r.cpu_seconds = finish(*p);
    r.wall_seconds = seconds_since(t0);
    r.output = slurp(out);
    return r;
}

/// Checks the output of `curl -w "%{http_code} %{size_download}\n"` over
/// `n` transfers: each answered 200 with `body_size` bytes.
/// @throws std::runtime_error with what else curl printed.
inline void check_curl_transfers(const std::string& output, std::size_t n, std::size_t body_size) {
    std::size_t ok = 0;
    std::istringstream in(output);
    std::string line;
    const std::string want = "200 " + std::to_string(body_size);
    std::string other;
    while (std::getline(in, line)) {
        if (line == want) {
            ++ok;
        } else if (other.size() < 2000) {
            other += line + "\n";
        }
    }
    if (ok != n) {
        throw std::runtime_error("curl: " + std::to_string(ok) + " of " + std::to_string(n) +
                                 " requests came back whole; other output:\n" + other);
    }
}

// A one-shot event: a timer that never expires, cancelled to wake the waiter.
class asio_event {
public:
    explicit asio_event(asio::io_context& ctx) : m_timer(ctx, asio::steady_timer::time_point::max()) {}
    void set() {
        m_set = true;
        m_timer.cancel();
    }
    asio::awaitable<void> wait() {
        while (!m_set) {
            std::error_code ec;
            co_await m_timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        }
    }

private:
    asio::steady_timer m_timer;
    bool m_set = false;
};

/// What an echo server's sessions share (echo_bench, uring_recv_bench), on
/// either side: counts, the first error, and one-shot events (`Event`:
/// hop::event or asio_event) for "all waiting" and "all ended".
template <class Event>
struct echo_state {
    /// `side` names the side in check()'s message; `event_args` construct
    /// each event.
    template <class... EventArgs>
    explicit echo_state(const char* side, EventArgs&... event_args)
        : who(side), all_waiting(event_args...), all_ended(event_args...) {}
    const char* who;
    std::size_t sessions = 0;  ///< how many the acceptors will start
    std::size_t waiting = 0;   ///< sessions that reached their first read
    std::size_t ended = 0;
    std::size_t errors = 0;
    std::string first_error;
    Event all_waiting;
    Event all_ended;

    /// A session reached its first read; the last one sets all_waiting.
    void session_waiting() {
        if (++waiting == sessions) all_waiting.set();
    }
    /// A session ended; the last one sets all_ended.
    void session_ended() {
        if (++ended == sessions) all_ended.set();
    }
    void fail(const std::string& what) {
        if (errors++ == 0) first_error = what;
    }
    /// @throws std::runtime_error with the error count and the first error, if any.
    void check() const {
        if (errors) {
            throw std::runtime_error(std::string(who) + ": " + std::to_string(errors) + " error(s), the first: " +
                                     first_error);
        }
    }
};

/// The hop echo server's shared state.
struct hop_state : echo_state<hop::event> {
    hop_state() : echo_state("hop") {}
};

/// The Asio echo server's shared state (its events live on `ctx`).
struct asio_state : echo_state<asio_event> {
    explicit asio_state(asio::io_context& ctx) : echo_state("asio", ctx) {}
};

/// The hop echo server's session (echo_bench, uring_recv_bench): an N-byte
/// buffer in the coroutine frame, read_some then write_all until the peer's
/// end of stream. An error ends the session and goes to `st->fail`.
template <std::size_t N>
hop::task<void> hop_echo_session(hop::tcp_stream s, hop_state* st) {
    try {
        s.set_nodelay(true);
        std::array<char, N> buf;
        st->session_waiting();
        for (;;) {
            std::size_t n = co_await s.read_some(buf);
            if (n == 0) break;
            co_await s.write_all(std::span<const char>(buf.data(), n));
        }
    } catch (const std::exception& e) {
        st->fail(e.what());
    }
    st->session_ended();
}

/// The Asio echo server's session (echo_bench, uring_recv_bench): an N-byte
/// buffer in the coroutine frame; error codes rather than exceptions, so the
/// end of the stream costs no throw.
template <std::size_t N>
asio::awaitable<void> asio_echo_session(asio::ip::tcp::socket s, asio_state* st) {
    using asio::ip::tcp;
    std::error_code ec;
    s.set_option(tcp::no_delay(true), ec);
    if (ec) st->fail("set_option(no_delay): " + ec.message());
    std::array<char, N> buf;
    st->session_waiting();
    for (;;) {
        std::size_t n = co_await s.async_read_some(asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
        if (ec == asio::error::eof) break;
        if (ec) {
            st->fail("async_read_some: " + ec.message());
            break;
        }
        co_await asio::async_write(s, asio::buffer(buf.data(), n), asio::redirect_error(asio::use_awaitable, ec));
        if (ec) {
            st->fail("async_write: " + ec.message());
            break;
        }
    }
    st->session_ended();
}

/// Runs the task `make(&loop)` on a new io_loop of backend `b`, on this
/// thread, until the task finishes; returns its result.
/// @throws what the task threw, or std::system_error if the loop cannot start.
template <class Make>
auto run_on_loop(hop::backend b, Make make) {
    hop::io_loop loop{{.backend = b}};
    auto f = loop.spawn(make(&loop));
    f.on_done([&loop](const auto&) { loop.stop(); });
    loop.run();
    return f.get();
}

/// Runs the awaitable `make(&ctx)` on a new single-threaded io_context, on
/// this thread, until it finishes; returns its result.
/// @throws what the awaitable threw.
template <class Make>
auto run_on_context(Make make) {
    asio::io_context ctx{1};
    using result = typename decltype(make(&ctx))::value_type;
    result out{};
    std::exception_ptr error;
    auto on_done = [&](std::exception_ptr e, result r) {
        error = e;
        out = r;
        ctx.stop();
    };
    asio::co_spawn(ctx, make(&ctx), on_done);
    ctx.run();
    if (error) std::rethrow_exception(error);
    return out;
}

// Loopback ports, shared with the tests.
using hop_test::accepting;
using hop_test::free_port;

}  // namespace bench
