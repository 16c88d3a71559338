#pragma once
// One kernel operation on an io_loop: a readiness wait, a socket call
// (recv, send, accept, connect, recvmsg, sendmsg) or a file call (read_at,
// write_at, fsync). The operation lives in the awaiting coroutine's frame;
// nothing is allocated per operation.
//
// What an operation does is its kind (io_params::kind), a constant that
// carries what each backend needs to start it (lib/io_kinds.hpp): io_uring
// prepares its SQE; epoll tries the call at once on the non-blocking fd
// and, on EAGAIN, waits for readiness through the fd's one registration
// (fd_registration, owned by the socket) and tries again; file calls go to
// the blocking pool.
//
// The arm / cancel / resume skeleton is loop_operation's (loop_op.hpp).

#include <hop/detail/executor.hpp>
#include <hop/detail/loop_op.hpp>
#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>

#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <string_view>

namespace hop::detail {

class io_operation;
/// A backend's per-fd state (epoll: the fd's Asio descriptor). Created by
/// the backend on first need, released with io_release_fd.
struct fd_registration;

// An IO object's registration slot (io_params::reg) is how its loop and a
// close() from another thread agree on who closes the fd:
//
//   null --loop--> claimed_registration() or a backend's registration
//                 (compare_exchange, in start_io: the fd is in use there)
//   claimed --loop--> a registration (compare_exchange, when one is needed)
//   any --close()--> closed_registration() (exchange, any thread)
//
// close() closes the fd itself only if it took null (no operation ever
// reached the loop, and none can now: its claim fails, and it ends
// -ECANCELED without touching the fd); otherwise it posts the close to the
// loop, which ends the operations in flight first.

/// The slot's value after close().
inline fd_registration* closed_registration() noexcept {
    return reinterpret_cast<fd_registration*>(static_cast<std::uintptr_t>(1));
}
/// The slot's value once an operation used the fd on a loop whose backend
/// keeps no registration for it (yet).
inline fd_registration* claimed_registration() noexcept {
    return reinterpret_cast<fd_registration*>(static_cast<std::uintptr_t>(2));
}
/// A backend's own registration in `slot` value `r`, or null.
inline fd_registration* real_registration(fd_registration* r) noexcept {
    return reinterpret_cast<std::uintptr_t>(r) <= 2 ? nullptr : r;
}

/// Loop thread: starts (or, for `all` operations, continues) the operation.
void io_start(io_loop& loop, io_operation& op) noexcept;
/// Loop thread: asks the backend to cancel a started operation.
void io_cancel(io_loop& loop, io_operation& op) noexcept;
/// Loop thread: the backend completed a start of `op` (for the loop's
/// count of operations in flight).
void io_completed(io_loop& loop, const io_operation& op) noexcept;
/// Closes `fd` (and drops `reg`): operations still in flight on it end
/// with -ECANCELED first. Any thread: from another thread the close is
/// posted to the loop (the fd stays open, so its number is not reused,
/// until it runs). `loop` may be null (the fd was never used on a loop).
void io_close_fd(io_loop* loop, int fd, fd_registration* reg) noexcept;

/// A kind of operation (lib/io_kinds.hpp); the kinds there:
struct io_kind;
extern const io_kind io_kind_poll;     // a readiness wait (events)
extern const io_kind io_kind_recv;     // recv(2) on a stream socket
extern const io_kind io_kind_send;     // send(2) on a stream socket
extern const io_kind io_kind_accept;   // accept4(2)
extern const io_kind io_kind_connect;  // connect(2)
extern const io_kind io_kind_recvmsg;  // recvmsg(2) (a datagram socket)
extern const io_kind io_kind_sendmsg;  // sendmsg(2) (a datagram socket)
extern const io_kind io_kind_send_gathered;  // sendmsg(2) of a gathered_bytes (a stream socket; io.buf)
extern const io_kind io_kind_read_at;  // pread(2)
extern const io_kind io_kind_write_at; // pwrite(2)
extern const io_kind io_kind_fsync;    // fsync(2), fdatasync(2) with fsync_data_only

/// What the operation does. Filled in before it is awaited.
struct io_params {
    /// io_kind_fsync's flag for fdatasync.
    static constexpr int fsync_data_only = 1;

    const io_kind* kind = &io_kind_poll;
    /// recv/send/read_at/write_at: repeat until `len` bytes are done, the
    /// stream ends (recv, read_at: 0), or an error.
    bool all = false;
    int fd = -1;
    unsigned events = 0;  // poll: POLLIN and/or POLLOUT
    int flags = 0;        // recv/send/recvmsg/sendmsg flags; fsync: fsync_data_only
    void* buf = nullptr;
    std::size_t len = 0;
    std::size_t done = 0;  // `all`: bytes done so far
    std::uint64_t offset = 0;
    sockaddr* addr = nullptr;  // connect: the peer; accept: out (may be null)
    socklen_t addrlen = 0;     // connect: in; accept: in/out
    msghdr* msg = nullptr;
    /// The fd's registration slot (owned by the IO object; its protocol is
    /// above), or null: the fd is registered for this one operation.
    std::atomic<fd_registration*>* reg = nullptr;
};

/// What a gathered send sends: up to max_parts pieces, in order. Its
/// io_params have `buf` pointing here and `len` the total; each call (and
/// each continuation of an `all` one) sends from io.done on (position()).
struct gathered_bytes {
    static constexpr std::size_t max_parts = 16;
    msghdr msg{};
    iovec iov[max_parts]{};
    const std::string_view* parts = nullptr;
    std::size_t count = 0;

    /// Points msg at what is left after the first `done` bytes.
    void position(std::size_t done) noexcept {
        std::size_t n = 0;
        for (std::size_t i = 0; i < count; ++i) {
            std::string_view p = parts[i];
            if (done >= p.size()) {
                done -= p.size();
                continue;
            }
            p.remove_prefix(done);
            done = 0;
            iov[n].iov_base = const_cast<char*>(p.data());
            iov[n].iov_len = p.size();
            ++n;
        }
        msg.msg_iov = iov;
        msg.msg_iovlen = n;
    }
};

class io_operation : public loop_operation {
public:
    explicit io_operation(io_loop& loop) noexcept : loop_operation(loop, &io_operation::start, &io_operation::cancel) {}

    io_params io;

    // ---- for the backends (loop thread) ---------------------------------

    /// The call ended: `result` is its result, or -errno. `all` operations
    /// that made progress are continued instead (unless a stop came or the
    /// loop is closing). If a cancel item is still queued, that item resumes
    /// the waiter.
    void complete(int result) noexcept {
        io_completed(loop(), *this);
        if (io.all && result > 0) {
            io.done += static_cast<std::size_t>(result);
            if (io.done < io.len) {
                if (still_wanted() && !loop_closing(loop())) {
                    io_start(loop(), *this);
                    return;
                }
                result = -ECANCELED;
            }
        }
        finish(result);
    }

    /// Backend-owned scratch space (an io_uring op, an epoll queue link).
    alignas(16) unsigned char backend_storage[64];
    io_operation* next_in_flight = nullptr;  // io_op_queue's links
    io_operation* prev_in_flight = nullptr;

private:
    static void start(loop_operation& op) noexcept {
        auto& self = static_cast<io_operation&>(op);
        io_start(self.loop(), self);
    }
    static void cancel(loop_operation& op) noexcept {
        auto& self = static_cast<io_operation&>(op);
        io_cancel(self.loop(), self);
    }
};

/// A FIFO of operations linked through their next_in_flight /
/// prev_in_flight: the operations waiting on one fd (epoll) or on one
/// listener's multishot accept (io_uring). Loop thread.
struct io_op_queue {
    io_operation* head = nullptr;
    io_operation* tail = nullptr;

    bool empty() const noexcept { return head == nullptr; }

    void push_back(io_operation& op) noexcept {
        op.next_in_flight = nullptr;
        op.prev_in_flight = tail;
        if (tail) {
            tail->next_in_flight = &op;
        } else {
            head = &op;
        }
        tail = &op;
    }

    void remove(io_operation& op) noexcept {
        if (op.prev_in_flight) {
            op.prev_in_flight->next_in_flight = op.next_in_flight;
        } else {
            head = op.next_in_flight;
        }
        if (op.next_in_flight) {
            op.next_in_flight->prev_in_flight = op.prev_in_flight;
        } else {
            tail = op.prev_in_flight;
        }
        op.next_in_flight = op.prev_in_flight = nullptr;
    }
};

}  // namespace hop::detail
