#pragma once
// One kernel operation on an io_loop: a readiness wait, a socket call
// (recv, send, accept, connect, recvmsg, sendmsg) or a file call (read_at,
// write_at, fsync). The operation lives in the awaiting coroutine's frame;
// nothing is allocated per operation.
//
// io_uring runs each natively. epoll tries the call at once on the
// non-blocking fd and, on EAGAIN, waits for readiness through the fd's one
// registration (fd_registration, owned by the socket) and tries again; file
// calls go to the blocking pool.
//
// Cancellation never resumes the waiter itself: it asks the backend to
// cancel, and the operation's own completion (cancelled, or done after all)
// resumes it, so the frame is never left with a completion still to come.

#include <hop/detail/executor.hpp>
#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>

#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stop_token>

namespace hop::detail {

class io_operation;
/// A backend's per-fd state (epoll: the fd's Asio descriptor). Created by
/// the backend on first need, released with io_release_fd.
struct fd_registration;

bool loop_closing(io_loop& loop) noexcept;
/// Loop thread: starts (or, for `all` operations, continues) the operation.
void io_start(io_loop& loop, io_operation& op) noexcept;
/// Loop thread: asks the backend to cancel a started operation.
void io_cancel(io_loop& loop, io_operation& op) noexcept;
/// Closes `fd` (and drops `reg`): operations still in flight on it end
/// with -ECANCELED first. Any thread: from another thread the close is
/// posted to the loop (the fd stays open, so its number is not reused,
/// until it runs). `loop` may be null (the fd was never used on a loop).
void io_close_fd(io_loop* loop, int fd, fd_registration* reg) noexcept;

enum class io_kind : std::uint8_t { poll, recv, send, accept, connect, recvmsg, sendmsg, read_at, write_at, fsync };

/// What the operation does. Filled in before it is awaited.
struct io_params {
    io_kind kind = io_kind::poll;
    /// recv/send/read_at/write_at: repeat until `len` bytes are done, the
    /// stream ends (recv, read_at: 0), or an error.
    bool all = false;
    int fd = -1;
    unsigned events = 0;  // poll: POLLIN and/or POLLOUT
    int flags = 0;        // recv/send/recvmsg/sendmsg flags; fsync: IORING_FSYNC_DATASYNC
    void* buf = nullptr;
    std::size_t len = 0;
    std::size_t done = 0;  // `all`: bytes done so far
    std::uint64_t offset = 0;
    sockaddr* addr = nullptr;  // connect: the peer; accept: out (may be null)
    socklen_t addrlen = 0;     // connect: in; accept: in/out
    msghdr* msg = nullptr;
    /// The fd's registration slot (owned by the socket), or null: epoll then
    /// registers the fd for this one operation.
    fd_registration** reg = nullptr;
};

class io_operation {
public:
    explicit io_operation(io_loop& loop) noexcept : m_loop(&loop) {
        m_arm.self = this;
        m_arm.run = &io_operation::on_arm;
        m_cancel.self = this;
        m_cancel.run = &io_operation::on_cancel;
    }
    io_operation(const io_operation&) = delete;
    io_operation& operator=(const io_operation&) = delete;

    io_params io;

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
            // inside the start (epoll's first try) does not resume anyone:
            // the caller just continues.
            m_inline = true;
            m_armed = true;
            io_start(*m_loop, *this);
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

    // ---- for the backends (loop thread) ---------------------------------

    io_loop& loop() const noexcept { return *m_loop; }

    /// The call ended: `result` is its result, or -errno. `all` operations
    /// that made progress are continued instead (unless a stop came). If a
    /// cancel item is still queued, that item resumes the waiter.
    void complete(int result) noexcept {
        if (io.all && result > 0) {
            io.done += static_cast<std::size_t>(result);
            if (io.done < io.len) {
                if (m_state.load(std::memory_order_acquire) == st_idle && !loop_closing(*m_loop)) {
                    io_start(*m_loop, *this);
                    return;
                }
                result = -ECANCELED;
            }
        }
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

    /// Backend-owned scratch space (an io_uring op, an epoll queue link).
    alignas(16) unsigned char backend_storage[64];
    io_operation* next_in_flight = nullptr;  // the epoll backend's lists
    io_operation* prev_in_flight = nullptr;

protected:
    /// For await_resume: the raw result (-errno on failure; -ECANCELED when
    /// cancelled). Drops the stop callback.
    int take_result() noexcept {
        m_callback.reset();
        return m_result;
    }

private:
    struct op_item : work_item {
        io_operation* self = nullptr;
    };
    // m_state: idle -> cancel_pending (stop callback, any thread) ->
    // cancel_ran (loop thread); or idle -> completed (loop thread).
    enum : int { st_idle = 0, st_cancel_pending = 1, st_completed = 2, st_cancel_ran = 3 };

    struct canceller {
        io_operation* op;
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
        io_start(*self->m_loop, *self);
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
        io_cancel(*self->m_loop, *self);  // its completion resumes the waiter
    }

    static constexpr int not_done = -1'000'000;

    io_loop* m_loop;
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
