#pragma once
/// @file
/// hop::sleep_for, hop::sleep_until, hop::with_timeout.

#include <hop/combinators.hpp>
#include <hop/detail/loop_op.hpp>
#include <hop/detail/timer.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>

#include <atomic>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace hop {

namespace detail {

/// Timer plumbing that must run on the loop thread (lib/time.cpp).
void timer_arm(io_loop& loop, timer_node* t);
void timer_disarm(io_loop& loop, timer_node* t) noexcept;

/// The awaiter behind sleep_until. Lives in the coroutine frame: the timer
/// is a node in the loop's heap, nothing is allocated. The arm / cancel /
/// resume skeleton is loop_operation's: the loop firing the timer and a
/// stop request (which only posts a cancel item) never both resume.
class sleep_operation : public loop_operation, private timer_node {
public:
    sleep_operation(io_loop& loop, loop_clock::time_point deadline) noexcept
        : loop_operation(loop, &sleep_operation::arm, &sleep_operation::disarm) {
        this->deadline = deadline;
        this->fire = &sleep_operation::on_fire;
    }

    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        if (this->deadline <= loop_clock::now() && !stop_requested_of(h.promise()) &&
            !loop_closing(loop())) {
            set_result(0);  // passed already: no wait
            return false;
        }
        return loop_operation::await_suspend(h);
    }

    void await_resume() {
        if (take_result() == -ECANCELED) throw cancelled_error("hop::sleep: cancelled");
    }

private:
    // Loop thread: put the timer in the heap.
    static void arm(loop_operation& op) noexcept {
        auto& self = static_cast<sleep_operation&>(op);
        timer_arm(self.loop(), &self);
    }
    // Loop thread: stop was requested: out of the heap, ended cancelled.
    static void disarm(loop_operation& op) noexcept {
        auto& self = static_cast<sleep_operation&>(op);
        timer_disarm(self.loop(), &self);
        self.finish(-ECANCELED);
    }
    // Loop thread: the deadline passed, or the loop is being destroyed.
    static void on_fire(timer_node* t, bool aborted) noexcept {
        static_cast<sleep_operation*>(t)->finish(aborted ? -ECANCELED : 0);
    }
};

[[noreturn]] void throw_negative_duration(const char* where, long long ns);

template <class Awaitable>
task<await_result_t<Awaitable>> as_task(Awaitable aw) {
    co_return co_await std::move(aw);
}

// For an awaitable that cannot move: awaited where it is, as an lvalue (GCC
// 12 copies an xvalue operand of co_await, which a pinned type forbids).
template <class Awaitable>
task<await_result_t<Awaitable&>> as_task_pinned(Awaitable& aw) {
    co_return co_await aw;
}

template <class T>
task<std::optional<stored_t<T>>> value_or_empty(task<T> t) {
    if constexpr (std::is_void_v<T>) {
        co_await std::move(t);
        co_return std::monostate{};
    } else {
        co_return co_await std::move(t);
    }
}

template <class T>
task<std::optional<stored_t<T>>> empty_after(loop_clock::duration d);

template <class T>
task<T> with_timeout_impl(loop_clock::duration d, task<T> inner);

}  // namespace detail

/// `co_await hop::sleep_until(tp)` suspends until `tp` (at once if it has
/// passed). Timed by the caller's loop (hop::this_thread_loop()); resumes
/// the caller on its own executor. A cancellation point: stop requested
/// before or during the wait throws cancelled_error (the timer is removed
/// from the loop first).
inline detail::sleep_operation sleep_until(std::chrono::steady_clock::time_point tp) {
    return detail::sleep_operation(this_thread_loop(), tp);
}

/// `co_await hop::sleep_for(d)`: sleep_until(now + d).
/// @throws std::invalid_argument for a negative duration (naming it).
template <class Rep, class Period>
detail::sleep_operation sleep_for(std::chrono::duration<Rep, Period> d) {
    if (d < std::chrono::duration<Rep, Period>::zero()) {
        detail::throw_negative_duration("hop::sleep_for",
                                        detail::saturating_ns(d).count());
    }
    auto now = std::chrono::steady_clock::now();
    auto dd = detail::saturating_ns(d);
    auto tp = dd > std::chrono::steady_clock::time_point::max() - now ? std::chrono::steady_clock::time_point::max()
                                                                      : now + dd;
    return sleep_until(tp);
}

/// `co_await hop::with_timeout(d, aw)` awaits `aw` (a task or any awaitable)
/// for at most `d`. Past the deadline the inner operation is cancelled
/// through its stop token and awaited, then timeout_error is thrown. Stop
/// on the caller's token cancels the inner operation (cancelled_error).
///
/// A hop::future is awaited as a cancellation point (asyncio's
/// `wait_for(fut, d)`): past the deadline the wait ends at once and the
/// future is cancelled, so `with_timeout(1s, pool.submit(fn))` throws
/// timeout_error after 1s whatever `fn` does. A job that has not started
/// then never runs; a coroutine job has stop requested on its token; a
/// plain function already running cannot be interrupted: it finishes on its
/// own and its result is dropped. To leave a shared future running, pass
/// hop::shield(fut) instead.
///
/// A task, or an awaitable that can be moved or copied, is taken into the
/// returned task. One that cannot move (hop's sleeps and IO operations stay
/// where they were made) is referenced: co_await the result in the same
/// full expression, `co_await hop::with_timeout(1s, hop::sleep_for(1h));`.
/// @throws std::invalid_argument for a negative duration.
template <class Rep, class Period, class Awaitable>
auto with_timeout(std::chrono::duration<Rep, Period> d, Awaitable&& aw) {
    using R = detail::await_result_t<Awaitable>;
    using A = std::remove_cvref_t<Awaitable>;
    if (d < std::chrono::duration<Rep, Period>::zero()) {
        detail::throw_negative_duration("hop::with_timeout",
                                        detail::saturating_ns(d).count());
    }
    auto dd = std::chrono::duration_cast<detail::loop_clock::duration>(detail::saturating_ns(d));
    if constexpr (std::is_same_v<A, task<R>>) {
        return detail::with_timeout_impl<R>(dd, std::forward<Awaitable>(aw));
    } else if constexpr (std::is_constructible_v<A, Awaitable&&>) {
        return detail::with_timeout_impl<R>(dd, detail::as_task<A>(std::forward<Awaitable>(aw)));
    } else {
        // Pinned: the operation stays where the caller made it (a temporary
        // of the caller's co_await expression, alive across the suspension).
        using pinned_result = detail::await_result_t<std::remove_reference_t<Awaitable>&>;
        return detail::with_timeout_impl<pinned_result>(dd, detail::as_task_pinned(aw));
    }
}

namespace detail {

template <class T>
task<std::optional<stored_t<T>>> empty_after(loop_clock::duration d) {
    co_await sleep_for(d);
    co_return std::nullopt;
}

template <class T>
task<T> with_timeout_impl(loop_clock::duration d, task<T> inner) {
    std::vector<task<std::optional<stored_t<T>>>> racers;
    racers.push_back(value_or_empty(std::move(inner)));
    racers.push_back(empty_after<T>(d));
    auto r = co_await when_any(std::move(racers));
    if (r.index == 1) {
        throw timeout_error("hop::with_timeout: timed out after " +
                            std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()) + "ns");
    }
    if constexpr (!std::is_void_v<T>) co_return std::move(*r.value);
}

}  // namespace detail

}  // namespace hop
