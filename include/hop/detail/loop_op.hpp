#pragma once
// The skeleton every operation that waits on an io_loop shares (a kernel
// operation, a timer): it lives in the awaiting coroutine's frame, is
// started on the loop thread (directly, or through a posted arm item), and
// a stop request only posts a cancel item to the loop. Exactly one of the
// operation's own completion and the cancel item resumes the waiter.
// Cancellation never resumes the waiter by itself: it asks the operation
// to end (hook `cancel`), and the operation's completion (cancelled, or
// done after all) resumes it, so the frame is never left with a completion
// still to come.
//
// One state, m_state. `L` marks a transition made on the loop thread, `S`
// one made by the stop callback (any thread), `A` one made by the awaiting
// thread in await_suspend:
//
//   idle --A--> arming        awaited from another thread: arm item posted
//   idle --A--> running       awaited on the loop thread: started inline
//   arming --L--> running     the arm item ran: started
//   arming --S--> cancel_pending        (cancel item posted; the arm item
//   running --S--> cancel_pending        is still queued, or the operation
//                                        runs)
//   running --L--> completed  finish(): resumes the waiter (or, inside an
//                             inline start, lets await_suspend return false)
//   cancel_pending --L--> finished_owed   finish() first: the cancel item,
//                             on its way, resumes (the core counts it owed
//                             so that shutdown waits for it)
//   cancel_pending --L--> cancel_early    the cancel item ran before the arm
//                             item: the arm item finishes -ECANCELED
//   cancel_pending --L--> cancelling      the cancel item asked the running
//                             operation to end (hook `cancel`)
//   cancel_early --L--> completed         the arm item ran: finish(-ECANCELED)
//   cancelling --L--> completed           finish(): resumes
//   finished_owed --L--> completed        the cancel item ran: resumes
//
// The only race is between S and L/A on a claimable state (arming,
// running): both use compare_exchange, so exactly one wins. S posts the
// cancel item only after winning; L never resumes from cancel_pending.
// Every other transition is the loop thread's alone. The cancel item and
// the arm item may run in either order (a local and a remote queue): the
// states cancel_early and finished_owed cover both orders.

#include <hop/detail/assert.hpp>

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
#ifndef NDEBUG
/// Debug builds, for tests: called by a stop callback between claiming an
/// operation and posting its cancel item (the window shutdown must cover).
inline void (*test_after_cancel_claim)(io_loop& loop) = nullptr;
#endif

/// Loop thread: a cancel item, still on its way, will resume an operation
/// that has finished (+1), or did (-1). Shutdown waits until none is owed.
void loop_cancel_owed(io_loop& loop, int delta) noexcept;

class loop_operation {
public:
    loop_operation(const loop_operation&) = delete;
    loop_operation& operator=(const loop_operation&) = delete;

    bool await_ready() const noexcept { return false; }

    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        HOP_ASSERT(state() == st::idle, "a loop operation is awaited once");
        const std::stop_token& token = token_of(h.promise());
        if (token.stop_requested() || loop_closing(*m_loop)) {
            m_result = -ECANCELED;
            return false;
        }
        m_resume.handle = h;
        m_executor = current_executor();
        if (m_loop->running_in_this_thread()) {
            // On the loop already: start now. An operation that finishes
            // inside the start does not resume anyone: the caller goes on.
            m_state.store(st::running, std::memory_order_relaxed);
            // Registered before the start: once started, `this` is not
            // touched here again unless it finished inline. (A stop already
            // requested runs the callback here: its cancel item is queued
            // behind the start.)
            if (token.stop_possible()) m_callback.emplace(token, canceller{this});
            m_inline = true;
            m_started = true;
            m_start(*this);
            m_inline = false;
            if (m_state.load(std::memory_order_acquire) == st::completed) {
                m_callback.reset();
                return false;
            }
            return true;
        }
        m_state.store(st::arming, std::memory_order_relaxed);
        if (token.stop_possible()) m_callback.emplace(token, canceller{this});
        // Never throws: a loop that began closing since the check above
        // still runs the arm item, which then finishes -ECANCELED.
        m_loop->post_continuation(&m_arm);
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
        st expected = st::running;
        if (m_state.compare_exchange_strong(expected, st::completed, std::memory_order_acq_rel)) {
            if (!m_inline) resume_on(m_executor, m_resume);  // inline: await_suspend returns false
            return;
        }
        switch (expected) {
            case st::cancelling:
            case st::cancel_early:
                m_state.store(st::completed, std::memory_order_relaxed);
                resume_on(m_executor, m_resume);
                return;
            case st::cancel_pending:
                // The stop callback won: its cancel item resumes.
                m_state.store(st::finished_owed, std::memory_order_relaxed);
                loop_cancel_owed(*m_loop, +1);
                return;
            default:
                HOP_ASSERT(false, "finish() on an operation that is not running");
        }
    }

    /// No stop has come for this operation (loop thread).
    bool still_wanted() const noexcept { return state() == st::running; }

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
    enum class st : unsigned char {
        idle,
        arming,
        running,
        cancel_pending,
        cancel_early,
        cancelling,
        finished_owed,
        completed,
    };
    st state() const noexcept { return m_state.load(std::memory_order_acquire); }

    struct canceller {
        loop_operation* op;
        void operator()() const noexcept {
            st s = op->m_state.load(std::memory_order_acquire);
            while (s == st::arming || s == st::running) {
                if (op->m_state.compare_exchange_weak(s, st::cancel_pending, std::memory_order_acq_rel)) {
#ifndef NDEBUG
                    if (test_after_cancel_claim) test_after_cancel_claim(*op->m_loop);
#endif
                    op->m_loop->post_continuation(&op->m_cancel);
                    return;
                }
            }
        }
    };

    static void on_arm(work_item* w) noexcept {
        auto* self = static_cast<op_item*>(w)->self;
        st expected = st::arming;
        if (self->m_state.compare_exchange_strong(expected, st::running, std::memory_order_acq_rel)) {
            if (loop_closing(*self->m_loop)) {
                self->finish(-ECANCELED);
                return;
            }
            self->m_started = true;
            self->m_start(*self);
            return;
        }
        switch (expected) {
            case st::cancel_pending:  // the cancel item is still queued: it resumes
            case st::cancel_early:    // the cancel item ran already: this resumes
                self->finish(-ECANCELED);
                return;
            default:
                HOP_ASSERT(false, "an arm item ran twice or on an operation not arming");
        }
    }

    static void on_cancel(work_item* w) noexcept {
        auto* self = static_cast<op_item*>(w)->self;
        const st s = self->state();
        switch (s) {
            case st::cancel_pending:
                if (self->m_started) {
                    self->m_state.store(st::cancelling, std::memory_order_relaxed);
                    self->m_cancel_hook(*self);  // its completion resumes the waiter
                } else {
                    self->m_state.store(st::cancel_early, std::memory_order_relaxed);  // the arm item finishes
                }
                return;
            case st::finished_owed:
                self->m_state.store(st::completed, std::memory_order_relaxed);
                loop_cancel_owed(*self->m_loop, -1);
                resume_on(self->m_executor, self->m_resume);
                return;
            default:
                HOP_ASSERT(false, "a cancel item ran without a stop callback claiming the operation");
        }
    }

    io_loop* m_loop;
    hook m_start;
    hook m_cancel_hook;
    int m_result = 0;
    bool m_inline = false;   // inside the inline start (loop thread)
    bool m_started = false;  // m_start ran (loop thread)
    std::atomic<st> m_state{st::idle};
    executor_base* m_executor = nullptr;
    resume_item m_resume;
    op_item m_arm;
    op_item m_cancel;
    std::optional<std::stop_callback<canceller>> m_callback;
};

}  // namespace hop::detail
