#pragma once
// Private to hop::http: stop_scope, which runs a task under a stop source
// of the caller's making (linked to the caller's own token), so whoever
// holds the source (a timeout, the deadline service) can cancel the task's
// waits.

#include <hop/detail/executor.hpp>
#include <hop/task.hpp>

#include <atomic>
#include <coroutine>
#include <exception>
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>

namespace hop::http::detail {


/// `co_await stop_scope<T>(source, t)`: runs `t` with `source`'s token (stop
/// on the caller's token is passed on to `source`), so whoever holds a copy
/// of `source` can cancel `t`'s waits. Resumes the caller on its own
/// executor once `t` has ended; rethrows its exception.
template <class T>
class stop_scope {
public:
    stop_scope(std::stop_source source, task<T> t) : m_source(std::move(source)), m_task(std::move(t)) {}
    stop_scope(const stop_scope&) = delete;
    stop_scope& operator=(const stop_scope&) = delete;

    bool await_ready() const noexcept { return false; }

    template <class P>
    bool await_suspend(std::coroutine_handle<P> parent) {
        m_resume.handle = parent;
        m_executor = hop::detail::current_executor();
        const std::stop_token& token = hop::detail::token_of(parent.promise());
        if (token.stop_possible()) m_link.emplace(token, stopper{m_source});
        auto child = drive(*this);
        child.promise().m_stop_token = m_source.get_token();
        child.release().resume();  // runs until its first suspension
        return m_remaining.fetch_sub(1, std::memory_order_acq_rel) != 1;
    }

    T await_resume() {
        m_link.reset();
        if (m_error) std::rethrow_exception(m_error);
        if constexpr (!std::is_void_v<T>) return std::move(*m_value);
    }

private:
    struct stopper {
        std::stop_source source;
        void operator()() noexcept { source.request_stop(); }
    };
    using stored = std::conditional_t<std::is_void_v<T>, bool, T>;

    static hop::detail::detached_task drive(stop_scope& self) {
        try {
            if constexpr (std::is_void_v<T>) {
                co_await std::move(self.m_task);
            } else {
                self.m_value.emplace(co_await std::move(self.m_task));
            }
        } catch (...) {
            self.m_error = std::current_exception();
        }
        self.m_task = task<T>();  // the child's frame goes before the caller resumes
        if (self.m_remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            hop::detail::resume_on(self.m_executor, self.m_resume);
        }
    }

    std::stop_source m_source;
    task<T> m_task;
    std::optional<stored> m_value;
    std::exception_ptr m_error;
    std::optional<std::stop_callback<stopper>> m_link;
    hop::detail::resume_item m_resume;
    hop::detail::executor_base* m_executor = nullptr;
    std::atomic<int> m_remaining{2};  // the child and the starter
};

}  // namespace hop::http::detail
