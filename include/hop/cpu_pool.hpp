#pragma once
/// @file
/// hop::cpu_pool — a work-stealing thread pool for CPU-bound work
/// (Python's ThreadPoolExecutor, without a GIL) — and hop::cpu().

#include <hop/detail/executor.hpp>
#include <hop/detail/fork.hpp>
#include <hop/future.hpp>
#include <hop/task.hpp>
#include <hop/detail/job.hpp>
#include <hop/detail/spawned.hpp>

#include <atomic>
#include <cstddef>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <stop_token>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace hop {

class cpu_pool;

namespace detail {

/// Shared state of cpu_pool::map: the inputs, one result slot per input and
/// one queue node per chunk.
template <class Fn, class Item, class R>
class map_state final : public future_state<std::vector<R>> {
public:
    struct chunk : work_item {
        map_state* owner = nullptr;
        std::size_t begin = 0, end = 0;
    };

    map_state(Fn fn, std::vector<Item> items, std::size_t chunk_size)
        : future_state<std::vector<R>>(&map_state::destroy, 2),
          m_fn(std::move(fn)),
          m_items(std::move(items)),
          m_results(m_items.size()) {
        this->enable_stop();
        const std::size_t n = m_items.size();
        // Not (n + chunk_size - 1) / chunk_size: that overflows for a huge chunk_size.
        const std::size_t count = n / chunk_size + (n % chunk_size != 0 ? 1 : 0);
        m_chunks.resize(count);
        for (std::size_t c = 0; c < count; ++c) {
            auto& ch = m_chunks[c];
            ch.owner = this;
            ch.begin = c * chunk_size;
            ch.end = std::min(n, ch.begin + chunk_size);
            ch.run = &map_state::run_chunk;
            ch.discard = &map_state::discard_chunk;
        }
        m_remaining.store(count, std::memory_order_relaxed);
    }

    std::vector<chunk>& chunks() noexcept { return m_chunks; }

    /// Completes an empty map at once.
    void finish_empty() {
        this->try_start();
        this->set_value(std::vector<R>{});
        this->release();
    }

private:
    static void destroy(future_state_base* s) noexcept {
        delete static_cast<map_state*>(static_cast<future_state<std::vector<R>>*>(s));
    }

    static void run_chunk(work_item* w) noexcept {
        auto& ch = *static_cast<chunk*>(w);
        auto* self = ch.owner;
        self->try_start();
        if (self->status() == future_status::running) {
            auto token = self->stop_source().get_token();
            for (std::size_t i = ch.begin; i < ch.end; ++i) {
                // Stop at a requested cancel and past the earliest failure so
                // far; items before a failure still run, so the error that is
                // rethrown is the first one in input order.
                if (token.stop_requested() || i > self->m_first_failure.load(std::memory_order_acquire)) break;
                try {
                    self->m_results[i].emplace(std::invoke(std::as_const(self->m_fn), std::move(self->m_items[i])));
                } catch (...) {
                    self->record_failure(i, std::current_exception());
                    break;
                }
            }
        }
        self->chunk_done();
    }

    static void discard_chunk(work_item* w) noexcept {
        auto* self = static_cast<chunk*>(w)->owner;
        self->cancel();
        self->stop_source().request_stop();
        self->chunk_done();
    }

    void record_failure(std::size_t i, std::exception_ptr e) noexcept {
        std::lock_guard lock(m_failure_mutex);
        if (i < m_first_failure.load(std::memory_order_relaxed)) {
            m_first_failure.store(i, std::memory_order_release);
            m_failure = std::move(e);
        }
    }

    void chunk_done() noexcept {
        if (m_remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
        if (this->status() == future_status::running) {
            if (m_failure) {
                this->complete_with_error(m_failure);
            } else if (this->stop_source().stop_requested()) {
                this->complete_with_error(std::make_exception_ptr(cancelled_error("hop::cpu_pool::map: cancelled")));
            } else {
                try {
                    std::vector<R> out;
                    out.reserve(m_results.size());
                    for (auto& r : m_results) out.push_back(std::move(*r));
                    this->set_value(std::move(out));
                } catch (...) {
                    this->complete_with_error(std::current_exception());
                }
            }
        }
        this->release();
    }

    Fn m_fn;
    std::vector<Item> m_items;
    std::vector<std::optional<R>> m_results;
    std::vector<chunk> m_chunks;
    std::atomic<std::size_t> m_remaining{0};
    std::atomic<std::size_t> m_first_failure{static_cast<std::size_t>(-1)};
    std::mutex m_failure_mutex;
    std::exception_ptr m_failure;
};

}  // namespace detail

/// A work-stealing pool of N threads for CPU-bound work.
///
/// Each worker has its own deque; work submitted from outside goes through
/// injection queues (clamp(size(), 2, 8) of them; the k-th thread that
/// submits from outside uses queue k mod that number); idle workers steal, then
/// park on a futex (no spinning while idle) and are woken one at a time: a
/// submission wakes a parked worker only if no worker is already awake and
/// looking for work. The destructor is `shutdown(true)`.
///
/// Order: work from one outside thread starts roughly in submission order
/// (workers take it in batches and steal from one another, so two jobs may
/// run at once or swap places); work from different threads is taken in
/// turn, so one thread's backlog does not hold up another thread's jobs.
/// Work submitted from a pool thread goes onto that worker's own deque,
/// newest first, where idle workers steal the oldest.
///
/// @code
/// hop::cpu_pool pool{4};
/// hop::future<int> f = pool.submit([](int a, int b) { return a + b; }, 2, 3);
/// std::vector<long> r = pool.map(count_primes, ranges).get();
/// @endcode
class cpu_pool final : public detail::executor_base {
public:
    /// std::thread::hardware_concurrency() threads (at least 1).
    cpu_pool();
    /// @throws std::invalid_argument if `threads` is 0 (or absurdly large).
    explicit cpu_pool(std::size_t threads);
    /// shutdown(true): waits for queued and running work, then joins the
    /// workers. Queued work is never dropped: every job still queued runs.
    ///
    /// Called from one of this pool's own jobs (e.g. the job resets the
    /// unique_ptr that owns the pool), it cannot join the thread it runs on:
    /// it waits like shutdown(true) from a pool thread (for every other
    /// worker to drain the queues and exit, or to block in shutdown()
    /// itself), and then returns without freeing the workers' shared state.
    /// Once the job returns, its worker runs whatever is still queued (jobs
    /// on its own deque, and with one worker everything), leaves its loop,
    /// and the last worker to do so
    /// joins the others, lets its own thread go (detached) and frees the
    /// state: nothing is dropped, nothing terminates, nothing leaks. After
    /// the destructor returns the job must not use the pool again, and a
    /// coroutine running on it must not suspend on anything that resumes it
    /// through the pool (its continuation would be posted to an object that
    /// no longer exists).
    ~cpu_pool();

    /// Number of worker threads.
    std::size_t size() const noexcept;

    using schedule_operation = detail::schedule_awaiter<cpu_pool>;
    /// `co_await pool.schedule()` moves the calling coroutine onto a pool
    /// thread. Resumes on a pool worker; costs nothing if the caller already
    /// runs on this pool. A cancellation point: throws cancelled_error if the
    /// task's stop was requested before or while it waited in the queue.
    /// @throws executor_shutdown_error after shutdown().
    schedule_operation schedule() noexcept;

    /// Runs `fn()` on the pool, fire-and-forget. An exception escaping `fn`
    /// is reported on stderr. Thread-safe.
    /// @throws executor_shutdown_error after shutdown().
    template <class F>
    void post(F&& fn) {
        detail::post_callable(*this, std::forward<F>(fn), "a callable passed to cpu_pool::post()");
    }

    /// Runs `fn(args...)` on the pool and returns a future for its result.
    /// `fn` and the arguments are copied (or moved) into the job. If `fn`
    /// returns a hop::task<T>, the task runs on the pool and the future is a
    /// future<T> whose cancel() requests stop on the task's token.
    /// @throws executor_shutdown_error after shutdown().
    template <class F, class... A>
    auto submit(F&& fn, A&&... args) {
        return detail::submit_to(*this, std::forward<F>(fn), std::forward<A>(args)...);
    }

    /// Applies `fn` to every item on the pool, in chunks of `chunk_size`
    /// items (0: about four chunks per worker), and returns a future for the
    /// results in input order. `fn` is called concurrently from several
    /// threads through a const reference, each item passed as an rvalue. The
    /// first failure in input order is rethrown by get(); chunks that had not
    /// started by then are skipped. cancel() stops the chunks not yet
    /// started and ends the future cancelled once the running ones return.
    /// @throws executor_shutdown_error after shutdown().
    template <class F, std::ranges::input_range Range>
    auto map(F&& fn, Range&& items, std::size_t chunk_size = 0) {
        using Item = std::ranges::range_value_t<Range>;
        using Fn = std::decay_t<F>;
        using R = std::invoke_result_t<const Fn&, Item&&>;
        static_assert(!std::is_void_v<R>, "cpu_pool::map needs a function that returns a value; use submit() for void");
        static_assert(!detail::is_task<R>::value,
                      "cpu_pool::map takes plain functions; for coroutine functions use hop::map(fn, items, {...})");
        std::vector<Item> in = detail::to_owned_vector(std::forward<Range>(items));
        const std::size_t n = in.size();
        if (n == 0 && is_shutdown()) throw executor_shutdown_error("hop::cpu_pool: work submitted after shutdown()");
        if (chunk_size == 0) chunk_size = std::max<std::size_t>(1, n / (size() * 4));
        using state = detail::map_state<Fn, Item, R>;
        auto* s = new state(Fn(std::forward<F>(fn)), std::move(in), chunk_size);
        auto fut = detail::make_future<std::vector<R>>(s);
        if (n == 0) {
            s->finish_empty();
            return fut;
        }
        try {
            post_batch(s->chunks().data(), s->chunks().size(), sizeof(typename state::chunk));
        } catch (...) {
            s->release();  // the chunks' reference: none of them was queued
            throw;
        }
        return fut;
    }

    /// Stops taking new work (submit, post, map and schedule() then throw
    /// executor_shutdown_error). With `cancel_pending`, jobs that have not
    /// started are cancelled (their futures end cancelled); continuations of
    /// coroutines that already run still run. With `wait`, blocks until the
    /// queues are drained and the workers have exited (called on one of this
    /// pool's own threads, it does not wait for that thread, nor for other
    /// workers blocked in shutdown() themselves). Idempotent.
    void shutdown(bool wait = true, bool cancel_pending = false);

    /// True once shutdown() was called.
    bool is_shutdown() const noexcept;

    /// True if the calling thread is one of this pool's workers.
    bool running_in_this_thread() const noexcept;

    void post_item(detail::work_item* w) override;
    void post_continuation(detail::work_item* w) noexcept override;

private:
    // Posts `count` items laid out `stride` bytes apart (map's chunks) in one go.
    void post_batch(void* first, std::size_t count, std::size_t stride);

    struct impl;
    std::unique_ptr<impl> m_impl;

    // The fork-join combinators push onto and take back from a worker's deque.
    friend detail::fork_point* detail::current_fork_point() noexcept;
    friend void detail::fork_push(detail::fork_point&, detail::work_item* const*, std::size_t);
    friend bool detail::fork_take_back(detail::fork_point&, detail::work_item*) noexcept;
    // Spawned children (hop::spawn on a pool, task_group) likewise.
    friend bool detail::fork_push_if_worker_of(detail::executor_base&, detail::work_item*);
    friend detail::join_result detail::join_forked(detail::work_item*, const detail::future_state_base&,
                                                   const detail::promise_base*) noexcept;
    friend bool detail::help_while(bool (*)(const void*), const void*) noexcept;
};

inline cpu_pool::schedule_operation cpu_pool::schedule() noexcept { return {*this, "hop::cpu_pool::schedule"}; }

/// hop::spawn on a cpu_pool: starts `t` on `pool` now and returns a future
/// for its result, as the generic hop::spawn does. Called from one of
/// `pool`'s workers, the task goes on that worker's own deque: idle workers
/// steal it, and if nobody has when the caller awaits the future (or calls
/// get()) on the same worker, it runs there inline and the caller does not
/// suspend (oneTBB's task_group::wait). The future is an ordinary one
/// (shareable, awaitable anywhere); cancel() requests stop on the task's
/// token, which is made only if the task asks for it.
/// @throws std::invalid_argument for an empty task.
/// @throws executor_shutdown_error if `pool` has been shut down.
template <class T>
future<T> spawn(cpu_pool& pool, task<T> t) {
    if (!t.valid()) throw std::invalid_argument("hop::spawn: the task is empty (moved-from or default-constructed)");
    return detail::spawn_child<T>(&pool, std::move(t), nullptr, nullptr);
}

/// The process-wide default pool (hardware_concurrency() threads), created at
/// first use and shut down at exit.
cpu_pool& cpu();

}  // namespace hop
