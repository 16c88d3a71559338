#pragma once
// Waiting for readiness of a file descriptor on an io_loop (an io_operation
// of kind poll). io_uring: IORING_OP_POLL_ADD; epoll: the fd's Asio
// descriptor's async_wait.

#include <hop/detail/io_op.hpp>

namespace hop::detail {

class io_handle;

class fd_wait_operation : public io_operation {
public:
    /// `events`: POLLIN and/or POLLOUT.
    fd_wait_operation(io_loop& loop, int fd, unsigned events) noexcept : io_operation(loop) {
        io.kind = &io_kind_poll;
        io.fd = fd;
        io.events = events;
    }
    /// On an IO object's own fd and registration, on the loop its
    /// operations use (tcp_stream::wait_readable / wait_writable); `what`
    /// names the call in errors.
    /// @throws as io_handle::loop_for (EBADF naming `what` if closed).
    fd_wait_operation(io_handle& h, unsigned events, const char* what);

    /// The ready events (POLLIN, POLLOUT, POLLHUP, POLLERR...).
    /// @throws cancelled_error if stop was requested and the wait was
    ///         cancelled; std::system_error for a kernel error, naming the
    ///         call (or "hop: wait") and the fd.
    unsigned await_resume();

private:
    const char* m_what = "hop: wait";
};

/// `co_await hop::detail::wait_fd(fd, POLLIN)`: waits on the calling
/// thread's loop until `fd` is ready. Resumes the caller on its own
/// executor; a cancellation point.
inline fd_wait_operation wait_fd(int fd, unsigned events) { return fd_wait_operation(this_thread_loop(), fd, events); }

}  // namespace hop::detail
