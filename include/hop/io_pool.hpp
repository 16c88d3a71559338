#pragma once
/// @file
/// hop::io_pool — N io_loops, each run by its own thread (one per core by
/// default): Seastar's shard per core, Asio's io_context per thread, with
/// hop's tasks, futures and stop tokens across them.
///
/// @code
/// hop::io_pool loops;                        // one loop per core, running
/// auto fs = loops.spawn_on_each([](std::size_t i) -> hop::task<> {
///     co_await serve_shard(i);               // runs on loops[i]
/// });
/// co_await loops[1].schedule();              // from a task: move to loop 1
/// @endcode
///
/// Tasks move between the loops with `co_await pool[i].schedule()`, under
/// the affinity rule: after that await the coroutine runs on loop i, and
/// each later await resumes it there. Its stop token goes with it. A socket
/// still belongs to the loop of its first operation: hand a fresh one to
/// another loop before it is used (tcp_listener::accept_detached() makes
/// connections for that).
///
/// A hop to a sleeping io_uring loop wakes it with an IORING_OP_MSG_RING
/// that rides on the posting loop's next submit (no syscall of its own).
/// So never block a loop thread on a primitive hop does not own
/// (std::condition_variable, std::future) waiting for another loop of the
/// pool: that loop may never be woken (hop's own blocking waits send the
/// wake first; io_loop says more).
///
/// Per-loop state (a cache or a connection pool per loop, no locks): keep
/// a `std::vector<T>` of size() and index it with this_index() from code
/// that runs on the pool's loops; examples/per_loop_state.cpp shows it.

#include <hop/detail/linked_child.hpp>
#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stop_token>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace hop {

/// Options for an io_pool.
struct io_pool_options {
    /// How many loops (and threads); 0: std::thread::hardware_concurrency()
    /// (at least 1).
    std::size_t loops = 0;
    /// Each loop's options (its backend, queue depth).
    io_loop_options loop{};
    /// Pins loop i's thread to the i-th CPU this process may run on
    /// (modulo their number).
    bool pin_threads = false;
};

/// How a server on an io_pool spreads its connections over the loops.
enum class accept_mode : std::uint8_t {
    /// One listener; its acceptor hands each connection to the loop that
    /// serves the fewest at that moment. Balances exactly, whatever the
    /// addresses; every connection costs one hop from the accepting loop.
    least_loaded,
    /// A SO_REUSEPORT listener per loop; the kernel picks one by a hash of
    /// the connection's addresses. No hop, but no balancing either: a loop
    /// may get more than its share (and keeps it).
    reuse_port,
};

class io_pool;

namespace detail {

/// What the pool and the tasks it spawned share; outlives neither.
struct io_pool_state;

/// Counts a task spawn_on started (its loop's load, the pool's total) and
/// links its stop to the pool's shutdown.
void pool_task_started(io_pool_state& s, std::size_t i);
void pool_task_ended(io_pool_state& s, std::size_t i) noexcept;
std::stop_token pool_stop_token(io_pool_state& s) noexcept;

/// What a task tells its pool when it has ended (its frame gone).
struct pool_task_end {
    io_pool_state* pool;
    std::size_t index;
    void operator()(std::exception_ptr) const noexcept { pool_task_ended(*pool, index); }
};

}  // namespace detail

/// A pool of io_loops, each made, run and destroyed by its own thread. The
/// loops run from construction until the pool is stopped.
///
/// Shutdown (stop(), or the destructor): every task started with spawn_on /
/// spawn_on_each has its stop requested; the loops keep running until all
/// of those tasks have ended, wherever they are (a task that hopped to
/// another loop of the pool, or to a cpu_pool, is waited for), then each
/// loop stops and is destroyed on its thread, which cancels what else is
/// pending on it (its own timers and IO). One task failing does not touch
/// the others: its exception goes to its future.
///
/// The loops belong to the pool: `pool[i].stop()` does not end loop i (its
/// thread runs it again); stop the pool instead.
///
/// Work a pool loop runs that was not started through spawn_on (a
/// loops[i].spawn(), a post) is not waited for at shutdown: it is
/// cancelled when its loop is destroyed, and must not then move to
/// another of the pool's loops.
class io_pool {
public:
    /// One loop per core (hardware_concurrency), automatic backend.
    io_pool();
    /// `loops` loops. @throws std::invalid_argument for 0 or more than 4096.
    explicit io_pool(std::size_t loops);
    /// @throws std::invalid_argument for a bad option (naming it);
    ///         std::system_error if a loop's backend cannot start.
    explicit io_pool(const io_pool_options& options);
    /// stop(), then waits for the loops' threads to end.
    ///
    /// Called from a task on one of the pool's own loops (which cannot
    /// join its own thread) it stops the pool and returns at once: the
    /// shutdown goes on without it, and the last of the pool's threads to
    /// end frees what they share. After that the caller must not use the
    /// pool again.
    ~io_pool();

    io_pool(const io_pool&) = delete;
    io_pool& operator=(const io_pool&) = delete;

    /// Number of loops.
    std::size_t size() const noexcept;
    /// Loop `i`. Thread-safe. The reference is good until the pool has
    /// shut down (run() returned, or the destructor).
    /// @throws std::out_of_range naming `i` and size().
    io_loop& operator[](std::size_t i) const;
    /// The pool's loop the calling thread runs, or null.
    io_loop* this_loop() const noexcept;
    /// The index of the pool's loop the calling thread runs.
    /// @throws std::logic_error on a thread that runs none of them.
    std::size_t this_index() const;

    /// Starts `t` on loop `i` and returns its future. The task counts
    /// toward load(i) until it ends, and shutdown waits for it.
    /// future::cancel() requests stop on the task's token. Thread-safe.
    /// @throws std::out_of_range naming `i`; std::invalid_argument for an
    ///         empty task; executor_shutdown_error after stop().
    template <class T>
    future<T> spawn_on(std::size_t i, task<T> t);

    /// Calls `fn(i)` for each loop i (here, on the calling thread: it only
    /// makes the task) and starts the task it returns on loop i. Returns
    /// their futures, in loop order.
    /// @throws as spawn_on; tasks already started keep running.
    template <class F>
    auto spawn_on_each(F&& fn) {
        using T = typename std::invoke_result_t<F&, std::size_t>::value_type;
        std::vector<future<T>> out;
        out.reserve(size());
        for (std::size_t i = 0; i < size(); ++i) out.push_back(spawn_on(i, std::invoke(fn, i)));
        return out;
    }

    /// Tasks started on loop `i` with spawn_on that have not ended.
    /// Thread-safe. @throws std::out_of_range naming `i`.
    std::size_t load(std::size_t i) const;
    /// The loop with the smallest load() (the lowest index among equals).
    std::size_t least_loaded() const noexcept;

    /// Starts the shutdown described above and returns at once.
    /// Thread-safe; may be called from a task on the pool. Idempotent.
    void stop() noexcept;
    /// True once stop() has been called.
    bool stopping() const noexcept;
    /// Blocks until the pool has been stopped (by stop() from anywhere:
    /// another thread, a task, a signal watcher) and every loop's thread
    /// has ended. This is how main() lets the pool serve.
    /// @throws std::logic_error from one of the pool's own threads.
    void run();

private:
    void check_index(std::size_t i, const char* where) const;
    detail::io_pool_state* m_state;  // owned; freed by the destructor
};

template <class T>
future<T> io_pool::spawn_on(std::size_t i, task<T> t) {
    check_index(i, "hop::io_pool::spawn_on");
    if (!t.valid()) throw std::invalid_argument("hop::io_pool::spawn_on: the task is empty (moved-from or default)");
    io_loop& loop = (*this)[i];
    detail::pool_task_started(*m_state, i);  // throws after stop()
    auto* s = new detail::child_future_state<T>();
    try {
        s->enable_stop();
    } catch (...) {
        delete s;
        detail::pool_task_ended(*m_state, i);
        throw;
    }
    auto fut = detail::make_future<T>(s);
    // The pool's shutdown reaches the task through its future's source.
    auto driver = detail::linked_child<T>(detail::pool_stop_token(*m_state), s, std::move(t),
                                          detail::pool_task_end{m_state, i});
    auto& p = driver.promise();
    p.m_stop_token = s->stop_source().get_token();
    try {
        loop.post_item(&p.m_item);
    } catch (...) {
        s->release();  // the driver's reference: it never ran
        detail::pool_task_ended(*m_state, i);
        throw;
    }
    driver.release();
    return fut;
}

}  // namespace hop
