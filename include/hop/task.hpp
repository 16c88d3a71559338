#pragma once
/// @file
/// hop::task<T> (lazy coroutine), hop::sync_wait, hop::spawn, hop::get_stop_token.

#include <hop/detail/assert.hpp>
#include <hop/detail/awaitable_traits.hpp>
#include <hop/detail/executor.hpp>
#include <hop/detail/stop.hpp>
#include <hop/future.hpp>

#include <atomic>
#include <coroutine>
#include <exception>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

namespace hop {

template <class T = void>
class task;

namespace detail {

// The handshake between a task and its awaiter. The awaiter starts the child
// with a plain resume() and returns `false` from await_suspend when the child
// finished synchronously, so a loop of synchronous co_awaits never nests a
// stack frame, even at -O0 where GCC emits no tail call (libcoro #273).
//
// m_flag's states and who moves it (each move is one exchange, so exactly one
// side sees the other's mark):
//   task_running          set by start() before the child first runs;
//   -> task_finished      by the child's final_suspend (any thread). If it
//                         finds task_running, the parent is still inside
//                         start() on the first thread and goes on itself;
//   -> task_parent_suspended
//                         by start() once the child's first resume()
//                         returned. If it finds task_finished the parent
//                         does not suspend; else the child, at its end,
//                         finds task_parent_suspended and resumes the parent.
// Each side moves the flag once per start(): HOP_ASSERT checks that the
// other never saw its own mark already.
enum : std::uint8_t { task_running = 0, task_finished = 1, task_parent_suspended = 2 };

template <class T>
class task_promise;

class task_promise_base : public promise_base {
public:
    std::suspend_always initial_suspend() const noexcept { return {}; }

    struct final_awaiter {
        bool await_ready() const noexcept { return false; }
        template <class P>
        std::coroutine_handle<> await_suspend(std::coroutine_handle<P> self) noexcept {
            task_promise_base& p = self.promise();
            if (p.m_sink != nullptr) {
                // Started by a combinator: report there. The report may resume
                // the parent, which may destroy this frame: touch nothing after.
                completion_sink* sink = p.m_sink;
                sink->ended(*sink, p.m_failed);
                return std::noop_coroutine();
            }
            const std::uint8_t prev = p.m_flag.exchange(task_finished, std::memory_order_acq_rel);
            HOP_ASSERT(prev != task_finished, "a task reached its end twice in one start()");
            if (prev != task_parent_suspended) {
                return std::noop_coroutine();  // the parent's await_suspend continues it
            }
            auto* ex = p.m_continuation_executor;
            if (ex == nullptr || ex == current_executor()) return p.m_continuation.handle;
            ex->post_continuation(&p.m_continuation);
            return std::noop_coroutine();
        }
        void await_resume() const noexcept {}
    };
    final_awaiter final_suspend() const noexcept { return {}; }

    /// Starts the child on the calling thread; true if the parent must suspend.
    template <class P>
    bool start(std::coroutine_handle<> self, std::coroutine_handle<P> parent) noexcept {
        m_continuation.handle = parent;
        m_continuation_executor = current_executor();
        if (const promise_base* pp = hop_promise_of(parent.promise())) inherit_stop(*pp);
        m_flag.store(task_running, std::memory_order_relaxed);
        self.resume();
        const std::uint8_t prev = m_flag.exchange(task_parent_suspended, std::memory_order_acq_rel);
        HOP_ASSERT(prev != task_parent_suspended, "a parent suspended twice on one task");
        return prev != task_finished;
    }

    /// For drivers that start a task without a parent coroutine.
    void set_stop_token(std::stop_token t) noexcept { m_stop_token = std::move(t); }

    /// Where a task started by a combinator (when_all, when_any) reports its
    /// end, on the thread that ran it, in place of resuming a parent: no
    /// driver coroutine per child, no handshake.
    struct completion_sink {
        void (*ended)(completion_sink& self, bool failed) noexcept = nullptr;
    };
    /// Readies this task (not started) to run without a parent: returns the
    /// work item whose run() starts it (inline, or from a pool's deque). Its
    /// stop comes from `origin`; at its end it calls `sink`. Its result stays
    /// in the frame for take_result().
    work_item* prepare_detached(std::coroutine_handle<> self, completion_sink& sink,
                                lazy_stop_source* origin) noexcept {
        m_sink = &sink;
        m_stop_origin = origin;
        m_continuation.handle = self;
        return &m_continuation;
    }

protected:
    bool m_failed = false;  // ended with an exception (set by unhandled_exception)

private:
    resume_item m_continuation;
    executor_base* m_continuation_executor = nullptr;
    completion_sink* m_sink = nullptr;
    std::atomic<std::uint8_t> m_flag{task_running};
};

template <class T>
class task_promise final : public task_promise_base {
public:
    task<T> get_return_object() noexcept;
    template <class U>
        requires std::is_convertible_v<U&&, T>
    void return_value(U&& v) {
        m_result.template emplace<1>(std::forward<U>(v));
    }
    void unhandled_exception() noexcept {
        m_result.template emplace<2>(std::current_exception());
        m_failed = true;
    }
    T take_result() {
        // The exception is moved out, not copied: the frame must not keep a
        // reference to it once the result has been handed on (see drive_into).
        if (m_result.index() == 2) std::rethrow_exception(std::move(std::get<2>(m_result)));
        return std::move(std::get<1>(m_result));
    }

private:
    std::variant<std::monostate, T, std::exception_ptr> m_result;
};

template <>
class task_promise<void> final : public task_promise_base {
public:
    task<void> get_return_object() noexcept;
    void return_void() noexcept {}
    void unhandled_exception() noexcept {
        m_error = std::current_exception();
        m_failed = true;
    }
    void take_result() {
        if (m_error) std::rethrow_exception(std::move(m_error));
    }

private:
    std::exception_ptr m_error;
};

[[noreturn]] void throw_task_misuse(const char* what);

}  // namespace detail

/// A lazy, move-only coroutine. Nothing runs until it is awaited (or handed
/// to spawn / sync_wait); its result or exception goes to the awaiter.
///
/// Awaiting a task starts it on the caller's thread; when it finishes, the
/// caller resumes on the executor it was on when it awaited (inline if the
/// task ends there, queued there otherwise). The task inherits the caller's
/// stop token.
///
/// @code
/// hop::task<int> answer() { co_return 42; }
/// hop::task<> caller() { int v = co_await answer(); }
/// @endcode
template <class T>
class [[nodiscard]] task {
public:
    using promise_type = detail::task_promise<T>;
    /// The result type.
    using value_type = T;
    using handle_type = std::coroutine_handle<promise_type>;

    task() noexcept = default;
    /// Wraps a coroutine handle (the promise does this).
    explicit task(handle_type h) noexcept : m_handle(h) {}
    /// Takes `o`'s coroutine; `o` is empty afterwards.
    task(task&& o) noexcept : m_handle(std::exchange(o.m_handle, nullptr)) {}
    /// Destroys this task's coroutine (if not started), then takes `o`'s.
    task& operator=(task&& o) noexcept {
        if (this != &o) {
            if (m_handle) m_handle.destroy();
            m_handle = std::exchange(o.m_handle, nullptr);
        }
        return *this;
    }
    task(const task&) = delete;
    task& operator=(const task&) = delete;
    ~task() {
        if (m_handle) m_handle.destroy();
    }

    /// False for a moved-from task.
    bool valid() const noexcept { return static_cast<bool>(m_handle); }

    class awaiter {
    public:
        explicit awaiter(handle_type h) noexcept : m_handle(h) {}
        bool await_ready() const {
            if (!m_handle) detail::throw_task_misuse("co_await on an empty (moved-from or default) hop::task");
            if (m_handle.done()) detail::throw_task_misuse("co_await on a hop::task that was already awaited");
            return false;
        }
        template <class P>
        bool await_suspend(std::coroutine_handle<P> parent) noexcept {
            return m_handle.promise().start(m_handle, parent);
        }
        T await_resume() { return m_handle.promise().take_result(); }

    private:
        handle_type m_handle;
    };

    /// Starts the task and suspends the caller until it ends; the caller resumes on its own executor (the affinity rule) and gets the result or the exception.
    awaiter operator co_await() & noexcept { return awaiter{m_handle}; }
    /// Starts the task and suspends the caller until it ends; the caller resumes on its own executor (the affinity rule) and gets the result or the exception.
    awaiter operator co_await() && noexcept { return awaiter{m_handle}; }

    /// For drivers (spawn, sync_wait, combinators): give up ownership.
    handle_type release() noexcept { return std::exchange(m_handle, nullptr); }
    /// The coroutine handle (for hop's own plumbing: combinators, spawn).
    handle_type handle() const noexcept { return m_handle; }

private:
    handle_type m_handle;
};

namespace detail {
template <class T>
task<T> task_promise<T>::get_return_object() noexcept {
    return task<T>{std::coroutine_handle<task_promise<T>>::from_promise(*this)};
}
inline task<void> task_promise<void>::get_return_object() noexcept {
    return task<void>{std::coroutine_handle<task_promise<void>>::from_promise(*this)};
}

/// A fire-and-forget coroutine used by drivers: starts suspended, frees its
/// own frame at the end. Its body must not let an exception escape.
class detached_task {
public:
    struct promise_type : promise_base {
        resume_item m_item;
        future_state_base* m_state = nullptr;  // set by spawn_on, for discard
        detached_task get_return_object() noexcept {
            auto h = std::coroutine_handle<promise_type>::from_promise(*this);
            m_item.handle = h;
            return detached_task{h};
        }
        std::suspend_always initial_suspend() const noexcept { return {}; }
        std::suspend_never final_suspend() const noexcept { return {}; }
        void return_void() const noexcept {}
        [[noreturn]] void unhandled_exception() const noexcept { std::terminate(); }
    };
    using handle_type = std::coroutine_handle<promise_type>;

    explicit detached_task(handle_type h) noexcept : m_handle(h) {}
    detached_task(detached_task&& o) noexcept : m_handle(std::exchange(o.m_handle, nullptr)) {}
    detached_task(const detached_task&) = delete;
    ~detached_task() {
        if (m_handle) m_handle.destroy();
    }
    promise_type& promise() const noexcept { return m_handle.promise(); }
    /// Hands the frame over (to an executor queue or a direct resume()).
    handle_type release() noexcept { return std::exchange(m_handle, nullptr); }

private:
    handle_type m_handle;
};

/// Runs `aw` to completion and stores its outcome in `s` (whose reference
/// this driver owns). Skips the work if the future was cancelled first.
///
/// The outcome is published only after the awaitable (a task's frame, with
/// the arguments it owns) is destroyed and the catch handler has ended: once
/// a waiter can see the result, this thread holds no reference to it. An
/// exception object is reference-counted inside libstdc++, whose atomics
/// ThreadSanitizer cannot see; publishing first let the last reference drop
/// here while the waiter still read the exception (a false report that
/// nevertheless stood for a real ordering gap).
template <class T, class Awaitable>
detached_task drive_into(future_state<T>* s, Awaitable aw) {
    struct releaser {
        future_state<T>* s;
        ~releaser() { s->release(); }
    } r{s};
    if (!s->try_start()) co_return;
    std::exception_ptr error;
    std::optional<std::conditional_t<std::is_void_v<T>, std::monostate, T>> value;
    try {
        if constexpr (std::is_void_v<T>) {
            co_await std::move(aw);
            value.emplace();
        } else {
            value.emplace(co_await std::move(aw));
        }
    } catch (...) {
        error = std::current_exception();
    }
    { Awaitable spent = std::move(aw); }
    if (error) {
        s->complete_with_error(std::move(error));
        co_return;
    }
    try {
        if constexpr (std::is_void_v<T>) {
            s->set_value();
        } else {
            s->set_value(std::move(*value));
        }
    } catch (...) {
        // set_value stored the error (T's move threw); nothing else to do.
    }
}

/// The executor-agnostic part of spawn: starts `aw` on `ex` and returns its
/// future. The driver's frame is queued on `ex`; no thread blocks.
template <class T, class Awaitable>
future<T> spawn_on(executor_base& ex, Awaitable aw) {
    auto* s = new future_state<T>(&future_state<T>::delete_self, 2);
    s->enable_stop();
    auto driver = drive_into<T>(s, std::move(aw));
    driver.promise().m_stop_token = s->stop_source().get_token();
    auto& p = driver.promise();
    p.m_state = s;
    // Dropped by a pool shut down with cancel_pending: cancel the future, then
    // let the driver run to its end (it sees the cancellation and frees itself).
    p.m_item.discard = [](work_item* w) noexcept {
        auto* item = static_cast<resume_item*>(w);
        auto h = detached_task::handle_type::from_address(item->handle.address());
        h.promise().m_state->cancel();
        item->handle.resume();
    };
    auto fut = make_future(s);
    try {
        ex.post_item(&p.m_item);
    } catch (...) {
        s->release();  // the driver's reference: its body never ran
        throw;
    }
    driver.release();
    return fut;
}

/// The inline loop that sync_wait drives on the calling thread.
class blocking_loop final : public executor_base {
public:
    blocking_loop();
    ~blocking_loop();
    void post_item(work_item* w) override;
    void post_continuation(work_item* w) noexcept override;
    /// Runs queued work on this thread until finish() is called.
    void run_until_finished() noexcept;
    /// Thread-safe.
    void finish() noexcept;

private:
    struct impl;
    std::shared_ptr<impl> m_impl;
};

template <class R>
struct sync_wait_result {
    std::variant<std::monostate, std::conditional_t<std::is_void_v<R>, std::monostate, R>, std::exception_ptr> v;
};

template <class R, class Awaitable>
detached_task sync_wait_driver(blocking_loop& loop, sync_wait_result<R>& out, Awaitable&& aw) {
    try {
        if constexpr (std::is_void_v<R>) {
            co_await static_cast<Awaitable&&>(aw);
            out.v.template emplace<1>();
        } else {
            out.v.template emplace<1>(co_await static_cast<Awaitable&&>(aw));
        }
    } catch (...) {
        out.v.template emplace<2>(std::current_exception());
    }
    loop.finish();
}

}  // namespace detail

/// Blocks the calling thread until `aw` (a task, future, combinator, or any
/// awaitable) completes, running hop work that must resume on this thread
/// meanwhile. Returns the value or rethrows the exception.
///
/// Do not call it on an io_loop thread or from a pool job that the awaited
/// work needs: the thread blocks.
/// @code
/// int v = hop::sync_wait(answer());
/// @endcode
template <class Awaitable>
auto sync_wait(Awaitable&& aw) -> detail::await_result_t<Awaitable> {
    using R = detail::await_result_t<Awaitable>;
    detail::blocking_loop loop;
    detail::sync_wait_result<R> out;
    {
        detail::current_executor_scope scope(&loop);
        auto driver = detail::sync_wait_driver<R>(loop, out, std::forward<Awaitable>(aw));
        driver.release().resume();
        loop.run_until_finished();
    }
    if (out.v.index() == 2) std::rethrow_exception(std::get<2>(out.v));
    if constexpr (!std::is_void_v<R>) return std::move(std::get<1>(out.v));
}

/// Starts `t` on executor `ex` now (it runs there, not on the caller) and
/// returns a future for its result. future::cancel() requests stop on the
/// task's stop token (or drops it if it has not started).
/// @throws hop::executor_shutdown_error if `ex` has been shut down.
template <class Executor, class T>
future<T> spawn(Executor& ex, task<T> t) {
    if (!t.valid()) throw std::invalid_argument("hop::spawn: the task is empty (moved-from or default-constructed)");
    return detail::spawn_on<T>(static_cast<detail::executor_base&>(ex), std::move(t));
}

namespace detail {

/// `co_await ex.schedule()` for any executor with running_in_this_thread()
/// and post_item(): resumes the caller on `ex` (free if it already runs
/// there). A cancellation point: stop requested before, or while queued,
/// throws cancelled_error naming `what`.
template <class Executor>
class schedule_awaiter : private resume_item {
public:
    schedule_awaiter(Executor& ex, const char* what) noexcept : m_executor(&ex), m_what(what) {}
    bool await_ready() const noexcept { return false; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        m_promise = hop_promise_of(h.promise());
        m_stopped = m_promise != nullptr && m_promise->stop_requested();
        if (m_stopped || m_executor->running_in_this_thread()) return false;
        handle = h;
        m_queued = true;  // before posting: once posted, the caller may resume anywhere
        try {
            m_executor->post_item(this);
        } catch (...) {
            m_queued = false;
            throw;
        }
        return true;
    }
    void await_resume() const {
        // Checked again only after a wait in the queue: stop may have come meanwhile.
        if (m_stopped || (m_queued && m_promise != nullptr && m_promise->stop_requested())) {
            throw cancelled_error(std::string(m_what) + ": cancelled");
        }
    }

private:
    Executor* m_executor;
    const char* m_what;
    const promise_base* m_promise = nullptr;
    bool m_stopped = false;
    bool m_queued = false;
};

}  // namespace detail

/// `co_await hop::get_stop_token()` reads the running task's stop token.
/// Completes at once, on the same thread.
struct get_stop_token_awaiter {
    std::stop_token m_token;
    bool await_ready() const noexcept { return false; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        m_token = detail::token_of(h.promise());
        return false;
    }
    std::stop_token await_resume() noexcept { return std::move(m_token); }
};
/// `co_await hop::get_stop_token()`: the running task's stop token. Completes at once.
inline get_stop_token_awaiter get_stop_token() noexcept { return {}; }

/// `co_await hop::cancellation_point()` throws cancelled_error if the running
/// task's stop was requested; otherwise it does nothing.
struct cancellation_point_awaiter {
    bool m_stop = false;
    bool await_ready() const noexcept { return false; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) noexcept {
        m_stop = detail::stop_requested_of(h.promise());
        return false;
    }
    void await_resume() const {
        if (m_stop) throw cancelled_error();
    }
};
/// `co_await hop::cancellation_point()`: throws cancelled_error if the running task's stop was requested.
inline cancellation_point_awaiter cancellation_point() noexcept { return {}; }

}  // namespace hop
