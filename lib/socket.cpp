// tcp_stream, tcp_listener, udp_socket: the sockets over io_operation.

#include <hop/net.hpp>

#include <hop/sync.hpp>
#include <hop/task_group.hpp>
#include <hop/time.hpp>

#include "error_text.hpp"
#include "loop_core.hpp"

#include <fcntl.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace hop {

namespace {

[[noreturn]] void throw_sys(int err, const std::string& what) {
    throw std::system_error(err, std::generic_category(), what);
}

std::string on_fd(const char* what, int fd) { return std::string(what) + " (fd " + std::to_string(fd) + ")"; }

// A new socket, close-on-exec. `loop`: the loop it belongs to from the
// start (connect), made as that loop's backend wants it (non-blocking for
// epoll; io_uring's native operations want a blocking one); null: not bound
// yet (bind), made non-blocking, the common case, until its first operation.
detail::socket_handle open_socket(io_loop* loop, int family, int type, const char* what) {
    const bool nonblocking = loop == nullptr || loop->core().backend().wants_nonblocking();
    int fd = ::socket(family, type | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) throw_sys(errno, std::string(what) + ": socket()");
    if (loop) return detail::socket_handle(fd, detail::io_handle::fd_mode::as_backend_wants, *loop);
    return detail::socket_handle(fd, detail::io_handle::fd_mode::as_backend_wants, nonblocking);
}

// The fd of an open socket, for calls that need no loop.
int checked_fd(const detail::socket_handle& h, const char* what) {
    const int fd = h.fd();
    if (fd < 0) throw_sys(EBADF, std::string(what) + ": the socket is not open");
    return fd;
}

endpoint sock_name(int fd, bool peer, const char* what) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    int r = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
                 : ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    if (r != 0) throw_sys(errno, on_fd(what, fd));
    return endpoint::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
}

void set_int_option(int fd, int level, int name, int value, const char* what) {
    if (::setsockopt(fd, level, name, &value, sizeof value) != 0) throw_sys(errno, on_fd(what, fd));
}

// The connect step, in the connecting coroutine's frame.
class connect_operation : public detail::io_operation {
public:
    connect_operation(detail::socket_handle& s, const endpoint& peer) : io_operation(s.loop_for("hop::tcp_stream::connect")) {
        std::memcpy(&m_peer, peer.data(), peer.size());
        io.kind = &detail::io_kind_connect;
        io.fd = s.fd();
        io.addr = reinterpret_cast<sockaddr*>(&m_peer);
        io.addrlen = peer.size();
        io.reg = s.reg();
    }
    int await_resume() noexcept { return take_result(); }

private:
    sockaddr_storage m_peer{};
};

}  // namespace

namespace detail {

// ---- transfers ---------------------------------------------------------

transfer_operation::transfer_operation(socket_handle& s, mode m, void* data, std::size_t size, const char* what)
    : io_operation(s.loop_for(what)), m_what(what), m_mode(m) {
    const bool reading = m == mode::read_some || m == mode::read_exact;
    io.kind = reading ? &io_kind_recv : &io_kind_send;
    io.all = m == mode::read_exact || m == mode::write_all;
    io.fd = s.fd();
    io.buf = data;
    io.len = size;
    io.reg = s.reg();
    m_ready = size == 0;  // nothing to move: no call at all
}

std::size_t transfer_operation::await_resume() {
    if (m_ready) return 0;
    const int r = take_result();
    if (r < 0) detail::throw_io_failure(r, on_fd(m_what, io.fd));
    switch (m_mode) {
        case mode::read_exact:
            if (io.done < io.len) {
                throw end_of_stream_error(on_fd(m_what, io.fd) + ": end of stream after " + std::to_string(io.done) +
                                              " of " + std::to_string(io.len) + " bytes",
                                          io.done);
            }
            return io.done;
        case mode::write_all:
            return io.done;
        default:
            return static_cast<std::size_t>(r);
    }
}

gather_operation::gather_operation(socket_handle& s, std::span<const std::string_view> parts, bool all,
                                   const char* what)
    : io_operation(s.loop_for(what)), m_what(what) {
    if (parts.size() > gathered_bytes::max_parts) {
        throw std::invalid_argument(std::string(what) + ": " + std::to_string(parts.size()) +
                                    " parts; at most " + std::to_string(gathered_bytes::max_parts) +
                                    " in one gathered write");
    }
    m_bytes.parts = parts.data();
    m_bytes.count = parts.size();
    std::size_t total = 0;
    for (const auto& p : parts) total += p.size();
    io.kind = &io_kind_send_gathered;
    io.all = all;
    io.fd = s.fd();
    io.buf = &m_bytes;
    io.len = total;
    io.reg = s.reg();
    m_ready = total == 0;
}

std::size_t gather_operation::await_resume() {
    if (m_ready) return 0;
    const int r = take_result();
    if (r < 0) detail::throw_io_failure(r, on_fd(m_what, io.fd));
    return io.all ? io.done : static_cast<std::size_t>(r);
}

// ---- accept -------------------------------------------------------------

accept_operation::accept_operation(socket_handle& s, bool detached)
    : io_operation(s.loop_for(detached ? "hop::tcp_listener::accept_detached" : "hop::tcp_listener::accept")),
      m_detached(detached) {
    io.kind = &io_kind_accept;
    io.fd = s.fd();
    io.addr = reinterpret_cast<sockaddr*>(&m_peer);
    io.addrlen = sizeof m_peer;
    io.reg = s.reg();
}

tcp_stream accept_operation::await_resume() {
    const int r = take_result();
    if (r == -ECANCELED) detail::throw_io_failure(r, on_fd("hop::tcp_listener::accept", io.fd));
    if (r < 0) {
        std::string where;
        try {
            where = " on " + sock_name(io.fd, false, "hop::tcp_listener::accept").to_string();
        } catch (...) {
        }
        throw_sys(-r, on_fd("hop::tcp_listener::accept", io.fd) + where);
    }
    if (m_detached) {
        // O_NONBLOCK is as this loop's backend left it; the binding loop
        // changes it if its backend wants otherwise.
        return tcp_stream(socket_handle(r, io_handle::fd_mode::as_backend_wants,
                                        loop().core().backend().wants_nonblocking()));
    }
    return tcp_stream(socket_handle(r, io_handle::fd_mode::as_backend_wants, loop()));
}

// ---- udp ------------------------------------------------------------------

send_to_operation::send_to_operation(socket_handle& s, const void* data, std::size_t size, const endpoint& to)
    : io_operation(s.loop_for("hop::udp_socket::send_to")) {
    std::memcpy(&m_to, to.data(), to.size());
    m_iov.iov_base = const_cast<void*>(data);
    m_iov.iov_len = size;
    m_msg.msg_name = &m_to;
    m_msg.msg_namelen = to.size();
    m_msg.msg_iov = &m_iov;
    m_msg.msg_iovlen = 1;
    io.kind = &io_kind_sendmsg;
    io.fd = s.fd();
    io.msg = &m_msg;
    io.reg = s.reg();
}

std::size_t send_to_operation::await_resume() {
    const int r = take_result();
    if (r == -ECANCELED) detail::throw_io_failure(r, on_fd("hop::udp_socket::send_to", io.fd));
    if (r < 0) {
        auto to = endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&m_to), m_msg.msg_namelen);
        throw_sys(-r, on_fd("hop::udp_socket::send_to", io.fd) + " to " + to.to_string());
    }
    return static_cast<std::size_t>(r);
}

recv_from_operation::recv_from_operation(socket_handle& s, void* data, std::size_t size)
    : io_operation(s.loop_for("hop::udp_socket::recv_from")) {
    m_iov.iov_base = data;
    m_iov.iov_len = size;
    m_msg.msg_name = &m_from;
    m_msg.msg_namelen = sizeof m_from;
    m_msg.msg_iov = &m_iov;
    m_msg.msg_iovlen = 1;
    io.kind = &io_kind_recvmsg;
    io.fd = s.fd();
    io.msg = &m_msg;
    io.reg = s.reg();
}

recv_result recv_from_operation::await_resume() {
    const int r = take_result();
    if (r < 0) detail::throw_io_failure(r, on_fd("hop::udp_socket::recv_from", io.fd));
    recv_result out;
    out.size = static_cast<std::size_t>(r);
    out.from = endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&m_from), m_msg.msg_namelen);
    return out;
}

}  // namespace detail

// ---- tcp_stream ---------------------------------------------------------------

task<tcp_stream> tcp_stream::connect(endpoint peer) {
    io_loop& loop = this_thread_loop();
    auto h = open_socket(&loop, peer.is_v4() ? AF_INET : AF_INET6, SOCK_STREAM, "hop::tcp_stream::connect");
    int r;
    {
        connect_operation op(h, peer);
        r = co_await op;
    }
    if (r < 0) detail::throw_io_failure(r, "hop::tcp_stream::connect to " + peer.to_string());
    co_return tcp_stream(std::move(h));
}

namespace {

// Happy eyeballs (RFC 8305, simplified): attempt i starts when attempt i-1
// failed or 250 ms after it started, whichever is first; the first
// connection wins and the other attempts are cancelled. All on one loop.
struct connect_race {
    std::vector<endpoint> targets;
    std::vector<std::unique_ptr<event>> started;  // started[i]: attempt i is connecting
    std::vector<std::unique_ptr<event>> failed;   // failed[i]: attempt i is out
    event decided;
    std::optional<tcp_stream> winner;
    std::exception_ptr last_error;
    std::size_t failures = 0;
};

constexpr auto attempt_delay = std::chrono::milliseconds(250);

task<> connect_attempt(connect_race& race, std::size_t i) {
    try {
        if (i > 0) {
            // 250 ms after the previous attempt started, or when it failed.
            co_await race.started[i - 1]->wait();
            try {
                co_await with_timeout(attempt_delay, race.failed[i - 1]->wait());
            } catch (const timeout_error&) {
            }
        }
        race.started[i]->set();
        tcp_stream s = co_await tcp_stream::connect(race.targets[i]);
        if (!race.winner) {
            race.winner = std::move(s);
            race.decided.set();
        }
    } catch (const cancelled_error&) {
        // Another attempt won.
    } catch (...) {
        race.last_error = std::current_exception();
        race.failed[i]->set();
        if (++race.failures == race.targets.size()) race.decided.set();
    }
}

}  // namespace

namespace {

// connect(host, port) and connect(candidates): `name` is what errors name.
task<tcp_stream> connect_any(std::vector<endpoint> targets, std::string name) {
    if (targets.empty()) throw std::invalid_argument("hop::tcp_stream::connect: no address to connect to (" + name + ")");
    if (targets.size() == 1) {
        try {
            co_return co_await tcp_stream::connect(targets.front());
        } catch (const std::system_error& e) {
            throw std::system_error(e.code(), "hop::tcp_stream::connect to " + name + " (" +
                                                  targets.front().to_string() + ")");
        }
    }
    io_loop& loop = this_thread_loop();
    connect_race race;
    race.targets = std::move(targets);
    for (std::size_t i = 0; i < race.targets.size(); ++i) {
        race.started.push_back(std::make_unique<event>());
        race.failed.push_back(std::make_unique<event>());
    }
    task_group group;
    for (std::size_t i = 0; i < race.targets.size(); ++i) group.spawn(loop, connect_attempt(race, i));
    std::exception_ptr stopped;
    try {
        co_await race.decided.wait();
    } catch (...) {
        stopped = std::current_exception();  // the caller's stop: the attempts go too
    }
    group.cancel();
    co_await group.wait();
    if (stopped) std::rethrow_exception(stopped);
    if (race.winner) co_return std::move(*race.winner);
    try {
        std::rethrow_exception(race.last_error);
    } catch (const std::system_error& e) {
        // The new error appends the errno text once more.
        const std::string last = detail::without_code_text(e);
        throw std::system_error(e.code(), "hop::tcp_stream::connect to " + name + ": none of " +
                                              std::to_string(race.targets.size()) +
                                              " addresses connected; the last error, " + last);
    }
}

}  // namespace

task<tcp_stream> tcp_stream::connect(std::string host, std::uint16_t port) {
    if (host.empty()) throw std::invalid_argument("hop::tcp_stream::connect: the host name is empty");
    std::vector<endpoint> targets = co_await resolve(host, port);
    if (targets.empty()) throw_sys(EADDRNOTAVAIL, "hop::tcp_stream::connect: '" + host + "' has no address");
    co_return co_await connect_any(std::move(targets), "'" + host + "' port " + std::to_string(port));
}

task<tcp_stream> tcp_stream::connect(std::vector<endpoint> candidates) {
    if (candidates.empty()) throw std::invalid_argument("hop::tcp_stream::connect: the list of endpoints is empty");
    std::string name = "[";
    for (std::size_t i = 0; i < candidates.size(); ++i) {
        if (i) name += ", ";
        name += candidates[i].to_string();
    }
    name += "]";
    return connect_any(std::move(candidates), std::move(name));
}

tcp_stream tcp_stream::adopt(int fd) {
    if (fd < 0) throw std::invalid_argument("hop::tcp_stream::adopt: invalid fd " + std::to_string(fd));
    int type = 0;
    socklen_t len = sizeof type;
    if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) throw_sys(errno, on_fd("hop::tcp_stream::adopt", fd));
    if (type != SOCK_STREAM) {
        throw std::invalid_argument("hop::tcp_stream::adopt: fd " + std::to_string(fd) + " is not a stream socket");
    }
    const int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0) throw_sys(errno, on_fd("hop::tcp_stream::adopt", fd));
    // Bound at its first operation, which sets O_NONBLOCK as that loop wants.
    return tcp_stream(
        detail::socket_handle(fd, detail::io_handle::fd_mode::as_backend_wants, (fl & O_NONBLOCK) != 0));
}

void tcp_stream::shutdown_write() {
    checked_fd(m_handle, "hop::tcp_stream::shutdown_write");
    if (::shutdown(m_handle.fd(), SHUT_WR) != 0) throw_sys(errno, on_fd("hop::tcp_stream::shutdown_write", m_handle.fd()));
}

void tcp_stream::set_nodelay(bool on) {
    checked_fd(m_handle, "hop::tcp_stream::set_nodelay");
    set_int_option(m_handle.fd(), IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0, "hop::tcp_stream::set_nodelay");
}

endpoint tcp_stream::local_endpoint() const {
    checked_fd(m_handle, "hop::tcp_stream::local_endpoint");
    return sock_name(m_handle.fd(), false, "hop::tcp_stream::local_endpoint");
}

endpoint tcp_stream::remote_endpoint() const {
    checked_fd(m_handle, "hop::tcp_stream::remote_endpoint");
    return sock_name(m_handle.fd(), true, "hop::tcp_stream::remote_endpoint");
}

// ---- tcp_listener -------------------------------------------------------------

tcp_listener tcp_listener::bind(const endpoint& local, const listen_options& options) {
    if (options.backlog < 1) {
        throw std::invalid_argument("hop::tcp_listener::bind: backlog " + std::to_string(options.backlog) +
                                    " (it must be at least 1)");
    }
    const std::string what = "hop::tcp_listener::bind " + local.to_string();
    auto h = open_socket(nullptr, local.is_v4() ? AF_INET : AF_INET6, SOCK_STREAM, what.c_str());
    if (options.reuse_address) set_int_option(h.fd(), SOL_SOCKET, SO_REUSEADDR, 1, what.c_str());
    if (options.reuse_port) set_int_option(h.fd(), SOL_SOCKET, SO_REUSEPORT, 1, what.c_str());
    if (::bind(h.fd(), local.data(), local.size()) != 0) throw_sys(errno, what);
    if (::listen(h.fd(), options.backlog) != 0) throw_sys(errno, what + ": listen");
    return tcp_listener(std::move(h));
}

detail::accept_operation tcp_listener::accept() { return detail::accept_operation(m_handle); }
detail::accept_operation tcp_listener::accept_detached() { return detail::accept_operation(m_handle, true); }

endpoint tcp_listener::local_endpoint() const {
    checked_fd(m_handle, "hop::tcp_listener::local_endpoint");
    return sock_name(m_handle.fd(), false, "hop::tcp_listener::local_endpoint");
}

bool is_transient_accept_error(const std::error_code& ec) noexcept {
    if (ec.category() != std::generic_category() && ec.category() != std::system_category()) return false;
    switch (ec.value()) {
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
        case ECONNABORTED:
        case EPERM:
        case EINTR:
            return true;
        default:
            return false;
    }
}

task<tcp_stream> accept_with_backoff(tcp_listener& lis, accept_backoff options) {
    using std::chrono::milliseconds;
    if (options.initial < milliseconds(1) || options.max < options.initial) {
        throw std::invalid_argument("hop::accept_with_backoff: initial " + std::to_string(options.initial.count()) +
                                    " ms and max " + std::to_string(options.max.count()) +
                                    " ms (initial must be at least 1 ms, and max at least initial)");
    }
    milliseconds wait = options.initial;
    std::size_t failures = 0;
    const auto began = std::chrono::steady_clock::now();
    for (;;) {
        try {
            tcp_stream s = co_await lis.accept();
            if (failures != 0 && options.log) {
                const auto ms =
                    std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - began).count();
                std::fprintf(stderr, "hop: accepting again on %s after %zu failed accepts over %lld ms\n",
                             lis.local_endpoint().to_string().c_str(), failures, static_cast<long long>(ms));
            }
            co_return s;
        } catch (const std::system_error& e) {
            if (!is_transient_accept_error(e)) throw;
            if (failures == 0 && options.log) {
                std::fprintf(stderr, "hop: %s; backing off (from %lld ms, up to %lld ms) until it passes\n",
                             e.what(), static_cast<long long>(options.initial.count()),
                             static_cast<long long>(options.max.count()));
            }
        }
        ++failures;
        co_await sleep_for(wait);
        wait = std::min(wait * 2, options.max);
    }
}

// ---- udp_socket ---------------------------------------------------------------

udp_socket udp_socket::bind(const endpoint& local) {
    const std::string what = "hop::udp_socket::bind " + local.to_string();
    auto h = open_socket(nullptr, local.is_v4() ? AF_INET : AF_INET6, SOCK_DGRAM, what.c_str());
    if (::bind(h.fd(), local.data(), local.size()) != 0) throw_sys(errno, what);
    return udp_socket(std::move(h));
}

endpoint udp_socket::local_endpoint() const {
    checked_fd(m_handle, "hop::udp_socket::local_endpoint");
    return sock_name(m_handle.fd(), false, "hop::udp_socket::local_endpoint");
}

}  // namespace hop
