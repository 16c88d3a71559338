#pragma once
/// @file
/// Networking: hop::endpoint, hop::resolve, tcp_stream, tcp_listener,
/// udp_socket.
///
/// Which loop a socket belongs to: the loop of its first operation, not the
/// thread it was made on. That is the loop the awaiting coroutine runs on,
/// or hop::default_loop() when the awaiting thread runs no loop (a CPU pool
/// worker, a plain thread in sync_wait). A stream that connect() or
/// accept() makes belongs to that operation's loop from the start. So a
/// listener bound before `run()` serves its accepts on the loop that
/// awaits them, and the default loop is used only where no loop runs.
///
/// An operation awaited from a coroutine on another live loop throws
/// std::logic_error naming both loops: use a socket from its own loop (or
/// `co_await its_loop.schedule()` first). From a thread that runs no loop
/// the operation runs on the socket's loop and resumes the caller on its
/// own executor. When a socket's loop is destroyed, the socket is orphaned:
/// it stays open and its next operation binds it again, as a first
/// operation would (a stream kept across two hop::run calls just works).
///
/// Every operation is a cancellation point: a stop request cancels it in
/// the kernel, and the socket stays usable (a cancelled read_exact /
/// write_all may have moved part of its bytes). One read and one write may
/// be in flight on a socket at the same time. A socket must not be moved
/// while an operation on it is in flight.
///
/// Sockets are not thread-safe, like Asio's: use one from one coroutine at
/// a time (one reader and one writer). The one exception is close() (and
/// the destructor), which may be called from any thread: it is posted to
/// the socket's loop, and operations in flight end with cancelled_error.

#include <hop/detail/buffer.hpp>
#include <hop/detail/executor.hpp>
#include <hop/detail/fd_wait.hpp>
#include <hop/detail/io_handle.hpp>
#include <hop/detail/io_op.hpp>
#include <hop/future.hpp>
#include <hop/task.hpp>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <span>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace hop {

/// An IPv4 or IPv6 address and a port: what sockets bind and connect to.
///
/// @code
/// auto a = hop::endpoint::parse("127.0.0.1:8080");
/// auto b = hop::endpoint::parse("[::1]:80");
/// a.port();         // 8080
/// b.to_string();    // "[::1]:80"
/// @endcode
class endpoint {
public:
    /// 0.0.0.0:0.
    endpoint() noexcept;

    /// Parses "a.b.c.d:port" or "[ipv6]:port" (an IPv6 scope is "[fe80::1%2]"
    /// or "[fe80::1%eth0]"). Names are not looked up here: use hop::resolve.
    /// @throws std::invalid_argument naming the text and what is wrong with it.
    static endpoint parse(std::string_view text);

    /// From a socket address of family AF_INET or AF_INET6.
    /// @throws std::invalid_argument for another family or a short length.
    static endpoint from_sockaddr(const sockaddr* address, socklen_t length);

    /// The IPv4 loopback address 127.0.0.1 with `port`.
    static endpoint loopback_v4(std::uint16_t port) noexcept;
    /// The IPv6 loopback address `::1` with `port`.
    static endpoint loopback_v6(std::uint16_t port) noexcept;
    /// The IPv4 wildcard address 0.0.0.0 with `port` (every IPv4 address).
    static endpoint any_v4(std::uint16_t port) noexcept;
    /// The IPv6 wildcard address `::` with `port` (every IPv6 address).
    static endpoint any_v6(std::uint16_t port) noexcept;

    /// True for an IPv4 endpoint.
    bool is_v4() const noexcept { return m_addr.v4.sin_family == AF_INET; }
    /// True for an IPv6 endpoint.
    bool is_v6() const noexcept { return m_addr.v6.sin6_family == AF_INET6; }
    /// The port, in host byte order.
    std::uint16_t port() const noexcept;
    /// The same address with another port.
    endpoint with_port(std::uint16_t port) const noexcept;
    /// "127.0.0.1", "::1", "fe80::1%2".
    std::string address() const;
    /// "127.0.0.1:8080", "[::1]:80": what parse() reads back.
    std::string to_string() const;

    /// The sockaddr, for system calls.
    const sockaddr* data() const noexcept { return reinterpret_cast<const sockaddr*>(&m_addr); }
    /// The sockaddr's length, for system calls.
    socklen_t size() const noexcept { return is_v4() ? sizeof(sockaddr_in) : sizeof(sockaddr_in6); }

    /// Same family, address and port.
    friend bool operator==(const endpoint& a, const endpoint& b) noexcept;

private:
    // Makes this an IPv6 endpoint for `address`, port 0, no scope.
    void reset_v6(const in6_addr& address) noexcept;

    union {
        sockaddr_in v4;
        sockaddr_in6 v6;
    } m_addr;
};

namespace detail {

/// getaddrinfo on the blocking pool.
future<std::vector<endpoint>> resolve_blocking(std::string host, std::uint16_t port);

}  // namespace detail

/// `co_await hop::resolve("localhost", 8080)`: the host's addresses with
/// `port`, IPv6 and IPv4 in getaddrinfo's order of preference. The lookup
/// starts at once on the blocking pool (never on the loop); the returned
/// future resumes the caller on its own executor. A cancellation point, as
/// every future await is: stop resumes the caller at once with
/// cancelled_error and cancels the lookup (one still queued never runs; a
/// getaddrinfo call already running ends on its own and its result is
/// dropped).
/// @throws std::invalid_argument for an empty host (or one with a NUL).
/// @throws std::system_error (category "getaddrinfo") naming the host when
///         the name does not resolve (from the await, or get()).
inline future<std::vector<endpoint>> resolve(std::string host, std::uint16_t port) {
    return detail::resolve_blocking(std::move(host), port);
}

class tcp_stream;

namespace detail {

using socket_handle = io_handle;

/// read_some / write_some / read_exact / write_all.
class transfer_operation : public io_operation {
public:
    enum class mode : std::uint8_t { read_some, write_some, read_exact, write_all };
    transfer_operation(socket_handle& s, mode m, void* data, std::size_t size, const char* what);
    /// An empty buffer has nothing to move: 0 at once, no call.
    bool await_ready() const noexcept { return m_ready; }
    /// Bytes moved (read_some: 0 at end of stream).
    /// @throws std::system_error with the errno; cancelled_error;
    ///         end_of_stream_error (read_exact).
    std::size_t await_resume();

private:
    const char* m_what;
    mode m_mode;
    bool m_ready = false;
};

/// A gathered send (write_some / write_all of several pieces).
class gather_operation : public io_operation {
public:
    /// @throws std::invalid_argument for more than gathered_bytes::max_parts pieces.
    gather_operation(socket_handle& s, std::span<const std::string_view> parts, bool all, const char* what);
    gather_operation(const gather_operation&) = delete;
    gather_operation& operator=(const gather_operation&) = delete;
    /// Nothing to send: 0 at once, no call.
    bool await_ready() const noexcept { return m_ready; }
    /// Bytes sent. @throws std::system_error with the errno; cancelled_error.
    std::size_t await_resume();

private:
    gathered_bytes m_bytes;
    const char* m_what;
    bool m_ready = false;
};

class accept_operation : public io_operation {
public:
    /// `detached`: the stream belongs to no loop yet (accept_detached()).
    explicit accept_operation(socket_handle& s, bool detached = false);
    /// @throws std::system_error (EMFILE when out of descriptors...).
    tcp_stream await_resume();

private:
    sockaddr_storage m_peer{};
    bool m_detached;
};

/// udp send_to.
class send_to_operation : public io_operation {
public:
    send_to_operation(socket_handle& s, const void* data, std::size_t size, const endpoint& to);
    std::size_t await_resume();

private:
    iovec m_iov{};
    msghdr m_msg{};
    sockaddr_storage m_to{};
};

}  // namespace detail

/// What udp_socket::recv_from gives: `auto [size, from] = co_await u.recv_from(buf);`
struct recv_result {
    /// Bytes received into the buffer.
    std::size_t size = 0;
    /// The sender.
    endpoint from;
};

namespace detail {
class recv_from_operation : public io_operation {
public:
    recv_from_operation(socket_handle& s, void* data, std::size_t size);
    recv_result await_resume();

private:
    iovec m_iov{};
    msghdr m_msg{};
    sockaddr_storage m_from{};
};
}  // namespace detail

/// A connected TCP socket.
///
/// @code
/// auto c = co_await hop::tcp_stream::connect(hop::endpoint::parse("127.0.0.1:8080"));
/// co_await c.write_all(std::string_view("ping"));
/// char buf[4];
/// co_await c.read_exact(buf);
/// @endcode
class tcp_stream {
public:
    /// Not connected (is_open() is false).
    tcp_stream() noexcept = default;
    /// Moves the socket; `o` is closed afterwards.
    tcp_stream(tcp_stream&&) noexcept = default;
    /// Closes this socket, then takes the other's.
    tcp_stream& operator=(tcp_stream&&) noexcept = default;
    ~tcp_stream() = default;

    /// Connects to `peer`. The stream belongs to the caller's loop
    /// (hop::this_thread_loop()).
    /// @throws std::system_error (ECONNREFUSED, ENETUNREACH, ...) naming
    ///         the endpoint; cancelled_error.
    static task<tcp_stream> connect(endpoint peer);
    /// Resolves `host` and tries its addresses in turn, happy-eyeballs
    /// style: the next attempt starts 250 ms after the previous one or as
    /// soon as it fails; the first to connect wins and the rest are
    /// cancelled.
    /// @throws std::invalid_argument for an empty host; std::system_error
    ///         naming the host (the last error) if none connects.
    static task<tcp_stream> connect(std::string host, std::uint16_t port);
    /// Connects to the first of `candidates` that answers, happy-eyeballs
    /// style as above (what connect(host, port) does after resolving).
    /// @throws std::invalid_argument for an empty list; std::system_error
    ///         (the last error) if none connects.
    static task<tcp_stream> connect(std::vector<endpoint> candidates);
    /// Adopts a connected TCP socket, closed by this object. Like a bound
    /// listener it belongs to the loop of its first operation, which sets
    /// its O_NONBLOCK flag as that loop's backend wants it (set for epoll,
    /// cleared for io_uring).
    /// @throws std::invalid_argument for a negative fd.
    static tcp_stream adopt(int fd);

    /// `co_await s.read_some(buf)`: at least one byte, as many as are
    /// there; 0 at the end of the stream (and for an empty buffer).
    template <detail::mutable_byte_buffer B>
    detail::transfer_operation read_some(B&& buf) {
        return {m_handle, detail::transfer_operation::mode::read_some, std::data(buf), std::size(buf) * 1,
                "hop::tcp_stream::read_some"};
    }
    /// Fills the whole buffer. @throws end_of_stream_error if the stream
    /// ends first (the bytes that came are in the buffer).
    template <detail::mutable_byte_buffer B>
    detail::transfer_operation read_exact(B&& buf) {
        return {m_handle, detail::transfer_operation::mode::read_exact, std::data(buf), std::size(buf) * 1,
                "hop::tcp_stream::read_exact"};
    }
    /// Sends some of the bytes; returns how many.
    template <detail::byte_buffer B>
    detail::transfer_operation write_some(const B& bytes) {
        return {m_handle, detail::transfer_operation::mode::write_some,
                const_cast<void*>(static_cast<const void*>(std::data(bytes))), std::size(bytes) * 1,
                "hop::tcp_stream::write_some"};
    }
    /// Sends all the bytes (the peer closing first: EPIPE / ECONNRESET as
    /// std::system_error; never SIGPIPE).
    template <detail::byte_buffer B>
    detail::transfer_operation write_all(const B& bytes) {
        return {m_handle, detail::transfer_operation::mode::write_all,
                const_cast<void*>(static_cast<const void*>(std::data(bytes))), std::size(bytes) * 1,
                "hop::tcp_stream::write_all"};
    }

    /// Sends some of `parts`, in order, in one call (a gathered send, like
    /// writev): a response's head and body without copying them together.
    /// Returns how many bytes.
    /// @throws std::invalid_argument (at the call) for more than 16 parts.
    detail::gather_operation write_some(std::span<const std::string_view> parts) {
        return {m_handle, parts, false, "hop::tcp_stream::write_some"};
    }
    /// Sends all of `parts`, in order: one call when the socket takes them
    /// all. `std::array parts{head, body}; co_await s.write_all(parts);`
    /// @throws std::invalid_argument (at the call) for more than 16 parts;
    ///         as write_all of one buffer, from the await.
    detail::gather_operation write_all(std::span<const std::string_view> parts) {
        return {m_handle, parts, true, "hop::tcp_stream::write_all"};
    }

    /// `co_await s.wait_readable()`: resumes once a read would not block
    /// (bytes, the peer's FIN, or an error wait to be read); consumes
    /// nothing. Returns the ready poll events (POLLIN, POLLHUP, POLLERR...).
    /// A server waiting for a client's next request this way holds no read
    /// buffer meanwhile. A cancellation point, like every await.
    /// @throws std::system_error (EBADF) naming the call if the stream is
    ///         closed; cancelled_error if it is closed or stopped while
    ///         waiting.
    detail::fd_wait_operation wait_readable() { return {m_handle, POLLIN, "hop::tcp_stream::wait_readable"}; }
    /// `co_await s.wait_writable()`: resumes once a write would not block
    /// (send buffer space, or an error); writes nothing. Returns the ready
    /// poll events (POLLOUT, POLLHUP, POLLERR...).
    /// @throws as wait_readable.
    detail::fd_wait_operation wait_writable() { return {m_handle, POLLOUT, "hop::tcp_stream::wait_writable"}; }

    /// Sends FIN: the peer's reads end; this side can still read.
    void shutdown_write();
    /// Closes the socket. Operations in flight on it end (cancelled_error).
    /// Closing twice, or a closed stream, is allowed.
    void close() noexcept { m_handle.close(); }
    /// False once closed (or moved from).
    bool is_open() const noexcept { return m_handle.is_open(); }
    /// TCP_NODELAY: send small writes at once.
    void set_nodelay(bool on);
    /// The local address. @throws std::system_error (getsockname).
    endpoint local_endpoint() const;
    /// The peer's address. @throws std::system_error (ENOTCONN once the peer is gone).
    endpoint remote_endpoint() const;
    /// The socket's descriptor (-1 when closed); still owned by the stream.
    int native_handle() const noexcept { return m_handle.fd(); }

private:
    friend class detail::accept_operation;
    friend class tcp_listener;
    explicit tcp_stream(detail::socket_handle h) noexcept : m_handle(std::move(h)) {}
    detail::socket_handle m_handle;
};

/// tcp_listener::bind options.
struct listen_options {
    /// The listen(2) backlog.
    int backlog = 1024;
    /// SO_REUSEPORT: several listeners (threads, processes) on one port.
    bool reuse_port = false;
    /// SO_REUSEADDR (on by default: a restarted server can bind at once).
    bool reuse_address = true;
};

/// A listening TCP socket.
///
/// @code
/// auto lis = hop::tcp_listener::bind(hop::endpoint::parse("127.0.0.1:0"));
/// auto port = lis.local_endpoint().port();
/// hop::tcp_stream conn = co_await lis.accept();
/// @endcode
class tcp_listener {
public:
    tcp_listener() noexcept = default;
    /// Moves the listener; the other is closed afterwards.
    tcp_listener(tcp_listener&&) noexcept = default;
    /// Closes this listener, then takes the other's.
    tcp_listener& operator=(tcp_listener&&) noexcept = default;
    ~tcp_listener() = default;

    /// Binds and listens (port 0: the kernel picks one; see
    /// local_endpoint()). No loop is involved yet: the listener belongs to
    /// the loop of its first accept(), so one bound before `run()` serves
    /// the loop that awaits it.
    /// @throws std::invalid_argument for a backlog < 1; std::system_error
    ///         (EADDRINUSE, EACCES...) naming the endpoint.
    static tcp_listener bind(const endpoint& local, const listen_options& options = {});

    /// `co_await lis.accept()`: the next connection, belonging to the
    /// listener's loop. Resumes the caller on its own executor; a
    /// cancellation point (the listener stays usable).
    /// @throws std::system_error naming the listener. The listener stays
    ///         usable; for a transient error (is_transient_accept_error:
    ///         out of descriptors or memory, an aborted connection) back
    ///         off a little and accept again, as nginx and Go's net/http do.
    detail::accept_operation accept();
    /// As accept(), but the stream belongs to no loop yet: like one from
    /// tcp_stream::adopt(), its first operation binds it to the loop that
    /// runs it. For handing connections to other loops (an io_pool's
    /// acceptor): move the stream into a task started on the loop that
    /// should serve it. @throws as accept().
    detail::accept_operation accept_detached();

    /// The bound address (with the port the kernel chose for port 0). @throws std::system_error.
    endpoint local_endpoint() const;
    /// Closes the socket; pending accepts end with an error. Any thread.
    void close() noexcept { m_handle.close(); }
    /// False once closed (or moved from).
    bool is_open() const noexcept { return m_handle.is_open(); }
    /// The socket's descriptor (-1 when closed); still owned by the listener.
    int native_handle() const noexcept { return m_handle.fd(); }

private:
    explicit tcp_listener(detail::socket_handle h) noexcept : m_handle(std::move(h)) {}
    detail::socket_handle m_handle;
};

/// True for the accept() failures a server should ride out rather than
/// stop on: EMFILE and ENFILE (out of descriptors), ENOBUFS and ENOMEM
/// (out of memory), ECONNABORTED (the peer left before accept), EPERM (a
/// firewall refused it) and EINTR. The listener is still fine: back off
/// (a few ms, doubling, up to about a second) and accept again.
bool is_transient_accept_error(const std::error_code& ec) noexcept;
/// is_transient_accept_error for a caught std::system_error.
inline bool is_transient_accept_error(const std::system_error& e) noexcept {
    return is_transient_accept_error(e.code());
}

/// How accept_with_backoff rides out transient failures.
struct accept_backoff {
    /// The first wait after a failure; each further failure doubles it.
    std::chrono::milliseconds initial{5};
    /// The longest wait.
    std::chrono::milliseconds max{1000};
    /// One line on stderr when a burst of failures begins and one when it
    /// ends (never one per failure).
    bool log = true;
};

/// `co_await hop::accept_with_backoff(lis)`: the next connection, like
/// lis.accept(), but a server built on it survives running out of
/// descriptors: a transient failure (is_transient_accept_error) waits
/// `initial`, doubling up to `max`, and tries again, as nginx and Go's
/// net/http do; the CPU stays idle while starved. Resumes the caller on its
/// own executor; a cancellation point, also during the wait.
/// @code
/// for (;;) connections.spawn(serve(co_await hop::accept_with_backoff(lis)));
/// @endcode
/// @throws std::invalid_argument for `initial` < 1 ms or `max` < `initial`;
///         std::system_error for any other accept failure; cancelled_error.
task<tcp_stream> accept_with_backoff(tcp_listener& lis, accept_backoff options = {});

/// A UDP socket.
///
/// @code
/// auto u = hop::udp_socket::bind(hop::endpoint::parse("127.0.0.1:0"));
/// co_await u.send_to(std::string_view("hi"), peer);
/// char buf[1500];
/// auto [size, from] = co_await u.recv_from(buf);
/// @endcode
class udp_socket {
public:
    udp_socket() noexcept = default;
    /// Moves the socket; the other is closed afterwards.
    udp_socket(udp_socket&&) noexcept = default;
    /// Closes this socket, then takes the other's.
    udp_socket& operator=(udp_socket&&) noexcept = default;
    ~udp_socket() = default;

    /// @throws std::system_error naming the endpoint.
    static udp_socket bind(const endpoint& local);

    /// Sends one datagram. @throws std::system_error (EMSGSIZE...).
    template <detail::byte_buffer B>
    detail::send_to_operation send_to(const B& bytes, const endpoint& to) {
        return {m_handle, std::data(bytes), std::size(bytes) * 1, to};
    }
    /// Receives one datagram (the part that fits in `buf`).
    template <detail::mutable_byte_buffer B>
    detail::recv_from_operation recv_from(B&& buf) {
        return {m_handle, std::data(buf), std::size(buf) * 1};
    }

    /// The bound address. @throws std::system_error.
    endpoint local_endpoint() const;
    /// Closes the socket; pending operations end with an error. Any thread.
    void close() noexcept { m_handle.close(); }
    /// False once closed (or moved from).
    bool is_open() const noexcept { return m_handle.is_open(); }
    /// The socket's descriptor (-1 when closed); still owned by the socket.
    int native_handle() const noexcept { return m_handle.fd(); }

private:
    explicit udp_socket(detail::socket_handle h) noexcept : m_handle(std::move(h)) {}
    detail::socket_handle m_handle;
};

}  // namespace hop
