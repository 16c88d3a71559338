#pragma once
// Seeing inside a running hop: counters and gauges of every io_loop, the
// blocking pool and hop::http::server, read as plain values or written in
// the Prometheus text exposition format; and the stall detector, which logs
// where a loop was held when one handler keeps it longer than a threshold.
//
// The figures cost little enough to stay on: each loop's are written by its
// own thread only (a load and a store, no locked instruction), the HTTP
// server's go to a block per thread; a read sums them. Nothing is locked
// on the path that counts.

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace hop {

namespace metrics {

/// A histogram as Prometheus keeps one: counts per upper bound.
struct histogram {
    /// Upper bounds of the buckets, in seconds, ascending (+Inf is implied).
    std::vector<double> bounds;
    /// counts[i]: observations <= bounds[i] and > bounds[i-1]; one more
    /// entry at the end for those above the last bound. Not cumulative.
    std::vector<std::uint64_t> counts;
    /// Sum of all observations, in seconds.
    double sum = 0;
    /// Number of observations.
    std::uint64_t count = 0;
};

/// Operations of one kind in flight on a loop.
struct operations_in_flight {
    /// The kind: "recv", "send", "send_gathered", "accept", "connect",
    /// "wait", "recvmsg", "sendmsg", "read", "write", "fsync".
    std::string kind;
    /// How many are started and not yet completed.
    std::uint64_t count = 0;
};

/// One live io_loop's figures.
struct loop_figures {
    /// io_loop::id().
    std::uint64_t id = 0;
    /// "io_uring" or "epoll".
    std::string backend;
    /// Turns of run / run_once / poll.
    std::uint64_t turns = 0;
    /// Time spent in turns, not asleep in the kernel (spinning counts as busy).
    double busy_seconds = 0;
    /// Handlers run: coroutine resumptions, posted callables, fired timers.
    std::uint64_t tasks_resumed = 0;
    /// Items posted from other threads (taken from the loop's remote queue).
    std::uint64_t remote_posts = 0;
    /// Times the loop went to sleep in the kernel.
    std::uint64_t sleeps = 0;
    /// Sleeps ended by a post from another thread.
    std::uint64_t wakes = 0;
    /// Timers armed now.
    std::uint64_t timers_armed = 0;
    /// Stalls the detector reported (see set_stall_threshold).
    std::uint64_t stalls = 0;
    /// Kernel operations in flight now, by kind (every kind listed).
    std::vector<operations_in_flight> in_flight;
};

/// The blocking pool (run_blocking, resolve, file IO on epoll).
struct blocking_pool_figures {
    /// Threads alive now.
    std::uint64_t threads = 0;
    /// Calls waiting for a thread.
    std::uint64_t queued = 0;
    /// Calls running now.
    std::uint64_t running = 0;
    /// Calls run in all.
    std::uint64_t jobs = 0;
};

/// Every hop::http::server of the process, summed.
struct http_server_figures {
    /// Connections accepted in all.
    std::uint64_t connections_accepted = 0;
    /// Connections open now.
    std::uint64_t connections_open = 0;
    /// Responses by status class: [0] 1xx ... [4] 5xx.
    std::array<std::uint64_t, 5> responses{};
    /// Handlers running now.
    std::uint64_t active_handlers = 0;
    /// Bytes read from clients.
    std::uint64_t bytes_received = 0;
    /// Bytes written to clients.
    std::uint64_t bytes_sent = 0;
    /// Handler latency: from the request handed to the handler to its
    /// response queued (a whole response) or written (a streamed one).
    histogram request_duration;
};

/// Failures of one kind (http_client_figures::errors).
struct error_count {
    /// "pool_timeout", "connect_timeout", "read_timeout", "total_timeout",
    /// "cancelled", "tls", "protocol", "redirect", "network" (a
    /// std::system_error: refused, reset, unreachable...) or "other".
    std::string kind;
    /// Requests that failed so.
    std::uint64_t count = 0;
};

/// Every hop::http::client of the process, summed: gauges over the live
/// clients, counters over all that ever were.
struct http_client_figures {
    /// Connections holding a slot now (connecting, in use or idle).
    std::uint64_t connections_open = 0;
    /// Kept-alive connections waiting for a request.
    std::uint64_t connections_idle = 0;
    /// Open and not idle: connecting or carrying a request.
    std::uint64_t connections_in_use = 0;
    /// Requests waiting for a connection slot.
    std::uint64_t requests_waiting = 0;
    /// Connections made in all.
    std::uint64_t connects = 0;
    /// Requests sent on a connection that had carried one before.
    std::uint64_t reused = 0;
    /// Idempotent requests resent after a stale kept-alive connection.
    std::uint64_t retried = 0;
    /// Failed requests (fetch, or open up to its head), by kind; every kind listed.
    std::vector<error_count> errors;
    /// Latency of the requests that got a response: from the call to the
    /// whole response read (fetch, get, post) or its head read (open).
    histogram request_duration;
};

/// hop::tls handshakes of the process.
struct tls_figures {
    /// Handshakes completed as a client.
    std::uint64_t client_handshakes = 0;
    /// Handshakes completed as a server.
    std::uint64_t server_handshakes = 0;
    /// Of the client's handshakes, the ones that resumed a session.
    std::uint64_t client_resumed = 0;
    /// Of the server's handshakes, the ones that resumed a session.
    std::uint64_t server_resumed = 0;
    /// Handshakes that failed as a client (an alert, a bad certificate,
    /// the peer gone, cancelled).
    std::uint64_t client_failed = 0;
    /// Handshakes that failed as a server (as client_failed).
    std::uint64_t server_failed = 0;
};

/// One live cpu_pool's figures. Each worker counts into its own slots; a
/// read sums them.
struct cpu_pool_figures {
    /// Numbers the pools of the process in the order they were made, from 1.
    std::uint64_t id = 0;
    /// Worker threads.
    std::uint64_t threads = 0;
    /// Work items the workers took from a queue (their own deque, another's
    /// by stealing, or the injection queue) and ran. A fork/join child that
    /// its parent takes back and runs inline is not one.
    std::uint64_t jobs = 0;
    /// Of those, the ones stolen from another worker's deque.
    std::uint64_t steals = 0;
    /// Times a worker found no work and slept.
    std::uint64_t parks = 0;
    /// Work items queued now (deques and injection queues; a moment's view).
    std::uint64_t queued = 0;
};

/// What read() returns: plain values, taken at one moment (each figure is
/// exact; figures of different threads may be a few events apart).
struct snapshot {
    /// Every live io_loop, by id.
    std::vector<loop_figures> loops;
    /// The blocking pool.
    blocking_pool_figures blocking_pool;
    /// hop::http::server.
    http_server_figures http_server;
    /// hop::http::client.
    http_client_figures http_client;
    /// hop::tls.
    tls_figures tls;
    /// Every live cpu_pool, by id.
    std::vector<cpu_pool_figures> cpu_pools;
};

/// The figures now. Thread-safe; never blocks for long (a loop's own
/// thread is never waited for).
snapshot read();

/// read() in the Prometheus text exposition format 0.0.4 (HELP and TYPE
/// lines, `hop_..._total` counters, `_seconds` histograms): what a
/// `/metrics` endpoint serves with Content-Type
/// "text/plain; version=0.0.4; charset=utf-8".
/// @code
/// if (req.url == "/metrics") r.body = hop::metrics::prometheus();
/// @endcode
std::string prometheus();

/// `s` in the Prometheus text exposition format (see prometheus()).
std::string prometheus(const snapshot& s);

/// Turns counting on (the default) or off, process-wide. Off, the counters
/// and histograms are not written and the loops read no clock for their
/// busy time: what is left is one predicted branch per count. For
/// measuring what the figures cost (bench/echo_bench, http_server_bench
/// --only metrics); switch it before any loop, pool, client or server
/// exists, since a gauge made of two counters (in flight = started -
/// completed) is wrong across a switch. Stall detection is separate
/// (set_stall_threshold).
void set_enabled(bool on) noexcept;

/// Whether counting is on.
bool enabled() noexcept;

/// The Content-Type a `/metrics` response carries.
inline constexpr std::string_view prometheus_content_type = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace metrics

/// The stall threshold, 100 ms unless set (here, or before the program
/// starts by the environment: HOP_STALL_THRESHOLD_MS=<ms>, 0 for off; a
/// value that is not a number is named on stderr and 100 ms kept): a loop
/// whose one handler (a
/// coroutine step, a posted callable, a timer) runs longer is reported once
/// per handler, with a backtrace of the loop thread taken while it is still
/// held, by a watchdog thread that looks at every loop every threshold / 4.
/// The backtrace is taken by a signal (SIGRTMIN + 5) sent to the loop
/// thread; a program that handles that signal itself keeps its handler and
/// gets reports without a backtrace. Function names come from the symbol
/// tables of the program and its libraries (.symtab, else .dynsym), read
/// when the watchdog starts and when libraries are loaded, never while a
/// report is taken (a report opens no file): a stripped program shows
/// offsets for its own functions.
///
/// 100 ms: a handler normally runs for microseconds, so 100 ms is a loop
/// held thousands of times too long, and a delay a user sees (as asyncio's
/// slow_callback_duration); it stays above what a preempted thread on a
/// busy machine loses (a few scheduler slices).
///
/// fork(): the watchdog's locks are taken around a fork (pthread_atfork),
/// so the child finds none held. A forked child has no watchdog thread
/// until it calls set_stall_threshold (a fork is often followed by exec,
/// and some tools refuse threads started in the child of a threaded
/// process); its loops are counted as usual.
/// @param threshold 0: the detector is off.
/// @throws std::invalid_argument if `threshold` is negative (naming it).
void set_stall_threshold(std::chrono::milliseconds threshold);

/// The stall threshold now (0: off).
std::chrono::milliseconds stall_threshold() noexcept;

/// Where stall reports go: `sink` gets each report as one line (without a
/// newline), on the watchdog thread; null (the default) writes them to
/// stderr. Thread-safe.
void set_stall_log(std::function<void(std::string_view line)> sink);

}  // namespace hop
