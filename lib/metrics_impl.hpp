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

namespace hop::detail {

class loop_core;

/// A counter with one writer thread at a time.
class relaxed_counter {
public:
    void add(std::uint64_t n = 1) noexcept { m_v.store(m_v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
    void set(std::uint64_t v) noexcept { m_v.store(v, std::memory_order_relaxed); }
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
    count_
};
/// Adds `n` to the calling thread's `c`.
void count(counter c, std::uint64_t n = 1) noexcept;
/// A response with `status` (100-999) was started.
inline void count_http_status(int status) noexcept {
    const int cls = status / 100;
    if (cls >= 1 && cls <= 5) count(static_cast<counter>(static_cast<unsigned>(counter::http_1xx) + cls - 1));
}
/// One handler's latency.
void observe_http_duration(std::chrono::nanoseconds d) noexcept;

/// Times one HTTP handler from its construction to its destruction and
/// counts it as active meanwhile (one line in the server's respond()).
class http_handler_timing {
public:
    http_handler_timing() noexcept : m_start(std::chrono::steady_clock::now()) { count(counter::http_handlers_started); }
    ~http_handler_timing() {
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
