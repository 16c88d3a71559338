#pragma once
// The skeleton every operation that waits on an io_loop shares (a kernel
// operation, a timer): it lives in the awaiting coroutine's frame, is
// started on the loop thread (directly, or through a posted item), and a
// stop request only posts a cancel item to the loop. Exactly one of the
// operation's own completion and the cancel item resumes the waiter:
//
//   m_state: idle -> cancel_pending (stop callback, any thread) ->
//            cancel_ran (loop thread); or idle -> completed (loop thread).
//
// Cancellation never resumes the waiter by itself: it asks the operation
// to end (hook `cancel`), and the operation's completion (cancelled, or
// done after all) resumes it, so the frame is never left with a completion
// still to come.

#include <hop/detail/executor.hpp>
#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>

#include <atomic>
#include <cerrno>
#include <optional>
#include <stop_token>

namespace hop::detail {

/// True while `loop` is being destroyed (new waits are cancelled at once).
bool loop_closing(io_loop& loop) noexcept;

class loop_operation {
public:
    loop_operation(const loop_operation&) = delete;
    loop_operation& operator=(const loop_operation&) = delete;

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
        // Registered before the operation starts: once started, `this` is
        // not touched here again unless it finished inline.
        if (token.stop_possible()) m_callback.emplace(token, canceller{this});
        if (m_loop->running_in_this_thread()) {
            // On the loop already: start now. An operation that finishes
            // inside the start does not resume anyone: the caller goes on.
            m_inline = true;
            m_armed = true;
            m_start(*this);
            m_inline = false;
            if (m_sync_done) {
                m_callback.reset();
                return false;
            }
            return true;
        }
        try {
            m_loop->post_item(&m_arm);
        } catch (...) {
            m_callback.reset();
            throw;
        }
        return true;
    }

    io_loop& loop() const noexcept { return *m_loop; }

protected:
    using hook = void (*)(loop_operation&) noexcept;
    /// `start` begins the operation (loop thread); `cancel` asks a started
    /// one to end: its completion must follow (loop thread).
    loop_operation(io_loop& loop, hook start, hook cancel) noexcept : m_loop(&loop), m_start(start), m_cancel_hook(cancel) {
        m_arm.self = this;
        m_arm.run = &loop_operation::on_arm;
        m_cancel.self = this;
        m_cancel.run = &loop_operation::on_cancel;
    }
    ~loop_operation() = default;

    /// The operation ended with `result` (-ECANCELED when cancelled). Loop
    /// thread. If a cancel item is still queued, that item resumes.
    void finish(int result) noexcept {
        m_result = result;
        int expected = st_idle;
        if (m_state.compare_exchange_strong(expected, st_completed, std::memory_order_acq_rel)) {
            if (m_inline) {
                m_sync_done = true;  // await_suspend returns false
            } else {
                resume_on(m_executor, m_resume);
            }
        } else if (expected == st_cancel_ran) {
            resume_on(m_executor, m_resume);
        }
        // cancel_pending: the queued cancel item resumes the waiter.
    }

    /// No stop has come for this operation (loop thread).
    bool still_wanted() const noexcept { return m_state.load(std::memory_order_acquire) == st_idle; }

    /// For await_resume: the result (-ECANCELED when cancelled). Drops the
    /// stop callback.
    int take_result() noexcept {
        m_callback.reset();
        return m_result;
    }
    /// An awaiter that finishes without suspending sets its result here.
    void set_result(int result) noexcept { m_result = result; }

private:
    struct op_item : work_item {
        loop_operation* self = nullptr;
    };
    enum : int { st_idle = 0, st_cancel_pending = 1, st_completed = 2, st_cancel_ran = 3 };

    struct canceller {
        loop_operation* op;
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
            self->finish(-ECANCELED);
            return;
        }
        self->m_armed = true;
        self->m_start(*self);
    }
    static void on_cancel(work_item* w) noexcept {
        auto* self = static_cast<op_item*>(w)->self;
        self->m_state.store(st_cancel_ran, std::memory_order_release);
        if (!self->m_armed) {  // the arm item is still queued: it finishes
            self->m_cancel_ran = true;
            return;
        }
        if (self->m_result != not_done) {  // finished while this item was queued
            resume_on(self->m_executor, self->m_resume);
            return;
        }
        self->m_cancel_hook(*self);  // its completion resumes the waiter
    }

    static constexpr int not_done = -1'000'000;

    io_loop* m_loop;
    hook m_start;
    hook m_cancel_hook;
    int m_result = not_done;
    bool m_armed = false;
    bool m_cancel_ran = false;
    bool m_inline = false;
    bool m_sync_done = false;
    std::atomic<int> m_state{st_idle};
    executor_base* m_executor = nullptr;
    resume_item m_resume;
    op_item m_arm;
    op_item m_cancel;
    std::optional<std::stop_callback<canceller>> m_callback;
};

}  // namespace hop::detail
