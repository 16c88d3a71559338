#pragma once
// Waiting for readiness of a file descriptor on an io_loop: the first kernel
// operation of the loop, and the building block of the socket operations.
// io_uring: IORING_OP_POLL_ADD, cancelled with IORING_OP_ASYNC_CANCEL.
// epoll: an asio descriptor's async_wait, cancelled by deregistration.
//
// Cancellation never resumes the waiter itself: it asks the kernel to cancel,
// and the operation's own completion (cancelled, or ready after all) is what
// resumes it, so the frame is never left with a completion still to come.

#include <hop/detail/executor.hpp>
#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>

#include <atomic>
#include <cerrno>
#include <optional>
#include <stop_token>

namespace hop::detail {

class fd_wait_operation;

bool loop_closing(io_loop& loop) noexcept;
/// Loop thread: starts the wait in the backend (lib/).
void fd_wait_start(io_loop& loop, fd_wait_operation& op);
/// Loop thread: asks the backend to cancel a started wait.
void fd_wait_cancel(io_loop& loop, fd_wait_operation& op) noexcept;

class fd_wait_operation {
public:
    /// `events`: POLLIN and/or POLLOUT.
    fd_wait_operation(io_loop& loop, int fd, unsigned events) noexcept : m_loop(&loop), m_fd(fd), m_events(events) {
        m_arm.self = this;
        m_arm.run = &fd_wait_operation::on_arm;
        m_cancel.self = this;
        m_cancel.run = &fd_wait_operation::on_cancel;
    }
    fd_wait_operation(const fd_wait_operation&) = delete;
    fd_wait_operation& operator=(const fd_wait_operation&) = delete;

    bool await_ready() const noexcept { return false; }

    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        const std::stop_token& token = token_of(h.promise());
        if (token.stop_requested() || loop_closing(*m_loop)) {
            m_result = -ECANCELED;
            return false;
        }
        m_resume.handle = h;
        m_executor = current_executor();
        // Registered before the wait starts: once started, `this` is not
        // touched here again (the completion may resume it at once).
        if (token.stop_possible()) m_callback.emplace(token, canceller{this});
        if (m_loop->running_in_this_thread()) {
            on_arm(&m_arm);
        } else {
            try {
                m_loop->post_item(&m_arm);
            } catch (...) {
                m_callback.reset();
                throw;
            }
        }
        return true;
    }

    /// The ready events (POLLIN, POLLOUT, POLLHUP, POLLERR...).
    /// @throws cancelled_error if stop was requested and the wait was
    ///         cancelled; std::system_error for a kernel error.
    unsigned await_resume();

    // ---- for the backends (loop thread) ---------------------------------
    int fd() const noexcept { return m_fd; }
    unsigned events() const noexcept { return m_events; }
    /// The wait ended: `result` is the ready events, or -errno. If a cancel
    /// item is still queued, that item resumes the waiter instead (it points
    /// into this operation, so the operation must outlive it).
    void complete(int result) noexcept {
        m_result = result;
        int expected = st_idle;
        if (m_state.compare_exchange_strong(expected, st_completed, std::memory_order_acq_rel) ||
            expected == st_cancel_ran) {
            resume_on(m_executor, m_resume);
        }
    }
    /// Backend-owned scratch space (an io_uring op, an epoll registration).
    alignas(16) unsigned char backend_storage[48];
    fd_wait_operation* next_in_flight = nullptr;  // the epoll backend's list
    fd_wait_operation* prev_in_flight = nullptr;

private:
    struct op_item : work_item {
        fd_wait_operation* self = nullptr;
    };
    // m_state: idle -> cancel_pending (stop callback, any thread) ->
    // cancel_ran (loop thread); or idle -> completed (loop thread).
    enum : int { st_idle = 0, st_cancel_pending = 1, st_completed = 2, st_cancel_ran = 3 };

    struct canceller {
        fd_wait_operation* op;
        void operator()() const noexcept {
            int expected = st_idle;
            if (op->m_state.compare_exchange_strong(expected, st_cancel_pending, std::memory_order_acq_rel)) {
                op->m_loop->post_continuation(&op->m_cancel);
            }
        }
    };

    static void on_arm(work_item* w) noexcept {
        auto* self = static_cast<op_item*>(w)->self;
        if (self->m_cancel_ran) {
            self->complete(-ECANCELED);
            return;
        }
        self->m_armed = true;
        fd_wait_start(*self->m_loop, *self);
    }
    static void on_cancel(work_item* w) noexcept {
        auto* self = static_cast<op_item*>(w)->self;
        self->m_state.store(st_cancel_ran, std::memory_order_release);
        if (!self->m_armed) {  // the arm item is still queued: it finishes
            self->m_cancel_ran = true;
            return;
        }
        if (self->m_result != not_done) {  // completed while this item was queued
            resume_on(self->m_executor, self->m_resume);
            return;
        }
        fd_wait_cancel(*self->m_loop, *self);  // its completion resumes the waiter
    }

    static constexpr int not_done = -1'000'000;

    io_loop* m_loop;
    int m_fd;
    unsigned m_events;
    int m_result = not_done;
    bool m_armed = false;
    bool m_cancel_ran = false;
    std::atomic<int> m_state{st_idle};
    executor_base* m_executor = nullptr;
    resume_item m_resume;
    op_item m_arm;
    op_item m_cancel;
    std::optional<std::stop_callback<canceller>> m_callback;
};

/// `co_await hop::detail::wait_fd(fd, POLLIN)`: waits on the calling
/// thread's loop until `fd` is ready. Resumes the caller on its own
/// executor; a cancellation point.
inline fd_wait_operation wait_fd(int fd, unsigned events) { return fd_wait_operation(this_thread_loop(), fd, events); }

}  // namespace hop::detail
