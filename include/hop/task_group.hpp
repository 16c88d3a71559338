#pragma once
/// @file
/// hop::task_group — structured concurrency (asyncio's TaskGroup, Trio's
/// nursery).

#include <hop/detail/executor.hpp>
#include <hop/detail/linked_child.hpp>
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
/// early never leaves a child pointing at freed memory). Lock-free on the
/// spawn path: a count of running children, one stop source for the group
/// (each child's own source is linked to it by a stop_callback in the
/// child's driver frame), and the waiter published with an atomic.
class group_state {
public:
    /// What wait() leaves for the last child to resume.
    struct waiter : resume_item {
        executor_base* executor = nullptr;
    };

    /// A child is about to start.
    void child_started() noexcept { m_running.fetch_add(1, std::memory_order_relaxed); }
    /// A child ended; `e` is its exception (null on success). Cancellation
    /// is not a failure. The first failure stops the siblings.
    void child_ended(std::exception_ptr e) noexcept;
    /// True (and `w` registered) if children are still running.
    /// @throws std::logic_error if another coroutine already waits.
    bool register_waiter(waiter* w);
    /// The first failure; read once every child has ended.
    std::exception_ptr error() const noexcept { return m_error; }
    /// Requests stop on every child, now and later.
    void request_stop() noexcept { m_stop.request_stop(); }
    std::stop_token token() const noexcept { return m_stop.get_token(); }

private:
    std::stop_source m_stop;
    std::atomic<std::size_t> m_running{0};
    std::atomic<waiter*> m_waiter{nullptr};
    std::atomic<bool> m_failed{false};
    std::exception_ptr m_error;  // written once, by the first failure
};

/// What a child tells its group when it has ended.
struct group_child_ended {
    std::shared_ptr<group_state> group;
    void operator()(std::exception_ptr e) const noexcept { group->child_ended(std::move(e)); }
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
    task_group() : m_state(std::make_shared<detail::group_state>()) {}
    task_group(const task_group&) = delete;
    task_group& operator=(const task_group&) = delete;
    ~task_group() { m_state->request_stop(); }

    /// Starts `t` in the group on the calling coroutine's executor: queued
    /// there, so spawn returns before the task runs (started inline on a
    /// thread that runs no executor). Returns a future for its result.
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

    class wait_operation : private detail::group_state::waiter {
    public:
        explicit wait_operation(std::shared_ptr<detail::group_state> s) noexcept : m_state(std::move(s)) {}
        bool await_ready() const noexcept { return false; }
        template <class P>
        bool await_suspend(std::coroutine_handle<P> h) {
            handle = h;
            executor = detail::current_executor();
            const std::stop_token& token = detail::token_of(h.promise());
            if (token.stop_possible()) m_link.emplace(token, stopper{m_state.get()});
            m_cancelled_by_caller = &token;
            return m_state->register_waiter(this);
        }
        void await_resume() {
            m_link.reset();
            if (auto e = m_state->error()) std::rethrow_exception(e);
            if (m_cancelled_by_caller && m_cancelled_by_caller->stop_requested()) {
                throw cancelled_error("hop::task_group::wait: cancelled");
            }
        }

    private:
        struct stopper {
            detail::group_state* s;
            void operator()() const noexcept { s->request_stop(); }
        };
        std::shared_ptr<detail::group_state> m_state;
        std::optional<std::stop_callback<stopper>> m_link;
        const std::stop_token* m_cancelled_by_caller = nullptr;
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
        auto* s = new detail::child_future_state<T>();
        try {
            s->enable_stop();
        } catch (...) {
            delete s;
            throw;
        }
        auto fut = detail::make_future<T>(s);
        // The child's token is its future's: cancel() on the future stops it,
        // and the group stops it through the same source.
        auto driver = detail::linked_child<T>(m_state->token(), s, std::move(t), detail::group_child_ended{m_state});
        auto& p = driver.promise();
        p.m_stop_token = s->stop_source().get_token();
        m_state->child_started();
        if (ex) {
            try {
                ex->post_item(&p.m_item);
            } catch (...) {
                s->release();  // the driver's reference: it never ran
                m_state->child_ended(nullptr);
                throw;
            }
            driver.release();
        } else {
            driver.release().resume();
        }
        return fut;
    }

    std::shared_ptr<detail::group_state> m_state;
};

}  // namespace hop
