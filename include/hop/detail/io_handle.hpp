#pragma once
// What every IO object (socket, file) holds: its fd, the loop it belongs to
// and that loop's registration of the fd. This is where the ownership rule
// lives:
//
//   An IO object belongs to the loop of its first operation, not to the
//   thread it was made on: the loop the awaiting coroutine runs on, or
//   hop::default_loop() when the awaiting thread runs no loop (the CPU
//   pool, a plain thread in sync_wait). An object an operation makes (an
//   accepted or connected stream, an opened file) belongs to that
//   operation's loop from the start.
//
//   Awaiting an operation on it from a coroutine that runs on another live
//   loop throws std::logic_error naming both loops. From a thread that runs
//   no loop, the operation runs on the object's loop and resumes the caller
//   on its own executor.
//
//   When its loop is destroyed the object is orphaned: the fd stays open
//   and its next operation binds it again, as a first operation would.
//
// The loop's liveness is read through a loop_anchor the object shares with
// its loop: the loop clears it when it is destroyed, after its last
// operation ended.

#include <hop/detail/io_op.hpp>
#include <hop/io_loop.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>

namespace hop::detail {

#ifndef NDEBUG
/// Debug builds, for tests: called by close() right before it closes the
/// fd itself (no loop holds it), the window a racing first operation hits.
extern void (*test_before_direct_close)();
#endif

class io_handle {
public:
    /// How the fd's O_NONBLOCK flag is handled.
    enum class fd_mode : std::uint8_t {
        as_backend_wants,  ///< a socket: set for epoll, cleared for io_uring (at binding)
        left_alone,        ///< a regular file: the flag is not touched, no registration,
                           ///< closed at once on any thread
    };

    io_handle() noexcept = default;
    /// Not bound to a loop yet. `nonblocking`: the fd's O_NONBLOCK flag now.
    io_handle(int fd, fd_mode mode, bool nonblocking) noexcept
        : m_fd(fd), m_mode(mode), m_nonblocking(nonblocking) {}
    /// Bound to `loop`, whose backend's wishes the fd already follows.
    io_handle(int fd, fd_mode mode, io_loop& loop) noexcept;
    io_handle(io_handle&& o) noexcept { take(o); }
    io_handle& operator=(io_handle&& o) noexcept {
        if (this != &o) {
            close();
            take(o);
        }
        return *this;
    }
    ~io_handle() { close(); }

    /// Closes the fd. Operations in flight on it end with -ECANCELED.
    /// Thread-safe against the loop: from another thread the close is posted
    /// to the loop (the fd stays open until it runs, so its number is not
    /// reused under an operation still in flight).
    void close() noexcept;

    int fd() const noexcept { return m_fd.load(std::memory_order_acquire); }
    bool is_open() const noexcept { return fd() >= 0; }

    /// The loop an operation awaited now runs on, binding the handle first
    /// if it is not bound or its loop is gone (see the rule above).
    /// @throws std::system_error (EBADF) naming `what` if closed;
    ///         std::logic_error naming both loops if the caller runs on
    ///         another live loop.
    io_loop& loop_for(const char* what) const;
    /// The registration slot, for io_params::reg.
    std::atomic<fd_registration*>* reg() const noexcept { return &m_reg; }

private:
    void take(io_handle& o) noexcept {
        m_fd.store(o.m_fd.exchange(-1, std::memory_order_acq_rel), std::memory_order_release);
        m_anchor = std::move(o.m_anchor);
        m_anchor_raw.store(o.m_anchor_raw.exchange(nullptr, std::memory_order_acq_rel), std::memory_order_release);
        m_reg.store(o.m_reg.exchange(nullptr, std::memory_order_acq_rel), std::memory_order_release);
        m_mode = o.m_mode;
        m_nonblocking = o.m_nonblocking;
    }

    std::atomic<int> m_fd{-1};
    mutable std::shared_ptr<loop_anchor> m_anchor;  // null: never bound
    // m_anchor's pointer, for close() on another thread (which must not
    // read the shared_ptr that a binding on the loop thread writes).
    mutable std::atomic<loop_anchor*> m_anchor_raw{nullptr};
    mutable std::atomic<fd_registration*> m_reg{nullptr};
    fd_mode m_mode = fd_mode::as_backend_wants;
    mutable bool m_nonblocking = false;
};

}  // namespace hop::detail
