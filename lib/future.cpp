// The future state machine: every transition of future_status lives here.

#include <hop/future.hpp>
#include <hop/task.hpp>
#include <hop/detail/stop.hpp>

#include "spin.hpp"

#include <hop/detail/blocking.hpp>

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace hop::detail {

namespace {
// Stored in m_waiters once the state is done: no waiter can be added after.
future_waiter done_marker_storage;
future_waiter* const done_marker = &done_marker_storage;
}  // namespace

bool future_state_base::begin_complete() noexcept {
    auto s = m_status.load(std::memory_order_acquire);
    while (s == future_status::pending || s == future_status::running) {
        if (m_status.compare_exchange_weak(s, future_status::completing, std::memory_order_acq_rel)) return true;
    }
    return false;
}

void future_state_base::end_complete(future_status final_status) noexcept {
    // Once the final status is visible, a waiter may return and drop every
    // other reference (a promise destroyed right after its future was seen
    // ready): this reference keeps the state alive until the end here.
    add_ref();
    // seq_cst, paired with wait(): either the waiter sees the final status,
    // or this sees m_sleepers and notifies.
    m_status.store(final_status, std::memory_order_seq_cst);
    future_waiter* list;
    {
        waiters_lock lock(*this);
        list = std::exchange(m_waiters, done_marker);
    }
    // The nodes are ours now: an awaiter's stop callback finds the list
    // closed and leaves its node alone. Waiters were pushed LIFO; run them in
    // registration order.
    future_waiter* ordered = nullptr;
    while (list) {
        auto* next = list->next;
        list->next = ordered;
        ordered = list;
        list = next;
    }
    while (ordered) {
        auto* next = ordered->next;  // read first: notify may free the node
        ordered->notify(ordered);
        ordered = next;
    }
    if (m_sleepers.load(std::memory_order_seq_cst)) m_status.notify_all();
    release();
}

future_status future_state_base::settled_status() const noexcept {
    auto s = status();
    while (s == future_status::completing) {
        std::this_thread::yield();
        s = status();
    }
    return s;
}

bool future_state_base::cancel() noexcept {
    auto s = m_status.load(std::memory_order_acquire);
    for (;;) {
        switch (s) {
            case future_status::pending:
                if (m_status.compare_exchange_weak(s, future_status::completing, std::memory_order_acq_rel)) {
                    end_complete(future_status::cancelled);
                    return true;
                }
                continue;
            case future_status::running:
                if (m_lazy_stop != nullptr) {
                    m_lazy_stop->request_stop();
                    return true;
                }
                if (m_stop.stop_possible()) {
                    m_stop.request_stop();
                    return true;
                }
                return false;
            case future_status::cancelled:
                return true;
            case future_status::completing:
                // Maybe another cancel() mid-way: answer as for its outcome.
                s = settled_status();
                continue;
            case future_status::finished:
                return false;
        }
    }
}

void future_state_base::lock_waiters() const noexcept {
    // A test-and-test-and-set lock (lib/spin.hpp's spin_mutex, on a flag that
    // fits in the state's padding): held for a few instructions at a time.
    for (unsigned i = 0;; ++i) {
        if (!m_waiters_locked.load(std::memory_order_relaxed) &&
            !m_waiters_locked.exchange(true, std::memory_order_acquire)) {
            return;
        }
        if (i < 128) {
            cpu_relax();
        } else {
            ::sched_yield();
        }
    }
}

void future_state_base::unlock_waiters() const noexcept {
    HOP_ASSERT(m_waiters_locked.load(std::memory_order_relaxed));
    m_waiters_locked.store(false, std::memory_order_release);
}

bool future_state_base::link_waiter_locked(future_waiter* w) noexcept {
    HOP_ASSERT(m_waiters_locked.load(std::memory_order_relaxed));
    if (m_waiters == done_marker) return false;
    w->prev = nullptr;
    w->next = m_waiters;
    if (m_waiters != nullptr) m_waiters->prev = w;
    m_waiters = w;
    return true;
}

bool future_state_base::unlink_waiter_locked(future_waiter* w) noexcept {
    HOP_ASSERT(m_waiters_locked.load(std::memory_order_relaxed));
    if (m_waiters == done_marker) return false;
    HOP_ASSERT(w->prev != nullptr || m_waiters == w);
    if (w->prev != nullptr) {
        w->prev->next = w->next;
    } else {
        m_waiters = w->next;
    }
    if (w->next != nullptr) w->next->prev = w->prev;
    w->prev = w->next = nullptr;
    return true;
}

bool future_state_base::add_waiter(future_waiter* w) noexcept {
    waiters_lock lock(*this);
    return link_waiter_locked(w);
}

void future_state_base::wait() const noexcept {
    if (done()) return;
    // A child spawned on this worker that nobody stole runs here rather than
    // leaving the thread blocked on work queued behind it.
    if (m_forked != nullptr && join_forked(m_forked, *this, nullptr) == join_result::done) return;
    before_blocking();
    m_sleepers.store(true, std::memory_order_seq_cst);
    for (;;) {
        auto s = m_status.load(std::memory_order_seq_cst);
        if (s == future_status::finished || s == future_status::cancelled) return;
        m_status.wait(s, std::memory_order_acquire);
    }
}

// One blocking waiter per state, shared by every wait_for on it and created
// at the first: a polling loop (`while (!f.wait_for(100ms))`) must not leave
// a node behind per call. It lives until both the state is gone and the
// completion has notified it.
struct blocking_waiter final : future_waiter {
    std::mutex mutex;
    std::condition_variable cv;
    bool done = false;
    std::atomic<int> refs{2};  // the waiter list's and the state's
    void release() noexcept {
        if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }
    static void on_notify(future_waiter* w) noexcept {
        auto* self = static_cast<blocking_waiter*>(w);
        {
            std::lock_guard lock(self->mutex);
            self->done = true;
            self->cv.notify_all();
        }
        self->release();
    }
};

void release_blocking_waiter(blocking_waiter* w) noexcept { w->release(); }

bool future_state_base::wait_for(std::chrono::nanoseconds timeout) {
    if (timeout < std::chrono::nanoseconds::zero()) {
        throw std::invalid_argument("hop::future::wait_for: negative timeout " + std::to_string(timeout.count()) +
                                    "ns");
    }
    if (done()) return true;
    if (timeout == std::chrono::nanoseconds::zero()) return false;  // a poll
    // As in wait(): a child queued on this worker runs here.
    if (m_forked != nullptr && join_forked(m_forked, *this, nullptr) == join_result::done) return true;
    before_blocking();
    // now + timeout past what steady_clock holds would wrap into the past (and
    // libstdc++'s wait_for would return at once): that is no deadline at all.
    const auto now = std::chrono::steady_clock::now();
    if (timeout >= std::chrono::steady_clock::time_point::max() - now) {
        wait();
        return true;
    }
    const auto deadline = now + timeout;
    auto* w = m_blocking.load(std::memory_order_acquire);
    if (w == nullptr) {
        auto* fresh = new blocking_waiter;
        fresh->notify = &blocking_waiter::on_notify;
        if (m_blocking.compare_exchange_strong(w, fresh, std::memory_order_acq_rel)) {
            w = fresh;
            if (!add_waiter(w)) {
                // Already done: nothing will notify it, so mark it here.
                std::lock_guard lock(w->mutex);
                w->done = true;
                w->refs.fetch_sub(1, std::memory_order_relaxed);  // the list's share
            }
        } else {
            delete fresh;  // another thread installed one first: `w` is it
        }
    }
    // The state (so `w`) stays alive: the caller holds a future handle.
    std::unique_lock lock(w->mutex);
    return w->cv.wait_until(lock, deadline, [&] { return w->done; });
}

void future_state_base::complete_with_error(std::exception_ptr e) noexcept {
    if (!begin_complete()) return;
    bool is_cancel = false;
    try {
        std::rethrow_exception(e);
    } catch (const cancelled_error&) {
        is_cancel = true;
    } catch (...) {
    }
    m_error = std::move(e);
    end_complete(is_cancel ? future_status::cancelled : future_status::finished);
}

void future_state_base::rethrow_if_failed() const {
    if (status() == future_status::cancelled) {
        if (m_error) std::rethrow_exception(m_error);
        throw cancelled_error("hop::future: the future was cancelled");
    }
    if (m_error) std::rethrow_exception(m_error);
}

void throw_no_state(const char* where) {
    throw std::logic_error(std::string("hop::future::") + where +
                           ": the future has no state (default-constructed or moved-from)");
}

void throw_task_misuse(const char* what) { throw std::logic_error(what); }

}  // namespace hop::detail
