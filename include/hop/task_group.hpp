#pragma once
/// @file
/// hop::task_group — structured concurrency (asyncio's TaskGroup, Trio's
/// nursery).

#include <hop/detail/executor.hpp>
#include <hop/detail/spawned.hpp>
#include <hop/detail/stop.hpp>
#include <hop/future.hpp>
#include <hop/task.hpp>

#include <atomic>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <utility>

namespace hop {

namespace detail {

/// Shared by the group and its running children (so a group destroyed
/// early never leaves a child pointing at freed memory). One allocation from
/// the frame cache; lock-free on the spawn path. One atomic word says it
/// all: whether the task_group still exists, whether a coroutine waits, and
/// how many children run. Whoever leaves it at zero (the group gone, no
/// child running) frees the state. The group's stop source is lazy, as are
/// its children's (chained to it): nothing allocates one unless a child asks
/// for a token.
class group_state : public frame_allocated {
public:
    /// What wait() leaves for the last child to resume.
    struct waiter : resume_item {
        executor_base* executor = nullptr;
    };

    group_state() noexcept { m_stop.set_parent(nullptr); }
    group_state(const group_state&) = delete;
    group_state& operator=(const group_state&) = delete;

    /// A child is about to start (owner only).
    void child_started() noexcept { m_word.fetch_add(1, std::memory_order_relaxed); }
    /// A child ended; `e` is its exception (null on success). Cancellation
    /// is not a failure. The first failure stops the siblings. The child's
    /// last access to the group.
    void child_ended(std::exception_ptr e) noexcept;
    /// True (and `w` registered) if children are still running; false if
    /// none is (then wait() goes on without suspending). Owner only.
    /// @throws std::logic_error if another coroutine already waits.
    bool register_waiter(waiter* w);
    /// The waiter was resumed (or never suspended): owner only.
    void waiter_done() noexcept { m_word.fetch_and(~waiting, std::memory_order_relaxed); }
    /// Children started and not ended (acquire: their writes are visible
    /// once it reads 0). Owner only.
    std::uint64_t running() const noexcept { return m_word.load(std::memory_order_acquire) & count_mask; }
    /// The first failure; read once every child has ended.
    std::exception_ptr error() const noexcept { return m_error; }
    /// Requests stop on every child, now and later.
    void request_stop() noexcept { m_stop.request_stop(); }
    /// The lazy source the children's are chained to.
    lazy_stop_source& stop() noexcept { return m_stop; }
    /// The task_group is gone: frees the state unless children still run.
    void group_gone() noexcept;

private:
    static constexpr std::uint64_t alive = std::uint64_t{1} << 63;
    static constexpr std::uint64_t waiting = std::uint64_t{1} << 62;
    static constexpr std::uint64_t count_mask = waiting - 1;

    lazy_stop_source m_stop;
    std::atomic<std::uint64_t> m_word{alive};
    waiter* m_waiter = nullptr;  // written by the owner before it sets `waiting`
    std::atomic<bool> m_failed{false};
    std::exception_ptr m_error;  // written once, by the first failure
};

}  // namespace detail

/// Structured concurrency: tasks spawned into a group run concurrently;
/// `co_await group.wait()` returns once all have ended. The first failure
/// (an exception other than cancelled_error) requests stop on every other
/// child and is rethrown by wait() once all have ended.
///
/// @code
/// hop::task_group g;
/// for (auto& url : urls) g.spawn(fetch(url));
/// co_await g.wait();
/// @endcode
///
/// Destroying a group whose children still run requests stop on them; they
/// end on their own (they never touch the destroyed group).
class task_group {
public:
    task_group() : m_state(new detail::group_state()) {}
    task_group(const task_group&) = delete;
    task_group& operator=(const task_group&) = delete;
    ~task_group() {
        if (m_state->running() != 0) m_state->request_stop();
        m_state->group_gone();
    }

    /// Starts `t` in the group on the calling coroutine's executor: queued
    /// there, so spawn returns before the task runs (started inline on a
    /// thread that runs no executor). On a cpu_pool worker the task goes on
    /// the worker's own deque: idle workers steal it, and wait() (or an
    /// await of its future) on the same worker runs it inline if nobody did.
    /// Returns a future for its result.
    /// @throws std::invalid_argument for an empty task.
    template <class T>
    future<T> spawn(task<T> t) {
        return spawn_impl(detail::current_executor(), std::move(t));
    }

    /// Starts `t` in the group on executor `ex` (a cpu_pool or an io_loop).
    /// @throws executor_shutdown_error if `ex` has been shut down.
    template <class Executor, class T>
    future<T> spawn(Executor& ex, task<T> t) {
        return spawn_impl(static_cast<detail::executor_base*>(&ex), std::move(t));
    }

    /// Requests stop on every child.
    void cancel() noexcept { m_state->request_stop(); }

    /// The awaiter of wait().
    class wait_operation : private detail::group_state::waiter {
    public:
        /// For task_group::wait.
        explicit wait_operation(detail::group_state* s) noexcept : m_state(s) {}
        /// Never ready before it has looked (and helped, on a pool worker).
        bool await_ready() const noexcept { return false; }
        /// Runs the group's children still queued on this pool worker, then
        /// suspends only if some still run elsewhere.
        template <class P>
        bool await_suspend(std::coroutine_handle<P> h) {
            m_promise = detail::hop_promise_of(h.promise());
            // Stopped already: the children are cancelled before they run here.
            if (m_promise != nullptr && m_promise->stop_requested()) m_state->request_stop();
            if (m_state->running() == 0) return false;
            // Linked first: a stop requested while children run here reaches them.
            const std::stop_token& token = detail::token_of(h.promise());
            if (token.stop_possible()) m_link.emplace(token, stopper{m_state});
            (void)detail::help_while(
                [](const void* g) { return static_cast<const detail::group_state*>(g)->running() != 0; }, m_state);
            if (m_state->running() == 0) return false;
            handle = h;
            executor = detail::current_executor();
            return m_state->register_waiter(this);
        }
        /// Rethrows the first failure, or cancelled_error if the waiter was stopped.
        void await_resume() {
            m_link.reset();
            m_state->waiter_done();
            if (auto e = m_state->error()) std::rethrow_exception(e);
            if (m_promise != nullptr && m_promise->stop_requested()) {
                throw cancelled_error("hop::task_group::wait: cancelled");
            }
        }

    private:
        struct stopper {
            detail::group_state* s;
            void operator()() const noexcept { s->request_stop(); }
        };
        detail::group_state* m_state;
        std::optional<std::stop_callback<stopper>> m_link;
        const detail::promise_base* m_promise = nullptr;
    };

    /// Waits until every child has ended, then rethrows the first failure.
    /// If the waiting coroutine's own stop is requested, the children are
    /// cancelled, awaited, and cancelled_error is thrown. Resumes the caller
    /// on its own executor.
    wait_operation wait() noexcept { return wait_operation{m_state}; }

private:
    template <class T>
    future<T> spawn_impl(detail::executor_base* ex, task<T> t) {
        if (!t.valid()) throw std::invalid_argument("hop::task_group::spawn: the task is empty (moved-from or default)");
        m_state->child_started();
        // The child's stop is its own (its future's cancel() stops it alone),
        // chained to the group's.
        return detail::spawn_child<T>(ex, std::move(t), m_state, &m_state->stop());
    }

    detail::group_state* m_state;
};

}  // namespace hop
