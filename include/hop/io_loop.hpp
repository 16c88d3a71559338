#pragma once
/// @file
/// hop::io_loop — the event loop IO-bound coroutines run on (io_uring, or
/// epoll through standalone Asio) — plus hop::run, current_loop and
/// default_loop.

#include <hop/detail/executor.hpp>
#include <hop/future.hpp>
#include <hop/task.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace asio {
class io_context;
}

namespace hop {

/// Which kernel interface an io_loop uses.
enum class backend {
    automatic,  ///< io_uring where it can start, else epoll; HOP_BACKEND overrides
    io_uring,   ///< io_uring through liburing (throws if it cannot start)
    epoll,      ///< readiness through standalone Asio's io_context
};

/// Options for an io_loop.
struct io_loop_options {
    /// Which backend to start: automatic (io_uring where it works, else epoll), io_uring or epoll. HOP_BACKEND overrides automatic.
    hop::backend backend = hop::backend::automatic;
    /// io_uring submission queue entries (a power of two, 1 to 32768). The
    /// queue is submitted whenever it fills, so this bounds a batch, not
    /// the operations in flight. Small batches measured best (10,000
    /// connections: 32 -> 665 ms, 256 -> 870 ms, 4096 -> 1780 ms).
    unsigned queue_depth = 32;
    /// After this long with nothing to do (no IO result, timer or post)
    /// following some work, the loop gives memory back: the coroutine
    /// frames its thread keeps for reuse (and the depot shared by all
    /// threads) go back to the heap, then malloc_trim(0) returns the heap's
    /// free pages to the system. So a server's memory falls again once a
    /// burst of connections has gone. Once per idle period, never on the
    /// way of work: the loop only sleeps with a deadline that much later.
    /// 5 s: a loop between the bursts of a busy server keeps its memory
    /// warm, a server whose load has ended gives it back soon. 0: never.
    /// (A loop hosted on an asio::io_context does not trim.)
    std::chrono::milliseconds idle_trim = std::chrono::seconds(5);
};

class io_loop;

namespace detail {
class loop_core;

/// Shared by a loop and the IO objects bound to it, and outlives the loop:
/// `loop` is cleared when the loop is destroyed (hop/detail/io_handle.hpp).
struct loop_anchor {
    std::atomic<io_loop*> loop{nullptr};
    std::uint64_t id = 0;
};
}  // namespace detail

/// A single-threaded event loop: owns IO and timers, runs the coroutines
/// that are on it. Every member is for the thread that runs the loop except
/// where it says "thread-safe".
///
/// Do not block the loop's thread in a handler: everything else on the loop
/// waits. hop's own blocking waits (future::get / wait / wait_for, hop::wait,
/// sync_wait, pool joins) still work there, if slowly: a wake of another
/// (io_uring) loop that a handler's post left for the loop's next submit is
/// sent before they block. A thread blocked on anything else
/// (std::condition_variable, std::future, a spin) waiting for a loop it has
/// just posted to may never wake it: a deadlock.
///
/// @code
/// hop::io_loop loop;
/// auto f = loop.spawn(main_task());
/// f.on_done([&](auto&) { loop.stop(); });
/// loop.run();
/// @endcode
class io_loop final : public detail::executor_base {
public:
    /// The automatic backend.
    io_loop();
    /// @throws std::invalid_argument for a bad queue_depth (naming it).
    /// @throws std::system_error if the requested backend cannot start.
    explicit io_loop(const io_loop_options& options);
    /// An epoll-backend loop hosted on a program's own asio::io_context:
    /// hop's work runs as handlers on it (serialised, even when several
    /// threads run the context). run()/poll() then drive that context.
    explicit io_loop(asio::io_context& host);
    /// Cancels every timer and operation still pending, lets the coroutines
    /// waiting on them end (they see cancelled_error), reaps every kernel
    /// completion, and frees what the loop owns.
    ~io_loop();

    io_loop(const io_loop&) = delete;
    io_loop& operator=(const io_loop&) = delete;

    /// "io_uring" or "epoll".
    std::string_view backend_name() const noexcept;
    /// The backend this loop runs (never automatic).
    hop::backend backend_kind() const noexcept;

    /// Runs until stop(). Returns the number of handlers run.
    std::size_t run();
    /// Waits for at least one event, runs what is ready, returns the number
    /// of handlers run (0 if stopped).
    std::size_t run_once();
    /// Runs what is ready without blocking; returns the number of handlers run.
    std::size_t poll();
    /// Makes run() return (and run_once() not block) soon. Thread-safe.
    void stop() noexcept;
    /// True after stop() until restart().
    bool stopped() const noexcept;
    /// Clears the stopped state so run() can be called again.
    void restart() noexcept;

    /// An fd that becomes readable when the loop has work, so a program's
    /// own poll()/epoll loop can drive hop: wait for it, then call poll().
    /// @throws std::logic_error on a loop hosted on an asio::io_context.
    int native_handle();

    /// Queues `fn()` to run on the loop. Thread-safe. An exception escaping
    /// `fn` is reported on stderr.
    template <class F>
    void post(F&& fn);

    using schedule_operation = detail::schedule_awaiter<io_loop>;
    /// `co_await loop.schedule()` moves the caller onto the loop's thread
    /// (free if it already is there). A cancellation point.
    /// @throws executor_shutdown_error if the loop is being destroyed.
    schedule_operation schedule() noexcept;

    /// Starts `t` on this loop now and returns its future. The loop must be
    /// run for it to progress. future::cancel() requests stop on its token.
    template <class T>
    future<T> spawn(task<T> t) {
        if (!t.valid()) throw std::invalid_argument("hop::io_loop::spawn: the task is empty (moved-from or default)");
        return detail::spawn_on<T>(*this, std::move(t));
    }

    /// True if the calling thread is running this loop now.
    bool running_in_this_thread() const noexcept;

    /// A number naming this loop in messages ("io_loop #3"), never reused
    /// within the process. Thread-safe.
    std::uint64_t id() const noexcept { return m_anchor->id; }
    /// "io_loop #3 (io_uring)", "hop::default_loop() #1 (epoll)".
    std::string describe() const;
    /// For IO objects: the anchor they keep to learn whether this loop is
    /// alive (hop/detail/io_handle.hpp).
    const std::shared_ptr<detail::loop_anchor>& anchor() const noexcept { return m_anchor; }

    void post_item(detail::work_item* w) override;
    void post_continuation(detail::work_item* w) noexcept override;

    /// For the implementation (timers, IO operations).
    detail::loop_core& core() noexcept { return *m_core; }

private:
    std::shared_ptr<detail::loop_anchor> m_anchor;
    std::unique_ptr<detail::loop_core> m_core;
};

inline io_loop::schedule_operation io_loop::schedule() noexcept { return {*this, "hop::io_loop::schedule"}; }

template <class F>
void io_loop::post(F&& fn) {
    detail::post_callable(*this, std::forward<F>(fn), "a callable passed to io_loop::post()");
}

/// The loop running on the calling thread, or null.
io_loop* current_loop() noexcept;

/// A process-wide loop running on a background thread, started at first
/// use; IO and timers awaited on a thread without a loop use it.
io_loop& default_loop();

/// The loop IO and timers awaited on this thread use: current_loop(), or
/// default_loop() on a thread that runs none.
io_loop& this_thread_loop();

namespace detail {
/// Runs a fresh loop on this thread until `f` is done (hop::run's engine).
void run_loop_until(io_loop& loop, future_state_base& f);
}  // namespace detail

/// asyncio.run: makes an io_loop on this thread, runs `t` to completion on
/// it, and returns its value or rethrows its exception. Work still pending
/// on the loop when `t` ends is cancelled when the loop is destroyed.
/// @throws std::logic_error if the loop is stopped (current_loop()->stop())
/// before `t` ends; `t` is then cancelled.
template <class T>
T run(task<T> t) {
    io_loop loop;
    auto f = loop.spawn(std::move(t));
    detail::run_loop_until(loop, *f.native_state());
    if constexpr (std::is_void_v<T>) {
        std::move(f).get();
    } else {
        return std::move(f).get();
    }
}

}  // namespace hop
