#pragma once
// Private: what each kind of IO operation needs to start itself on each
// backend. An io_params names its kind by pointer to one of the constants
// below; a backend reads only its own part of it. Adding an operation adds
// one function per backend (lib/io_uring/uring_ops.cpp,
// lib/epoll/readiness_ops.cpp) and one constant here (io_kinds.cpp): no
// switch, no enum shared by the backends.

#include <hop/detail/io_op.hpp>

#include <cstdint>

struct io_uring_sqe;

namespace hop::detail {

/// io_uring: fills `sqe` for the operation's call (or its next part, for
/// an `all` operation: io.done bytes are done).
using uring_prep_fn = void (*)(io_uring_sqe* sqe, const io_params& io) noexcept;

/// Readiness (epoll): how the operation waits when its call would block.
enum class readiness_wait : std::uint8_t {
    readable,       ///< until the fd is readable, then attempt() again
    writable,       ///< until the fd is writable, then attempt() again
    by_events,      ///< a readiness wait: the direction io.events asks for
    receive,        ///< a stream socket's recv: Asio's async_receive performs the retry
    send,           ///< a stream socket's send: Asio's async_send performs the retry
    blocking_pool,  ///< a file call: runs on the blocking pool, never waits
};

/// Readiness (epoll): what the fd of an operation of this kind is, for the
/// registration its first wait makes. Known from the kind for the socket
/// calls, so no getsockopt is needed to learn it.
enum class readiness_fd : std::uint8_t {
    unknown,          ///< any fd (a readiness wait): the registration asks the fd
    stream_socket,    ///< recv, send, accept, connect
    datagram_socket,  ///< recvmsg, sendmsg
};

struct readiness_kind {
    /// One non-blocking try of the call: its result, or -EAGAIN to wait.
    /// `after_wait`: the fd became ready since the first try (connect then
    /// reads SO_ERROR; a readiness wait reports the event).
    int (*attempt)(io_params& io, bool after_wait) noexcept;
    readiness_wait wait;
    readiness_fd fd = readiness_fd::unknown;
};

struct io_kind {
    const char* name;
    uring_prep_fn uring;  // null in a build without io_uring
    readiness_kind readiness;
    /// Index of the kind's counters in loop_stats (below io_kind_slots).
    std::uint8_t metric_slot = 0;
};

/// True if `io` writes (for the readiness direction of `by_events`).
inline bool waits_writable(const io_kind& k, const io_params& io) noexcept {
    switch (k.readiness.wait) {
        case readiness_wait::writable:
        case readiness_wait::send:
            return true;
        case readiness_wait::by_events:
            return (io.events & 0x001 /* POLLIN */) == 0;
        default:
            return false;
    }
}

// Each backend's half (declared here so io_kinds.cpp can put them together).
namespace uring_ops {
void prep_poll(io_uring_sqe*, const io_params&) noexcept;
void prep_recv(io_uring_sqe*, const io_params&) noexcept;
void prep_send(io_uring_sqe*, const io_params&) noexcept;
void prep_accept(io_uring_sqe*, const io_params&) noexcept;
void prep_connect(io_uring_sqe*, const io_params&) noexcept;
void prep_recvmsg(io_uring_sqe*, const io_params&) noexcept;
void prep_sendmsg(io_uring_sqe*, const io_params&) noexcept;
void prep_send_gathered(io_uring_sqe*, const io_params&) noexcept;
void prep_read_at(io_uring_sqe*, const io_params&) noexcept;
void prep_write_at(io_uring_sqe*, const io_params&) noexcept;
void prep_fsync(io_uring_sqe*, const io_params&) noexcept;
}  // namespace uring_ops

namespace readiness_ops {
int attempt_poll(io_params&, bool) noexcept;
int attempt_recv(io_params&, bool) noexcept;
int attempt_send(io_params&, bool) noexcept;
int attempt_accept(io_params&, bool) noexcept;
int attempt_connect(io_params&, bool) noexcept;
int attempt_recvmsg(io_params&, bool) noexcept;
int attempt_sendmsg(io_params&, bool) noexcept;
int attempt_send_gathered(io_params&, bool) noexcept;
int call_read_at(io_params&, bool) noexcept;
int call_write_at(io_params&, bool) noexcept;
int call_fsync(io_params&, bool) noexcept;
}  // namespace readiness_ops

}  // namespace hop::detail
