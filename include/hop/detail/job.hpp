#pragma once
// Private to hop: a submitted callable whose future state and queue node are
// one allocation, and the submit logic cpu_pool::submit and run_blocking
// share.

#include <exception>
#include <hop/detail/executor.hpp>
#include <hop/future.hpp>
#include <hop/task.hpp>

#include <tuple>
#include <type_traits>
#include <utility>

namespace hop::detail {

template <class T>
struct is_task : std::false_type {};
template <class T>
struct is_task<task<T>> : std::true_type {};

/// A submitted plain callable: its future's state and its queue node in one
/// allocation.
template <class R, class Fn>
class job final : public future_state<R>, public work_item, public frame_allocated {
public:
    explicit job(Fn&& fn) : future_state<R>(&job::destroy, 2), m_fn(std::move(fn)) {
        run = &job::do_run;
        discard = &job::do_discard;
    }

private:
    static void destroy(future_state_base* s) noexcept { delete static_cast<job*>(static_cast<future_state<R>*>(s)); }
    static void do_run(work_item* w) noexcept {
        auto* j = static_cast<job*>(w);
        if (j->try_start()) {
            std::exception_ptr error;
            try {
                if constexpr (std::is_void_v<R>) {
                    std::move(j->m_fn)();
                    j->set_value();
                } else {
                    j->set_value(std::move(j->m_fn)());
                }
            } catch (...) {
                error = std::current_exception();
            }
            // Published after the handler ends, so this thread holds no
            // reference to the exception once a waiter can see it.
            if (error) j->complete_with_error(std::move(error));
        }
        j->release();
    }
    static void do_discard(work_item* w) noexcept {
        auto* j = static_cast<job*>(w);
        j->cancel();
        j->release();
    }

    Fn m_fn;
};

template <class T, class Fn, class Tuple>
task<T> invoke_coroutine(Fn fn, Tuple args) {
    // fn and args live in this frame for as long as the task they start runs.
    co_return co_await std::apply(fn, std::move(args));
}

/// Runs `fn(args...)` on `ex` and returns its future (a coroutine callable's
/// task runs there, its future's cancel() requesting stop on its token).
/// @throws executor_shutdown_error if `ex` refuses work.
template <class F, class... A>
auto submit_to(executor_base& ex, F&& fn, A&&... args) {
    using R = std::invoke_result_t<std::decay_t<F>&, std::decay_t<A>...>;
    if constexpr (is_task<R>::value) {
        using T = typename R::value_type;
        return spawn_on<T>(ex, invoke_coroutine<T>(std::decay_t<F>(std::forward<F>(fn)),
                                                   std::tuple<std::decay_t<A>...>(std::forward<A>(args)...)));
    } else {
        auto bound = [f = std::decay_t<F>(std::forward<F>(fn)),
                      tup = std::tuple<std::decay_t<A>...>(std::forward<A>(args)...)]() mutable -> R {
            return std::apply(std::move(f), std::move(tup));
        };
        auto* j = new job<R, decltype(bound)>(std::move(bound));
        auto fut = make_future<R>(j);
        try {
            ex.post_item(j);
        } catch (...) {
            j->release();  // the queue's reference
            throw;
        }
        return fut;
    }
}

}  // namespace hop::detail
