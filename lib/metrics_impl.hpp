#pragma once
// Private: how hop's parts count for hop::metrics (include/hop/metrics.hpp).
//
// A loop's figures live in its loop_core (loop_stats) and are written only by
// the thread running the loop; everything else counts into a block of the
// calling thread (count(), observe_http_duration()). Neither takes a lock or
// makes a locked read-modify-write: a counter is a relaxed load and a relaxed
// store of an atomic only its writer stores to, so a reader on another
// thread sees a torn-free value and TSan sees no race. Reads sum the blocks.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <vector>

namespace hop::detail {

class loop_core;

/// Whether figures are counted (hop::metrics::set_enabled; on unless turned
/// off, for measuring what counting costs).
extern std::atomic<bool> g_counting;
inline bool counting() noexcept { return g_counting.load(std::memory_order_relaxed); }

/// A counter with one writer thread at a time.
class relaxed_counter {
public:
    void add(std::uint64_t n = 1) noexcept {
        if (counting()) m_v.store(m_v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    void set(std::uint64_t v) noexcept {
        if (counting()) m_v.store(v, std::memory_order_relaxed);
    }
    /// Folds another counter in (reads; counts whether counting is on or not).
    void add_always(std::uint64_t n) noexcept { m_v.store(m_v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
    std::uint64_t get() const noexcept { return m_v.load(std::memory_order_relaxed); }

private:
    std::atomic<std::uint64_t> m_v{0};
};

/// Kinds of IO operation counted per loop (io_kind::metric_slot).
inline constexpr std::size_t io_kind_slots = 11;

/// One loop's figures (loop_core::stats()). Loop thread writes, any reads;
/// `stalls` is written by the watchdog.
struct loop_stats {
    relaxed_counter turns;
    relaxed_counter busy_ns;
    relaxed_counter handlers;
    relaxed_counter remote_posts;
    relaxed_counter sleeps;
    relaxed_counter wakes;
    relaxed_counter timers;
    relaxed_counter io_started[io_kind_slots];
    relaxed_counter io_completed[io_kind_slots];
    std::atomic<std::uint64_t> stalls{0};
};

/// What the stall watchdog reads of a loop. The loop thread stores
/// `progress` before each handler and when a run of handlers ends, and
/// `busy` while it runs them: a loop busy with the same progress for longer
/// than the threshold is held by one handler.
struct stall_watch {
    std::atomic<std::uint64_t> progress{0};
    std::atomic<bool> busy{false};
    /// pthread_t of the thread that last ran the loop.
    std::atomic<unsigned long> thread{0};
    std::uint64_t local_progress = 0;  // loop thread's copy

    void step() noexcept { progress.store(++local_progress, std::memory_order_relaxed); }
};

/// A live loop is listed for read() and the watchdog from its construction
/// (after its backend exists) to its destruction (after shutdown).
void register_loop(loop_core& c) noexcept;
void unregister_loop(loop_core& c) noexcept;

/// How many times the stall watchdog has looked at the loops (for tests).
std::uint64_t stall_scans() noexcept;

/// Per-thread counters (hop::http::server, the blocking pool).
enum class counter : unsigned {
    http_accepted,
    http_closed,
    http_handlers_started,
    http_handlers_ended,
    http_1xx,
    http_2xx,
    http_3xx,
    http_4xx,
    http_5xx,
    http_bytes_in,
    http_bytes_out,
    // hop::http::client: requests that failed, by kind (client_error_kind order)
    client_error_first_,
    client_error_last_ = client_error_first_ + 9,
    // hop::tls handshakes: [client, server] each
    tls_handshakes_client,
    tls_handshakes_server,
    tls_resumed_client,
    tls_resumed_server,
    tls_failed_client,
    tls_failed_server,
    count_
};

/// Kinds of hop::http::client failure, in counter order (metrics label).
inline constexpr const char* client_error_kinds[] = {"pool_timeout", "connect_timeout", "read_timeout",
                                                     "total_timeout", "cancelled",      "tls",
                                                     "protocol",      "redirect",       "network",
                                                     "other"};
static_assert(std::size(client_error_kinds) ==
              static_cast<std::size_t>(counter::client_error_last_) - static_cast<std::size_t>(counter::client_error_first_) + 1);

/// Counts a hop::http::client failure of kind `k` (an index into client_error_kinds).
inline void count_client_error(std::size_t k) noexcept;

/// Histograms kept per thread.
enum class histogram_id : unsigned { http_server, http_client, count_ };
/// Adds one observation of `d` to the calling thread's `h`.
void observe(histogram_id h, std::chrono::nanoseconds d) noexcept;
/// Adds `n` to the calling thread's `c`.
void count(counter c, std::uint64_t n = 1) noexcept;
/// A response with `status` (100-999) was started.
inline void count_http_status(int status) noexcept {
    const int cls = status / 100;
    if (cls >= 1 && cls <= 5) count(static_cast<counter>(static_cast<unsigned>(counter::http_1xx) + cls - 1));
}
/// One handler's latency.
inline void observe_http_duration(std::chrono::nanoseconds d) noexcept { observe(histogram_id::http_server, d); }

inline void count_client_error(std::size_t k) noexcept {
    count(static_cast<counter>(static_cast<std::size_t>(counter::client_error_first_) + k));
}

/// One TLS handshake of a client (`server` false) or server stream: its
/// end counts it, as resumed if ok(true) said so, as failed without ok().
class tls_handshake_count {
public:
    explicit tls_handshake_count(bool server) noexcept : m_server(server) {}
    ~tls_handshake_count() {
        if (!m_ok) count(m_server ? counter::tls_failed_server : counter::tls_failed_client);
    }
    tls_handshake_count(const tls_handshake_count&) = delete;
    tls_handshake_count& operator=(const tls_handshake_count&) = delete;
    void ok(bool resumed) noexcept {
        m_ok = true;
        count(m_server ? counter::tls_handshakes_server : counter::tls_handshakes_client);
        if (resumed) count(m_server ? counter::tls_resumed_server : counter::tls_resumed_client);
    }

private:
    bool m_server;
    bool m_ok = false;
};

/// Every hop::http::client of the process, summed (lib/http/client_pool.cpp):
/// gauges of the live ones, counters of all that ever were.
struct http_client_counts {
    std::uint64_t open = 0, idle = 0, waiting = 0, connects = 0, reuses = 0, retries = 0;
};
http_client_counts read_http_clients();

/// One cpu_pool's figures (lib/cpu_pool.cpp).
struct cpu_pool_counts {
    std::uint64_t id = 0, threads = 0, jobs = 0, steals = 0, parks = 0, queued = 0;
};
std::vector<cpu_pool_counts> read_cpu_pools();

/// Times one HTTP handler from its construction to its destruction and
/// counts it as active meanwhile (one line in the server's respond()).
class http_handler_timing {
public:
    http_handler_timing() noexcept {
        if (!counting()) return;
        m_start = std::chrono::steady_clock::now();
        count(counter::http_handlers_started);
    }
    ~http_handler_timing() {
        if (m_start == std::chrono::steady_clock::time_point{}) return;  // not counting when made
        count(counter::http_handlers_ended);
        observe_http_duration(std::chrono::steady_clock::now() - m_start);
    }
    http_handler_timing(const http_handler_timing&) = delete;
    http_handler_timing& operator=(const http_handler_timing&) = delete;

private:
    std::chrono::steady_clock::time_point m_start;
};

/// The blocking pool's figures (lib/file.cpp).
struct blocking_pool_counts {
    std::uint64_t threads = 0, queued = 0, running = 0, jobs = 0;
};
blocking_pool_counts read_blocking_pool() noexcept;

}  // namespace hop::detail
