// The readiness backend's half of each kind of operation (io_kinds.hpp):
// one non-blocking try of the call. -EAGAIN means "wait for readiness, then
// try again"; file calls run whole on the blocking pool.

#include "../io_kinds.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>

namespace hop::detail::readiness_ops {

namespace {
char* next_byte(const io_params& io) noexcept { return static_cast<char*>(io.buf) + io.done; }
std::size_t bytes_left(const io_params& io) noexcept {
    return std::min<std::size_t>(io.len - io.done, std::size_t{1} << 30);
}
int result_of(ssize_t r) noexcept {
    if (r >= 0) return static_cast<int>(r);
    return errno == EWOULDBLOCK ? -EAGAIN : -errno;
}
}  // namespace

int attempt_poll(io_params& io, bool after_wait) noexcept {
    if (!after_wait) return -EAGAIN;  // nothing to try: wait
    return (io.events & POLLIN) != 0 ? POLLIN : POLLOUT;
}

int attempt_recv(io_params& io, bool) noexcept {
    return result_of(::recv(io.fd, next_byte(io), bytes_left(io), io.flags | MSG_DONTWAIT));
}

int attempt_send(io_params& io, bool) noexcept {
    return result_of(::send(io.fd, next_byte(io), bytes_left(io), io.flags | MSG_DONTWAIT | MSG_NOSIGNAL));
}

int attempt_accept(io_params& io, bool) noexcept {
    socklen_t* len = io.addr ? &io.addrlen : nullptr;
    return result_of(::accept4(io.fd, io.addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC));
}

int attempt_connect(io_params& io, bool after_wait) noexcept {
    if (after_wait) {
        int err = 0;
        socklen_t len = sizeof err;
        if (::getsockopt(io.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return -errno;
        return -err;
    }
    if (::connect(io.fd, io.addr, io.addrlen) == 0) return 0;
    if (errno != EINPROGRESS) return -errno;
    // Asked again, connect reports a handshake that finished meanwhile (0,
    // or its error), as over loopback, where it finishes inside the first
    // call: the connect then needs no wait, so no registration either (an
    // idle connected socket holds none until a call on it waits).
    if (::connect(io.fd, io.addr, io.addrlen) == 0 || errno == EISCONN) return 0;
    return errno == EALREADY || errno == EINPROGRESS ? -EAGAIN : -errno;
}

int attempt_recvmsg(io_params& io, bool) noexcept {
    return result_of(::recvmsg(io.fd, io.msg, io.flags | MSG_DONTWAIT));
}

int attempt_sendmsg(io_params& io, bool) noexcept {
    return result_of(::sendmsg(io.fd, io.msg, io.flags | MSG_DONTWAIT | MSG_NOSIGNAL));
}

int attempt_send_gathered(io_params& io, bool) noexcept {
    auto* g = static_cast<gathered_bytes*>(io.buf);
    g->position(io.done);
    return result_of(::sendmsg(io.fd, &g->msg, io.flags | MSG_DONTWAIT | MSG_NOSIGNAL));
}

int call_read_at(io_params& io, bool) noexcept {
    const ssize_t r = ::pread(io.fd, next_byte(io), bytes_left(io), static_cast<off_t>(io.offset + io.done));
    return r >= 0 ? static_cast<int>(r) : -errno;
}

int call_write_at(io_params& io, bool) noexcept {
    const ssize_t r = ::pwrite(io.fd, next_byte(io), bytes_left(io), static_cast<off_t>(io.offset + io.done));
    return r >= 0 ? static_cast<int>(r) : -errno;
}

int call_fsync(io_params& io, bool) noexcept {
    const int r = (io.flags & io_params::fsync_data_only) != 0 ? ::fdatasync(io.fd) : ::fsync(io.fd);
    return r == 0 ? 0 : -errno;
}

}  // namespace hop::detail::readiness_ops
