#pragma once
// A task started as the child of something that can stop it as a whole (a
// task_group, an io_pool): the child's own stop source (its future's, which
// future::cancel() stops) is linked to the parent's token, and the parent
// hears when the child has ended — after the child's frame is gone.

#include <hop/detail/executor.hpp>
#include <hop/future.hpp>
#include <hop/task.hpp>

#include <exception>
#include <stop_token>
#include <type_traits>
#include <utility>

namespace hop::detail {

/// Forwards a parent's stop to one child's own source.
struct stop_forwarder {
    std::stop_source* child;
    void operator()() const noexcept { child->request_stop(); }
};

/// A child's future state, from the frame cache rather than the heap.
template <class T>
struct child_future_state final : future_state<T>, frame_allocated {
    child_future_state() noexcept : future_state<T>(&child_future_state::destroy, 2) {}
    static void destroy(future_state_base* s) noexcept {
        delete static_cast<child_future_state*>(static_cast<future_state<T>*>(s));
    }
};

/// Runs `t` into `s` (unless `s` was cancelled before it started), with
/// `parent`'s stop forwarded to `s`'s source (at once if it was requested
/// already). Then frees `t`'s frame and the arguments it owns, releases its
/// reference to `s`, and calls `ended(error)`: `error` is the child's
/// exception, null on success. A parent waiting for its children may end
/// as soon as `ended` returns.
template <class T, class Ended>
detached_task linked_child(std::stop_token parent, future_state<T>* s, task<T> t, Ended ended) {
    std::exception_ptr error;
    {
        std::stop_callback<stop_forwarder> link(std::move(parent), stop_forwarder{&s->stop_source()});
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
    }
    t = task<T>();
    s->release();
    ended(std::move(error));
}

}  // namespace hop::detail
