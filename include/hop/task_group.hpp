#pragma once
/// @file
/// hop::task_group — structured concurrency (asyncio's TaskGroup, Trio's
/// nursery).

#include <hop/detail/executor.hpp>
#include <hop/future.hpp>
#include <hop/task.hpp>

#include <atomic>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <utility>

namespace hop {

namespace detail {

/// Shared by the group and its running children (so a group destroyed
/// early never leaves a child pointing at freed memory).
class group_state {
public:
    /// Registers a child whose token comes from `stop`; returns its id.
    /// A child added to a stopped group is stopped at once.
    std::uint64_t child_started(std::stop_source stop);
    /// A child ended; `e` is its exception (null on success). Cancellation
    /// is not a failure. The first failure stops the siblings.
    void child_ended(std::uint64_t id, std::exception_ptr e) noexcept;
    /// True (and `w` registered) if children are still running.
    bool register_waiter(resume_item* w, executor_base* ex);
    std::exception_ptr error();
    /// Requests stop on every child, now and later.
    void request_stop() noexcept;

private:
    std::mutex m_mutex;
    std::map<std::uint64_t, std::stop_source> m_children;
    std::uint64_t m_next_id = 0;
    bool m_stopped = false;
    resume_item* m_waiter = nullptr;
    executor_base* m_waiter_executor = nullptr;
    std::exception_ptr m_error;
};

template <class T>
detached_task group_child(std::shared_ptr<group_state> g, std::uint64_t id, future_state<T>* s, task<T> t) {
    std::exception_ptr error;
    if (s->try_start()) {
        try {
            if constexpr (std::is_void_v<T>) {
                co_await std::move(t);
                s->set_value();
            } else {
                s->set_value(co_await std::move(t));
            }
        } catch (...) {
            error = std::current_exception();
        }
        // Outside the handler: this thread's only reference is `error`.
        if (error) s->complete_with_error(error);
    }
    // Free the child's frame (and the arguments it owns) before wait() can
    // return: once it does, every child has ended.
    t = task<T>();
    s->release();
    g->child_ended(id, std::move(error));
}

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

    class wait_operation : private detail::resume_item {
    public:
        explicit wait_operation(std::shared_ptr<detail::group_state> s) noexcept : m_state(std::move(s)) {}
        bool await_ready() const noexcept { return false; }
        template <class P>
        bool await_suspend(std::coroutine_handle<P> h) {
            handle = h;
            const std::stop_token& token = detail::token_of(h.promise());
            if (token.stop_possible()) m_link.emplace(token, stopper{m_state.get()});
            m_cancelled_by_caller = &token;
            return m_state->register_waiter(this, detail::current_executor());
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
        auto* s = new detail::future_state<T>(&detail::future_state<T>::delete_self, 2);
        s->enable_stop();
        auto fut = detail::make_future(s);
        // The child's token is its future's: cancel() on the future stops it,
        // and the group stops it through the same source.
        auto id = m_state->child_started(s->stop_source());
        auto driver = detail::group_child<T>(m_state, id, s, std::move(t));
        auto& p = driver.promise();
        p.m_stop_token = s->stop_source().get_token();
        if (ex) {
            try {
                ex->post_item(&p.m_item);
            } catch (...) {
                s->release();
                m_state->child_ended(id, nullptr);
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
