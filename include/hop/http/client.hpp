#pragma once
/// @file
/// hop::http::client — an HTTP/1.1 client with a connection pool, like
/// Python's requests.Session or Go's http.Client: keep-alive reuse, caps on
/// connections, timeouts of their own types, redirects, gzip/deflate, and
/// responses read whole (get, fetch) or streamed (open).
///
/// @code
/// hop::http::client http{{.max_connections = 100, .read_timeout = 5s}};
/// hop::http::response r = co_await http.get("http://127.0.0.1:8080/items/1");
/// if (r.status == 200) use(r.body);
/// auto all = co_await hop::map([&](std::string u) { return hop::http::fetch(http, u); }, urls,
///                              {.max_concurrency = 256});
/// @endcode

#include <hop/http/message.hpp>
#include <hop/tls.hpp>
#include <hop/task.hpp>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>

namespace hop::http {

/// How a client behaves. Every duration of 0 means "no limit".
struct client_options {
    /// Connections open at once, to every host together: connecting, in
    /// use and idle ones. A request that finds none free waits (FIFO) for
    /// one; an idle connection to another host is closed to make room.
    std::size_t max_connections = 100;
    /// Connections open at once to one host:port; 0 for no cap but
    /// max_connections.
    std::size_t max_connections_per_host = 0;
    /// Longest wait for a TCP connection (name lookup included):
    /// connect_timeout.
    std::chrono::milliseconds connect_timeout = std::chrono::seconds(10);
    /// Longest wait for any progress while a request is sent and its
    /// response read (a byte in, or bytes out): read_timeout.
    std::chrono::milliseconds read_timeout = std::chrono::seconds(30);
    /// Longest wait for a free connection when max_connections (or the
    /// per-host cap) is reached: pool_timeout.
    std::chrono::milliseconds pool_timeout{0};
    /// Longest time for the whole request: pool wait, connect, redirects
    /// and the body (for open(): until the body has been read):
    /// hop::timeout_error.
    std::chrono::milliseconds total_timeout{0};
    /// An idle kept-alive connection is closed after this long; 0 keeps
    /// idle connections until the server closes them or their loop ends.
    std::chrono::milliseconds idle_timeout = std::chrono::seconds(30);
    /// Redirects followed for one request; one more is a redirect_error.
    int max_redirects = 10;
    /// Decode gzip, deflate, br (brotli) and zstd bodies (and ask for them
    /// with "Accept-Encoding: gzip, deflate, br, zstd" unless the request
    /// sets its own). A body in another coding, or in several, is left as
    /// it came, with its Content-Encoding.
    bool decompress = true;
    /// The largest body get(), fetch() and response_stream::read_all()
    /// read, as sent and after decoding; more is a protocol_error.
    std::size_t max_body_bytes = std::size_t{64} << 20;
    /// The largest response head (status line and fields).
    std::size_t max_header_bytes = 64 * 1024;
    /// Follow 301, 302, 303, 307 and 308; false returns them as responses.
    bool follow_redirects = true;
    /// The User-Agent sent unless the request sets one ("" sends none).
    std::string user_agent = "hop/0.1";
    /// The TLS context for https:// URLs. Empty (the default): a client
    /// context made on first use (system CAs, peers verified, ALPN
    /// http/1.1). Give one to trust a private CA (context::load_ca_file) or
    /// to present a client certificate. Sessions are resumed per host:port.
    std::optional<tls::context> tls{};
    /// An HTTP proxy for every request, "http://[user:password@]host:port"
    /// (credentials percent-decoded, sent as Proxy-Authorization: Basic).
    /// http:// URLs are sent to it in absolute form; https:// ones through
    /// a CONNECT tunnel, TLS running inside it to the origin (whose
    /// certificate and name are checked, not the proxy's). Connections to
    /// the proxy are pooled by route: one for http:// to any origin, one
    /// tunnel per https:// origin (max_connections_per_host counts them so).
    /// "" (the default): no proxy unless trust_env finds one.
    std::string proxy{};
    /// Hosts reached directly despite `proxy`, in NO_PROXY's syntax (curl's):
    /// "example.org,.internal,10.0.0.0/8,[::1],host:8080", or "*" for all.
    /// Each name matches itself and its subdomains, with or without a
    /// leading dot. Loopback is not special: list it to bypass the proxy.
    std::string no_proxy{};
    /// When `proxy` is "": take the proxies from the environment, read when
    /// the client is made: http_proxy / HTTP_PROXY for http:// URLs,
    /// https_proxy / HTTPS_PROXY for https://, all_proxy / ALL_PROXY for
    /// both, no_proxy / NO_PROXY (or `no_proxy` if set) for the exceptions;
    /// lower-case forms win, as in curl and Python. HTTP_PROXY is ignored
    /// when REQUEST_METHOD is set (a CGI program's "Proxy:" request field).
    bool trust_env = false;
};

/// A proxy refused a request: a 407 (Proxy Authentication Required), a
/// CONNECT answered with anything but 2xx, or a proxy that closed the
/// connection before it answered a CONNECT. The message names the proxy
/// (never its password), the target and the status.
class proxy_error : public std::runtime_error {
public:
    /// `status`: the proxy's answer, 0 if it gave none.
    proxy_error(const std::string& what, int status) : std::runtime_error(what), m_status(status) {}
    /// The proxy's status; 0 if it closed without answering.
    int status() const noexcept { return m_status; }

private:
    int m_status;
};

/// A snapshot of a client's pool, for tests and monitoring.
struct client_stats {
    std::size_t open = 0;        ///< connections holding a slot (connecting, in use, idle)
    std::size_t idle = 0;        ///< kept-alive connections waiting for a request
    std::size_t waiting = 0;     ///< requests waiting for a slot
    std::uint64_t connects = 0;  ///< connections ever made
    std::uint64_t reuses = 0;    ///< requests sent on a connection that had carried one before
    std::uint64_t retries = 0;   ///< idempotent requests resent after a stale keep-alive connection
    std::uint64_t tls_resumed = 0;  ///< https connections whose TLS session was resumed
};

namespace detail {
class client_state;
struct stream_state;
}  // namespace detail

/// A response whose body has not been read yet (client::open). status and
/// headers are there; the body comes with read_some until it returns 0.
///
/// The connection goes back to the pool when the body has been read to its
/// end. Destroyed or closed earlier, the connection is closed — unless the
/// rest of the body had already arrived whole in its buffer, in which case
/// it is consumed there and the connection is kept (no waiting, no extra
/// read). Use a stream on the loop (or the thread, for hop::default_loop())
/// it was opened on; do not move it while a read is in flight, and do not
/// keep it past the end of its loop (its connection belongs to that loop).
///
/// @code
/// hop::http::response_stream s = co_await http.open(u);
/// char buf[16384];
/// while (std::size_t n = co_await s.read_some(buf)) out.write(buf, n);
/// @endcode
class response_stream {
public:
    /// The final response's status (after redirects).
    int status = 0;
    /// The final response's fields. When the body is decoded (client_options::decompress),
    /// Content-Encoding and Content-Length are removed: they describe the
    /// bytes on the wire, not the ones read_some gives.
    http::headers headers;

    /// An empty stream: done() is true and read_some returns 0.
    response_stream() noexcept;
    /// Moves the response and its connection.
    response_stream(response_stream&&) noexcept;
    /// close()s this stream, then takes the other's response and connection.
    response_stream& operator=(response_stream&&) noexcept;
    response_stream(const response_stream&) = delete;
    response_stream& operator=(const response_stream&) = delete;
    /// close().
    ~response_stream();

    /// `co_await s.read_some(buf)`: the next bytes of the (decoded) body,
    /// at least one; 0 once it has ended (and for an empty buffer).
    /// Resumes the caller on its own executor. A cancellation point: a stop
    /// request closes the connection, the read throws cancelled_error and
    /// so does every later read.
    /// A stream has no size limit (max_body_bytes is for get, fetch and
    /// read_all).
    /// @throws read_timeout, hop::timeout_error (total_timeout, which runs
    ///         until the body has been read, redirects included);
    ///         protocol_error for a malformed or badly encoded body, and for
    ///         a connection that ends before the body's framing (its
    ///         Content-Length or last chunk) says the body ended;
    ///         std::system_error when the connection fails;
    ///         std::logic_error when used from another loop than its own.
    task<std::size_t> read_some(std::span<char> buf);
    /// As read_some(std::span<char>).
    task<std::size_t> read_some(std::span<std::byte> buf);
    /// Reads the rest of the body (at most client_options::max_body_bytes).
    /// @throws as read_some; protocol_error past max_body_bytes.
    task<std::string> read_all();

    /// True once the body has ended (or the stream is empty or closed).
    bool done() const noexcept;
    /// Ends the stream now: the connection is closed (or kept, if the rest
    /// of the body is already in its buffer). Idempotent.
    void close() noexcept;
    /// The URL the response came from (the last one after redirects).
    const std::string& url() const noexcept;

private:
    friend struct detail::stream_state;
    explicit response_stream(std::unique_ptr<detail::stream_state> s) noexcept;
    std::unique_ptr<detail::stream_state> m_state;
};

/// An HTTP/1.1 client over a pool of kept-alive connections. One per
/// program is typical; it is thread-safe: coroutines on several loops and
/// threads may use one client at once. A connection is only used on the
/// loop it was made on (hop::current_loop(), or hop::default_loop() for a
/// request awaited on a thread that runs no loop); idle connections are
/// kept per loop and closed when their loop is destroyed.
///
/// Every request function returns a task that runs when awaited; the
/// caller resumes on its own executor. Requests are cancellation points:
/// a stop request (a stop token, hop::with_timeout, a when_any loser)
/// closes the request's connection, frees its slot for the next waiter,
/// and throws cancelled_error. A status of 400 or more is a response, not
/// an exception. The client must outlive the requests made with it.
///
/// URLs are taken as browsers and Python's requests take them: credentials
/// (`http://user:password@host/`, percent-decoded) are sent as
/// "Authorization: Basic" unless the request sets its own Authorization,
/// and, like that field, never to another origin after a redirect; a
/// space, a byte of 0x80 or more (UTF-8) and "<>\^`{|} in the path and
/// query are percent-encoded (a '%' not starting an escape as %25),
/// escapes already there are kept. A control character is still refused,
/// naming the byte; a non-ASCII host is refused (no IDNA). A redirect's
/// Location is taken the same way.
///
/// What the request functions throw:
/// - std::invalid_argument (at once, before any IO) for a bad URL (or a
///   scheme other than http:// and https://), a method that is not a
///   token, CR/LF/NUL in a field, a Content-Length that does not match the
///   body, and a Transfer-Encoding other than chunked; URLs and values
///   quoted in any error message are cut to 200 bytes (and end in "…");
/// - hop::tls::error for an https:// handshake or certificate verification
///   that fails (client_options::tls);
/// - connect_timeout, read_timeout, pool_timeout (each a hop::timeout_error)
///   and hop::timeout_error for total_timeout, each naming its value and
///   the URL;
/// - std::system_error for a name that does not resolve and a refused or
///   reset connection;
/// - protocol_error for a malformed response, a body over max_body_bytes,
///   a connection closed before a response, and a POST / PATCH whose
///   kept-alive connection the server had closed (idempotent methods are
///   resent once on a new connection instead);
/// - redirect_error after max_redirects redirects, naming the count and
///   the last URL;
/// - proxy_error when a proxy refuses (client_options::proxy);
/// - cancelled_error when stopped.
class client {
public:
    /// A client with the default options.
    client();
    /// @throws std::invalid_argument naming the bad value: max_connections
    ///         0, a negative duration, max_redirects < 0, max_body_bytes or
    ///         max_header_bytes 0, CR/LF/NUL in user_agent, a bad proxy URL
    ///         or no_proxy entry (from the options or, with trust_env, the
    ///         environment: the variable is named).
    explicit client(client_options options);
    /// Closes the idle connections. Requests still running keep theirs
    /// until they end (then it is closed, not pooled).
    ~client();
    client(const client&) = delete;
    client& operator=(const client&) = delete;

    /// `co_await http.get(url)`: GET `url` and read the whole body.
    /// @throws as described for the class.
    task<response> get(std::string url);
    /// `co_await http.get(url, fields)`: GET `url` with request header
    /// `fields` (Accept, Authorization...). Build the fields first (a named
    /// hop::http::headers): see "Writing requests with GCC 12" below.
    /// @throws as described for the class.
    task<response> get(std::string url, http::headers fields);
    /// `co_await http.post(url, body)`: POST `body` (with Content-Length) and
    /// read the whole response; `fields` for Content-Type and others.
    /// @code
    /// hop::http::response r = co_await http.post(u, json);
    /// hop::http::headers h{{"Content-Type", "application/json"}};
    /// hop::http::response t = co_await http.post(u, json, std::move(h));
    /// @endcode
    /// @throws as described for the class.
    task<response> post(std::string url, std::string body, http::headers fields = {});
    /// Sends `req` (method, absolute URL, fields, body) and reads the whole
    /// response. A body is sent with Content-Length, or chunked when the
    /// request has "Transfer-Encoding: chunked". Host, User-Agent,
    /// Accept-Encoding and Content-Length are added unless `req` sets them.
    /// A decoded body's response has no Content-Encoding or Content-Length
    /// (they described the wire); a chunked body's trailer fields are
    /// appended to the response's headers.
    ///
    /// Redirects (client_options::follow_redirects): 303, and 301 / 302
    /// after a POST, continue as GET without a body; 307 and 308 keep the
    /// method and body. Authorization, Cookie and Proxy-Authorization (and
    /// a Host the request set) are dropped when a redirect leaves the
    /// origin (scheme, host and port).
    ///
    /// A request sent on a kept-alive connection that the server had
    /// already closed (no byte of response came back) is sent once more on
    /// a new connection when its method is idempotent (GET, HEAD, PUT,
    /// DELETE, OPTIONS, TRACE); another method fails with a message saying
    /// so (protocol_error, or std::system_error for a reset).
    /// @code
    /// hop::http::request req{.method = "PUT", .url = u, .headers = {{"Content-Type", "application/json"}},
    ///                        .body = json};
    /// hop::http::response r = co_await http.fetch(std::move(req));
    /// @endcode
    ///
    /// Writing requests with GCC 12: g++ 12.2 (Debian 12's compiler)
    /// destroys a temporary request built inside a `co_await` operand twice,
    /// so `co_await http.fetch({.method = "POST", .url = u})` (or
    /// `fetch(hop::http::request{...})`) crashes with a double free when
    /// built with it; a braced hop::http::headers list there does not
    /// compile. Name the request (as above) or the headers first, or use
    /// get(url), get(url, fields), post(url, body, fields) and open(url),
    /// which are safe inline. clang has no such bug.
    /// @throws as described for the class.
    task<response> fetch(request req);
    /// As fetch, but returns once the final response's head has arrived:
    /// read the body from the stream.
    /// @throws as described for the class.
    task<response_stream> open(request req);
    /// `co_await http.open(url)`: open(request) for a GET of `url` (a
    /// std::string, string_view or C string; a template so that
    /// `open({.url = u})` still means open(request)).
    /// @throws as described for the class.
    template <class Url>
        requires std::constructible_from<std::string, Url&&>
    task<response_stream> open(Url&& url) {
        return open_url(std::string(std::forward<Url>(url)));
    }

    /// The options the client was made with.
    const client_options& options() const noexcept;
    /// The pool now (a snapshot). Thread-safe.
    client_stats stats() const;

private:
    task<response_stream> open_url(std::string url);

    std::shared_ptr<detail::client_state> m_state;
};

/// `fetch(http, url)`: http.get(url), for hop::map and friends.
inline task<response> fetch(client& c, std::string url) { return c.get(std::move(url)); }
/// `fetch(http, req)`: http.fetch(req).
inline task<response> fetch(client& c, request req) { return c.fetch(std::move(req)); }

}  // namespace hop::http
