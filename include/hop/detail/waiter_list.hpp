#pragma once
// The waiting side shared by hop's primitives (semaphore, async_mutex,
// event, channel): an intrusive FIFO of suspended coroutines guarded by the
// primitive's own mutex, with cancellation through the waiter's stop token.
//
// The handshake, for every primitive:
//   1. the awaiter registers its stop callback BEFORE it links itself, so
//      once it is linked it never touches itself again (a grant on another
//      thread may resume and destroy it at once);
//   2. grant and cancel both happen under the primitive's mutex: whoever
//      unlinks the waiter decides its outcome (a waker that resumes several
//      after unlocking keeps them on a wake_list, which leaves them
//      unlinked, so a late cancel sees them as decided);
//   3. a cancel never resumes inline from the stop callback: it posts the
//      resumption to the waiter's executor.

#include <hop/detail/executor.hpp>
#include <hop/future.hpp>

#include <mutex>
#include <optional>
#include <stop_token>
#include <utility>

namespace hop::detail {

struct list_waiter : resume_item {
    list_waiter* prev = nullptr;
    list_waiter* next_waiter = nullptr;
    executor_base* executor = nullptr;
    bool linked = false;
    bool cancel_requested = false;  // the stop callback ran before we linked
    bool cancelled = false;
};

/// Not thread-safe: always used under the owning primitive's mutex.
class waiter_list {
public:
    bool empty() const noexcept { return m_head == nullptr; }
    list_waiter* front() const noexcept { return m_head; }
    void push_back(list_waiter* w) noexcept {
        w->prev = m_tail;
        w->next_waiter = nullptr;
        if (m_tail) {
            m_tail->next_waiter = w;
        } else {
            m_head = w;
        }
        m_tail = w;
        w->linked = true;
    }
    void erase(list_waiter* w) noexcept {
        if (w->prev) {
            w->prev->next_waiter = w->next_waiter;
        } else {
            m_head = w->next_waiter;
        }
        if (w->next_waiter) {
            w->next_waiter->prev = w->prev;
        } else {
            m_tail = w->prev;
        }
        w->prev = w->next_waiter = nullptr;
        w->linked = false;
    }
    list_waiter* pop_front() noexcept {
        auto* w = m_head;
        if (w) erase(w);
        return w;
    }

private:
    list_waiter* m_head = nullptr;
    list_waiter* m_tail = nullptr;
};

/// Resumes a granted waiter (after the primitive's mutex is released):
/// inline if the calling thread runs its executor, else queued there.
inline void wake_waiter(list_waiter* w) noexcept { resume_on(w->executor, *w); }

/// Waiters granted under the primitive's mutex (already taken off its
/// waiter_list), to be resumed once the mutex is released. Chained through
/// `next_waiter` only: `linked` stays false, so a stop callback that runs in
/// between sees the waiter as decided and leaves it alone (a waiter_list
/// would set `linked` again, and the callback would then unlink it from the
/// primitive's list it is not on and resume it a second time).
class wake_list {
public:
    wake_list() noexcept = default;
    wake_list(const wake_list&) = delete;
    wake_list& operator=(const wake_list&) = delete;
    ~wake_list() { wake_all(); }

    /// Under the mutex: `w` was just unlinked by the caller.
    void push_back(list_waiter* w) noexcept {
        w->next_waiter = nullptr;
        if (m_tail) {
            m_tail->next_waiter = w;
        } else {
            m_head = w;
        }
        m_tail = w;
    }

    /// Without the mutex: resumes every waiter, oldest first.
    void wake_all() noexcept {
        auto* w = std::exchange(m_head, nullptr);
        m_tail = nullptr;
        while (w) {
            auto* next = w->next_waiter;  // read first: a resumed waiter may be gone
            wake_waiter(w);
            w = next;
        }
    }

private:
    list_waiter* m_head = nullptr;
    list_waiter* m_tail = nullptr;
};

/// Resumes a cancelled waiter from a stop callback: always queued (never
/// inline inside request_stop), except on a thread-less coroutine.
inline void wake_cancelled(list_waiter* w) noexcept {
    if (w->executor) {
        w->executor->post_continuation(w);
    } else {
        resume_inline(w->handle);
    }
}

/// The stop-callback half of an awaiter on a primitive with mutex `M`.
template <class Mutex>
struct waiter_canceller {
    list_waiter* w;
    Mutex* mutex;
    waiter_list* list;
    void operator()() const noexcept {
        std::unique_lock lock(*mutex);
        if (w->linked) {
            list->erase(w);
            w->cancelled = true;
            lock.unlock();
            wake_cancelled(w);
        } else {
            w->cancel_requested = true;
        }
    }
};

}  // namespace hop::detail
