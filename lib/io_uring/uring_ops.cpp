// io_uring's half of each kind of operation (io_kinds.hpp): the SQE for its
// call, or for the next part of an `all` transfer (io.done bytes done).

#include "../io_kinds.hpp"

#include <liburing.h>

#include <sys/socket.h>

#include <algorithm>
#include <cstddef>

namespace hop::detail::uring_ops {

namespace {
char* next_byte(const io_params& io) noexcept { return static_cast<char*>(io.buf) + io.done; }
unsigned bytes_left(const io_params& io) noexcept {
    return static_cast<unsigned>(std::min<std::size_t>(io.len - io.done, std::size_t{1} << 30));
}
}  // namespace

void prep_poll(io_uring_sqe* sqe, const io_params& io) noexcept { io_uring_prep_poll_add(sqe, io.fd, io.events); }

void prep_recv(io_uring_sqe* sqe, const io_params& io) noexcept {
    io_uring_prep_recv(sqe, io.fd, next_byte(io), bytes_left(io), io.flags);
}

void prep_send(io_uring_sqe* sqe, const io_params& io) noexcept {
    io_uring_prep_send(sqe, io.fd, next_byte(io), bytes_left(io), io.flags | MSG_NOSIGNAL);
}

void prep_accept(io_uring_sqe* sqe, const io_params& io) noexcept {
    // (Listeners take the multishot path; this is for a lone accept.)
    auto& p = const_cast<io_params&>(io);
    io_uring_prep_accept(sqe, io.fd, p.addr, p.addr ? &p.addrlen : nullptr, SOCK_CLOEXEC);
}

void prep_connect(io_uring_sqe* sqe, const io_params& io) noexcept {
    io_uring_prep_connect(sqe, io.fd, io.addr, io.addrlen);
}

void prep_recvmsg(io_uring_sqe* sqe, const io_params& io) noexcept {
    io_uring_prep_recvmsg(sqe, io.fd, io.msg, static_cast<unsigned>(io.flags));
}

void prep_sendmsg(io_uring_sqe* sqe, const io_params& io) noexcept {
    io_uring_prep_sendmsg(sqe, io.fd, io.msg, static_cast<unsigned>(io.flags) | MSG_NOSIGNAL);
}

void prep_send_gathered(io_uring_sqe* sqe, const io_params& io) noexcept {
    // The message lives in the operation until it completes (an io_uring
    // sendmsg reads it when it runs).
    auto* g = static_cast<gathered_bytes*>(io.buf);
    g->position(io.done);
    io_uring_prep_sendmsg(sqe, io.fd, &g->msg, static_cast<unsigned>(io.flags) | MSG_NOSIGNAL);
}

void prep_read_at(io_uring_sqe* sqe, const io_params& io) noexcept {
    io_uring_prep_read(sqe, io.fd, next_byte(io), bytes_left(io), io.offset + io.done);
}

void prep_write_at(io_uring_sqe* sqe, const io_params& io) noexcept {
    io_uring_prep_write(sqe, io.fd, next_byte(io), bytes_left(io), io.offset + io.done);
}

void prep_fsync(io_uring_sqe* sqe, const io_params& io) noexcept {
    const bool data_only = (io.flags & io_params::fsync_data_only) != 0;
    io_uring_prep_fsync(sqe, io.fd, data_only ? IORING_FSYNC_DATASYNC : 0);
}

}  // namespace hop::detail::uring_ops
