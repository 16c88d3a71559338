#pragma once
/// @file
/// TLS on OpenSSL 3: hop::tls::context and hop::tls::stream.
///
/// ```cpp
/// auto ctx = hop::tls::context::client();            // system CAs, peer verified
/// auto tcp = co_await hop::tcp_stream::connect("example.org", 443);
/// auto t   = co_await hop::tls::stream::connect(ctx, std::move(tcp), "example.org");
/// co_await t.write_all(std::string_view("GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"));
/// std::size_t n = co_await t.read_some(buf);          // 0: the peer's close_notify
/// co_await t.shutdown();
/// ```
///
/// OpenSSL never touches the socket: it runs over a pair of memory BIOs and
/// the bytes move through the tcp_stream's own operations, so TLS works the
/// same on io_uring and on epoll, under the loop's cancellation and
/// timeouts. Every operation that awaits is a cancellation point. A stream
/// follows tcp_stream's rules (net.hpp): it belongs to one loop; one read
/// and one write may be in flight at the same time (a reader and a writer
/// coroutine); it is not thread-safe otherwise.
///
/// Errors: a failed handshake, a failed verification or a bad record throw
/// hop::tls::error with OpenSSL's reason and the peer; a peer that closes
/// the connection without close_notify makes read_some throw
/// hop::tls::truncated_error (a clean close_notify is read_some() == 0);
/// the socket's own failures stay std::system_error; a stop request throws
/// hop::cancelled_error as everywhere in hop.
///
/// This header does not include OpenSSL.

#include <hop/detail/buffer.hpp>
#include <hop/net.hpp>
#include <hop/task.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

struct ssl_st;  // OpenSSL's SSL

namespace hop::tls {

/// A TLS failure: handshake, verification, a bad record, a protocol alert.
/// what() carries OpenSSL's reason and names the peer, e.g.
/// "hop::tls::stream::connect to localhost (127.0.0.1:4433): certificate
/// verify failed: certificate has expired".
class error : public std::runtime_error {
public:
    /// @param what the message: OpenSSL's reason and the peer.
    /// @param verify_result X509_V_OK (0), or the X509_V_ERR_* code of a
    ///        failed certificate verification.
    error(const std::string& what, long verify_result = 0)
        : std::runtime_error(what), m_verify_result(verify_result) {}
    /// X509_V_OK (0), or why the peer's certificate was refused
    /// (an X509_V_ERR_* code; see `man X509_STORE_CTX_get_error`).
    long verify_result() const noexcept { return m_verify_result; }

private:
    long m_verify_result;
};

/// The peer closed the connection without close_notify: the data may have
/// been cut short by someone other than the peer. Distinct from a clean end
/// of stream (read_some returns 0 after the peer's close_notify).
class truncated_error : public error {
public:
    using error::error;
};

/// Protocol versions (TLS 1.2 is the oldest hop speaks).
enum class version : std::uint8_t { tls1_2, tls1_3 };

/// OpenSSL's SSL_CTX with hop's defaults: TLS 1.2 minimum, no
/// renegotiation, no compression, and Mozilla's "intermediate" cipher
/// profile: TLS 1.2 with ECDHE key exchange (ECDSA or RSA certificates) and
/// AES-GCM or ChaCha20-Poly1305 only (no static-RSA key exchange, no CBC),
/// TLS 1.3 with TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384 and
/// TLS_CHACHA20_POLY1305_SHA256; the server's order wins. set_ciphers /
/// set_ciphersuites widen or narrow that. A cheap handle: copies share one
/// context, and a context may be shared by every stream and thread (set it
/// up first, then use it).
///
/// Clients verify the peer's certificate chain against the system CA store
/// and the host name given to stream::connect; servers offer session
/// tickets and a session cache so clients resume. The client context keeps
/// the last session of each server (host name and port) and resumes it on
/// the next connect (session_reused()).
class context {
public:
    /// A client context: peer verification on, against the system CAs
    /// (OpenSSL's default paths, /etc/ssl/certs on Debian).
    /// @throws hop::tls::error if OpenSSL cannot make one.
    static context client();
    /// A server context with the certificate chain (PEM: leaf first, then
    /// intermediates) and its private key (PEM).
    /// @throws hop::tls::error naming the file and OpenSSL's reason if a
    ///         file is missing or bad, or if the key does not match.
    static context server(const std::string& cert_chain_file, const std::string& private_key_file);

    /// Trusts the CA certificates in `pem_file` as well (a private CA).
    /// @throws hop::tls::error naming the file if it cannot be read.
    void load_ca_file(const std::string& pem_file);
    /// A client certificate (client context) or another chain (server).
    /// @throws hop::tls::error naming the file on failure.
    void load_cert_chain(const std::string& cert_chain_file, const std::string& private_key_file);
    /// Turns peer verification OFF: any certificate, any host name is
    /// accepted. Only for tests and private networks: traffic can then be
    /// read and changed by anyone on the path.
    void insecure_skip_verify();
    /// Whether the peer is verified (true unless insecure_skip_verify()).
    bool verifies_peer() const noexcept;
    /// Lowest and highest protocol version spoken.
    /// @throws std::invalid_argument if min is above max.
    void set_versions(version min, version max = version::tls1_3);
    /// The TLS 1.2 cipher suites, in OpenSSL's cipher-list syntax (`man
    /// openssl-ciphers`), most preferred first, replacing hop's default
    /// (ECDHE with AES-GCM or ChaCha20-Poly1305). E.g. to also speak to old
    /// clients that know only CBC suites:
    /// `ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES")`; or
    /// OpenSSL's own default: `ctx.set_ciphers("DEFAULT")`. TLS 1.3 suites
    /// are set apart, by set_ciphersuites.
    /// @throws std::invalid_argument naming the list if OpenSSL takes no
    ///         suite from it (the suites stay as they were).
    void set_ciphers(std::string_view openssl_list);
    /// The TLS 1.3 cipher suites, ':'-separated names, most preferred first
    /// (e.g. "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256").
    /// @throws std::invalid_argument naming the list if OpenSSL knows none of
    ///         its names (the suites stay as they were).
    void set_ciphersuites(std::string_view openssl_list);
    /// ALPN protocols, most preferred first (e.g. {"http/1.1"}): a client
    /// offers them; a server picks the first of its own that the client
    /// offered (none in common: no ALPN, not an error).
    /// @throws std::invalid_argument for an empty or over-long name.
    void set_alpn(std::vector<std::string> protocols);
    /// Server: session tickets on (default) or off (stateful resumption from
    /// the server's session cache only). Client: ignored.
    void set_session_tickets(bool on);
    /// Client: whether connect() resumes earlier sessions (default on).
    void set_session_resumption(bool on);
    /// True for a context made by context::server.
    bool is_server() const noexcept;

    /// Another handle to the same OpenSSL context (shared, reference-counted).
    context(const context&) = default;
    /// Shares `o`'s OpenSSL context.
    context& operator=(const context&) = default;
    /// Takes `o`'s OpenSSL context.
    context(context&&) noexcept = default;
    /// Takes `o`'s OpenSSL context.
    context& operator=(context&&) noexcept = default;
    ~context();

    struct impl;

private:
    friend class stream;
    explicit context(std::shared_ptr<impl> p) noexcept : m_impl(std::move(p)) {}
    std::shared_ptr<impl> m_impl;
};

/// A TLS connection over a tcp_stream, with tcp_stream's surface.
class stream {
public:
    /// Shakes hands as the client. `host_name` is sent as SNI (unless it is
    /// an IP address) and the certificate is checked against it (DNS name
    /// or IP address) when the context verifies peers.
    /// @throws hop::tls::error: handshake or verification failed (the
    ///         reason and the peer in what()); std::invalid_argument: a
    ///         server context, or a closed tcp stream; std::system_error from
    ///         the socket; cancelled_error on a stop request (nothing leaks).
    static task<stream> connect(context ctx, tcp_stream tcp, std::string host_name);
    /// Shakes hands as the server.
    /// @throws as connect; std::invalid_argument for a client context.
    static task<stream> accept(context ctx, tcp_stream tcp);

    stream() noexcept;
    /// Moves the TLS session and its socket.
    stream(stream&&) noexcept;
    /// Closes this stream, then takes the other's session and socket.
    stream& operator=(stream&&) noexcept;
    ~stream();

    /// Reads what is there (at least 1 byte); 0 once the peer sent
    /// close_notify. Records that carry no data (session tickets, key
    /// updates) are taken in on the way.
    /// @throws truncated_error if the connection ends without
    ///         close_notify; hop::tls::error for a bad record or an alert;
    ///         std::system_error from the socket; std::logic_error if the
    ///         stream is not open.
    template <detail::mutable_byte_buffer B>
    task<std::size_t> read_some(B&& buf) {
        return read_some_impl(std::data(buf), std::size(buf) * sizeof(*std::data(buf)));
    }
    /// Reads exactly size(buf) bytes.
    /// @throws hop::end_of_stream_error (with bytes_read()) at a clean end
    ///         of stream before that; otherwise as read_some.
    template <detail::mutable_byte_buffer B>
    task<std::size_t> read_exact(B&& buf) {
        return read_exact_impl(std::data(buf), std::size(buf) * sizeof(*std::data(buf)));
    }
    /// Encrypts and sends some of `bytes` (at least 1 unless empty);
    /// returns how many. Returns once they are handed to the socket.
    template <detail::byte_buffer B>
    task<std::size_t> write_some(const B& bytes) {
        return write_impl(std::data(bytes), std::size(bytes) * sizeof(*std::data(bytes)), false);
    }
    /// Encrypts and sends all of `bytes`; returns size(bytes).
    template <detail::byte_buffer B>
    task<std::size_t> write_all(const B& bytes) {
        return write_impl(std::data(bytes), std::size(bytes) * sizeof(*std::data(bytes)), true);
    }
    /// Sends close_notify, then waits at most `wait_for_peer` for the
    /// peer's (application data meanwhile is dropped), then closes the
    /// socket. A peer that never answers costs `wait_for_peer`, never more;
    /// pass 0 to send close_notify and close at once. Errors on the way
    /// (a peer that already left) end it quietly: the socket is closed
    /// whatever happens.
    task<void> shutdown(std::chrono::milliseconds wait_for_peer = std::chrono::seconds(1));
    /// Encrypts `bytes` and hands them to the socket without waiting (one
    /// non-blocking send): last words from code that cannot await, such as
    /// an error answer from a connection whose stop was requested. Returns
    /// whether all of it went out (false also when a write is in flight or
    /// the stream is not open). Never throws.
    bool try_write(std::string_view bytes) noexcept;
    /// Closes the socket without close_notify (the peer sees truncation).
    void close() noexcept;
    /// False once closed (or moved from).
    bool is_open() const noexcept;

    /// The negotiated ALPN protocol ("" if none).
    std::string_view alpn_protocol() const noexcept;
    /// Server: the host name the client sent (SNI), "" if none. Client:
    /// the name given to connect.
    std::string_view server_name() const noexcept;
    /// "TLSv1.3" or "TLSv1.2".
    std::string_view protocol_version() const noexcept;
    /// The negotiated cipher suite, e.g. "TLS_AES_256_GCM_SHA384".
    std::string_view cipher() const noexcept;
    /// Whether the handshake resumed an earlier session.
    bool session_reused() const noexcept;
    /// The underlying TCP stream (e.g. for remote_endpoint, set_nodelay).
    /// @throws std::logic_error for an empty (moved-from) stream.
    tcp_stream& lower();
    /// The TCP stream under TLS (for its endpoints and descriptor).
    const tcp_stream& lower() const;
    /// OpenSSL's SSL object (for what hop does not wrap), or nullptr.
    ::ssl_st* native_handle() const noexcept;

    struct impl;

private:
    explicit stream(std::unique_ptr<impl> p) noexcept;
    task<std::size_t> read_some_impl(void* data, std::size_t size);
    task<std::size_t> read_exact_impl(void* data, std::size_t size);
    task<std::size_t> write_impl(const void* data, std::size_t size, bool all);
    std::unique_ptr<impl> m_impl;
};

}  // namespace hop::tls
