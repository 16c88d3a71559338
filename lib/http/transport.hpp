#pragma once
// Private to hop::http: the one byte stream HTTP runs over, TCP or TLS over
// TCP. The client and the server read, write and close through it and
// never ask which it is, nor which backend the loop runs:
//
//   - a read returns 0 at the end of the stream; over TLS a close without
//     close_notify is an end too, as in curl and browsers (many servers
//     and clients never send close_notify, and HTTP's own framing says
//     whether a message was whole);
//   - over TCP every call is the socket's own loop operation (no coroutine
//     frame); over TLS it is hop::tls::stream's task.
//
// One transport is used by one coroutine at a time, on its loop.

#include <hop/detail/fd_wait.hpp>
#include <hop/net.hpp>
#include <hop/task.hpp>
#include <hop/tls.hpp>

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace hop::http::detail {

/// What a transport call returns: either a tcp_stream operation, built in
/// place (no copy, no frame), or a TLS task, awaited as one awaitable.
/// `end_on_truncation`: a TLS read whose peer closed without close_notify
/// resumes with 0 instead of throwing tls::truncated_error.
template <class Plain, class R, bool end_on_truncation = false>
class either_operation {
public:
    /// TCP: `make()` returns the socket's operation, constructed in place.
    template <class F>
        requires std::is_invocable_r_v<Plain, F>
    explicit either_operation(F make) {
        m_plain.emplace(in_place_result<F>{std::move(make)});
    }
    /// TLS.
    explicit either_operation(task<R> secure) noexcept : m_secure(std::move(secure)) {}
    either_operation(const either_operation&) = delete;
    either_operation& operator=(const either_operation&) = delete;

    bool await_ready() { return m_plain ? m_plain->await_ready() : m_secure.operator co_await().await_ready(); }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        return m_plain ? m_plain->await_suspend(h) : m_secure.operator co_await().await_suspend(h);
    }
    R await_resume() {
        if (m_plain) return static_cast<R>(m_plain->await_resume());
        if constexpr (end_on_truncation) {
            try {
                return m_secure.operator co_await().await_resume();
            } catch (const tls::truncated_error&) {
                return R{};
            }
        } else {
            return m_secure.operator co_await().await_resume();
        }
    }

private:
    // Loop operations neither copy nor move: optional::emplace builds one
    // from this conversion's prvalue, in place.
    template <class F>
    struct in_place_result {
        F make;
        operator Plain() { return make(); }
    };

    std::optional<Plain> m_plain;
    task<R> m_secure;
};

class transport {
public:
    using read_operation = either_operation<hop::detail::transfer_operation, std::size_t, true>;
    using write_operation = either_operation<hop::detail::transfer_operation, std::size_t>;
    using gathered_write_operation = either_operation<hop::detail::gather_operation, std::size_t>;

    transport() noexcept = default;
    explicit transport(tcp_stream s) noexcept : m_tcp(std::move(s)) {}
    transport(transport&&) noexcept = default;
    transport& operator=(transport&&) noexcept = default;
    ~transport() = default;

    /// TLS handshakes: the TCP stream becomes the TLS stream's lower layer.
    /// @throws as tls::stream::connect / accept.
    task<void> start_tls_client(const tls::context& ctx, std::string host_name);
    task<void> start_tls_server(const tls::context& ctx);

    /// At least one byte, or 0 at the end of the stream.
    read_operation read_some(std::span<char> buf) {
        if (m_tls) return read_operation(m_tls->read_some(buf));
        return read_operation([&] { return m_tcp.read_some(buf); });
    }
    /// Some of `bytes` (at least one unless empty); returns how many.
    write_operation write_some(std::string_view bytes) {
        if (m_tls) return write_operation(m_tls->write_some(bytes));
        return write_operation([&] { return m_tcp.write_some(bytes); });
    }
    write_operation write_all(std::string_view bytes) {
        if (m_tls) return write_operation(m_tls->write_all(bytes));
        return write_operation([&] { return m_tcp.write_all(bytes); });
    }
    /// All of `parts` (at most 16), in order: over TCP one gathered send
    /// when the socket takes it all; over TLS the small ones as one record.
    /// `parts` (and what it points to) must live until the write ends.
    gathered_write_operation write_all(std::span<const std::string_view> parts) {
        if (m_tls) return gathered_write_operation(write_parts_tls(*m_tls, parts));
        return gathered_write_operation([&] { return m_tcp.write_all(parts); });
    }
    /// Last words from code that cannot await: one non-blocking send of
    /// what fits. Never throws.
    void try_write(std::string_view bytes) noexcept;

    /// Whether a connection between messages can wait for the peer's next
    /// bytes with wait_readable() and then read, at about the cost of the
    /// read alone, holding no buffer meanwhile: true for TCP on a readiness
    /// (epoll) loop. Not over TLS (decrypted bytes may wait inside OpenSSL)
    /// nor on io_uring (two submissions per message instead of one:
    /// measured 20-30% fewer requests/s).
    bool cheap_readiness_wait() const noexcept;
    /// Resumes once the peer sent something (or ended). Only where
    /// cheap_readiness_wait() is true.
    hop::detail::fd_wait_operation wait_readable();
    /// After wait_readable: one non-blocking read into `buf`. Returns the
    /// bytes read (0: the peer ended), or `nothing` if there was nothing
    /// to read after all. Only where cheap_readiness_wait() is true.
    /// @throws std::system_error (a reset...).
    std::size_t try_read_some(std::span<char> buf, std::size_t nothing);

    /// Ends this side's output, so the peer can tell an end from a cut.
    /// TCP: a FIN; returns true, and the caller may go on reading what the
    /// peer still sends (a lingering close). TLS: close_notify, then what
    /// the peer sends is read and dropped until its own close_notify, for
    /// at most `tls_wait`, and the socket is closed; returns false.
    task<bool> end_output(std::chrono::milliseconds tls_wait);
    /// Closes; over TLS with close_notify first (sent without waiting, if
    /// the stream is still open). Never throws.
    task<void> close_gracefully();
    /// Closes at once (over TLS without close_notify).
    void close() noexcept;

    /// The socket's descriptor (-1 if closed).
    int native_handle() const noexcept { return m_tls ? m_tls->lower().native_handle() : m_tcp.native_handle(); }
    void set_nodelay(bool on) { (m_tls ? m_tls->lower() : m_tcp).set_nodelay(on); }
    /// The TLS stream, for what only TLS has (ALPN, resumption); null over
    /// plain TCP.
    const tls::stream* tls() const noexcept { return m_tls.get(); }

private:
    static task<std::size_t> write_parts_tls(tls::stream& s, std::span<const std::string_view> parts);

    tcp_stream m_tcp;                     // empty once TLS took it
    std::unique_ptr<tls::stream> m_tls;  // over m_tcp's socket
};

}  // namespace hop::http::detail
