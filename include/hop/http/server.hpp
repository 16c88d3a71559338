#pragma once
/// @file
/// hop::http::server — an HTTP/1.0 and HTTP/1.1 server on an io_loop, or
/// on every loop of an io_pool.
///
/// A handler is a coroutine `request& -> task<response>`: it runs on the
/// server's loop and may hop to the CPU pool (`co_await hop::cpu().schedule()`)
/// and back. A second form, `(request&, response_writer&) -> task<void>`,
/// streams its response as it is produced (chunked).
///
/// @code
/// auto srv = hop::http::server::bind(hop::endpoint::parse("127.0.0.1:8080"),
///     [](hop::http::request& req) -> hop::task<hop::http::response> {
///         co_return hop::http::response{.status = 200, .body = "hello " + req.url};
///     },
///     {.max_header_bytes = 16 * 1024, .max_body_bytes = 8 << 20,
///      .header_timeout = 10s, .idle_timeout = 60s, .max_connections = 10000,
///      .shutdown_grace = 10s});
/// srv.local_endpoint();
/// co_await srv.serve();   // until its stop token is requested: then a graceful shutdown
/// @endcode
///
/// On every core, one line more (serve(io_pool&)):
/// @code
/// hop::io_pool loops;                       // one loop per core
/// auto srv = hop::http::server::bind(ep, handler);
/// co_await srv.serve(loops);                // connections spread over the loops
/// @endcode
///
/// What the server does on the wire:
/// - keep-alive (HTTP/1.1 by default, HTTP/1.0 with "Connection: keep-alive"),
///   pipelined requests answered in order, "Connection: close" from either
///   side. Responses to pipelined requests are gathered and go out in one
///   write when the server next waits for input (or past 64 KiB), so a
///   slow handler also holds back the answers to requests pipelined before
///   its own;
/// - request bodies with Content-Length or chunked, read whole (at most
///   max_body_bytes) before the handler runs; "Expect: 100-continue" is
///   answered with "100 Continue" just before the server starts to read the
///   body, and not at all when it refuses the request first (413);
/// - Date and Content-Length are added to every response (Content-Length is
///   the body's size, whatever the handler set); a HEAD request gets the
///   headers a GET would, and no body; 204 and 304 never carry a body;
/// - malformed or ambiguous requests (Content-Length with
///   Transfer-Encoding, two different Content-Lengths, a lone CR, obs-fold,
///   a bad chunk size...) get 400, and so does what RFC 9112 sections 3
///   and 6 require it for: an HTTP/1.1 request without Host, two Host
///   fields or one that is not host[:port]; Transfer-Encoding in HTTP/1.0
///   or not ending with chunked; CONNECT (this is no proxy), and "*" as
///   the target of anything but OPTIONS. A transfer coding other than
///   chunked gets 501, a version other than 1.x 505, a request line over
///   max_header_bytes 414. An absolute-form target
///   ("GET http://host/path") is accepted: the handler sees url "/path"
///   and the target's authority as Host. A head larger than
///   max_header_bytes gets 431; a body larger than max_body_bytes gets 413; a head that has not
///   arrived header_timeout after its first byte, or a body that makes no
///   progress for idle_timeout, gets 408. Each of them closes the connection
///   after a lingering close (what the client still sends is read and
///   dropped until it closes, within lingering_time / lingering_timeout, so
///   the answer is not lost to a reset);
/// - a keep-alive connection with no request for idle_timeout, or a client
///   that does not read its response for idle_timeout, is closed silently;
/// - a handler that throws gets a 500 (logged) and the server goes on; so
///   does a handler that returns a status outside 200-999 (1xx is no final
///   status);
/// - a new connection must send its first request head within
///   header_timeout of its accept (a first byte or not), else it is closed
///   (408 if part of a head came);
/// - at most max_connections connections are served at once (over every
///   loop). At the cap, the connections that wait for a request (idle
///   keep-alive ones, new ones that sent nothing), the longest-waiting
///   first (each loop up to 16 of its own at a time), are closed to admit
///   new ones, as nginx reuses connections (one
///   log line per log_interval, with a count); only if none waits do
///   further ones wait in the listen backlog until one ends (with
///   io_uring up to 64 more may already be accepted by the kernel, and with
///   accept_mode::reuse_port each loop's acceptor may hold one it took as
///   the last slot went to another loop; they wait unserved too);
/// - accept failures that come from the machine (out of descriptors or
///   memory, a connection aborted before it was taken) do not stop the
///   server: it waits (a few ms, doubling up to 1 s) and tries again, and
///   logs one line when such a run of failures starts and one when it ends
///   (an accept succeeds again). On a pool each acceptor does so on its
///   own; a reuse_port acceptor with no connection waiting fails too (the
///   descriptor is taken first), and its run ends at its next connection.
///
/// Upgrade requests (WebSocket, h2c) are answered as plain requests and the
/// connection is then closed.
///
/// HTTP/2 (server_options::http2, on by default; on nghttp2) serves the
/// plain handler: over TLS when ALPN picks "h2", and in cleartext when a
/// connection opens with the HTTP/2 preface (prior knowledge; h2c Upgrade
/// is not offered). Each stream runs the handler in a coroutine of its
/// own, at most max_concurrent_streams per connection (SETTINGS; more are
/// refused with RST_STREAM REFUSED_STREAM). A header list over
/// max_header_bytes gets 431, a body over max_body_bytes 413 (then
/// RST_STREAM NO_ERROR if the client still sends). nghttp2's rapid-reset
/// and CONTINUATION-flood limits are on (GOAWAY and close). idle_timeout
/// runs while no handler does and nothing moves (HEADERS or DATA either
/// way): then GOAWAY, and the close if the client still holds on after
/// another idle_timeout. A graceful shutdown sends GOAWAY with the last
/// stream id taken; the streams in flight finish within shutdown_grace. An
/// HTTP/2 connection counts once against max_connections. With the
/// streaming or body handler the server speaks HTTP/1.x only.

#include <hop/http/message.hpp>
#include <hop/io_pool.hpp>
#include <hop/tls.hpp>
#include <hop/net.hpp>
#include <hop/task.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace hop::http {

/// server::bind's options. Durations are any std::chrono duration
/// (`.header_timeout = 10s`, `= 250ms`).
struct server_options {
    /// The request line plus every header field, in bytes (more: 431).
    /// At least 1.
    std::size_t max_header_bytes = 16 * 1024;
    /// A request body, in bytes, after de-chunking (more: 413). 0 allows
    /// no body.
    std::uint64_t max_body_bytes = 8 << 20;
    /// From a request's first byte until its head is complete (then: 408
    /// and close); for a connection's first request, from its accept (a
    /// connection that sends nothing is closed silently). Must be positive.
    std::chrono::nanoseconds header_timeout = std::chrono::seconds(10);
    /// A keep-alive connection waiting for its next request, a body that
    /// makes no progress, a response the client does not read: closed after
    /// this long. Must be positive.
    std::chrono::nanoseconds idle_timeout = std::chrono::seconds(60);
    /// Connections served at once (by the whole server, over every loop it
    /// serves on); at least 1. At the cap, idle ones are closed to make
    /// room for new ones (see the class).
    std::size_t max_connections = 10000;
    /// Lingering close (nginx's lingering_time and lingering_timeout): after
    /// an answer sent before the request was read to its end (413, 400,
    /// 431...), the server shuts down its sending side and goes on reading
    /// and dropping what the client still sends, until the client closes,
    /// for at most lingering_time in all, each read waiting at most
    /// lingering_timeout; then it closes. Without it a client that sends
    /// its whole body before reading (no "Expect: 100-continue") would get
    /// a reset from our close, and its kernel would drop the answer unread.
    /// Both must be positive.
    std::chrono::nanoseconds lingering_time = std::chrono::seconds(30);
    /// Each read's limit during a lingering close (see lingering_time).
    std::chrono::nanoseconds lingering_timeout = std::chrono::seconds(5);
    /// After serve()'s stop: how long requests in flight may take to
    /// finish before they are cancelled. 0 cancels them at once; not negative.
    std::chrono::nanoseconds shutdown_grace = std::chrono::seconds(10);
    /// The listen backlog (at least 1) and SO_REUSEPORT, as in
    /// hop::listen_options (accept_mode::reuse_port sets SO_REUSEPORT
    /// whatever this says).
    int backlog = 1024;
    /// SO_REUSEPORT on the listener (see backlog).
    bool reuse_port = false;
    /// How serve(io_pool&) spreads connections over the pool's loops:
    /// - least_loaded: one listener and one acceptor; each connection goes
    ///   to the loop serving the fewest of this server's connections at
    ///   that moment (among equals, in turn). Balanced whatever the
    ///   clients' addresses; a connection served on another loop than the
    ///   acceptor's costs one hand-off between threads.
    /// - reuse_port: bind() sets SO_REUSEPORT and serve(io_pool&) binds one
    ///   more listener per further loop on the same port; each loop accepts
    ///   its own connections and the kernel spreads them by a hash of
    ///   their addresses (no hand-off, no balancing: a loop keeps what it
    ///   gets). Another process of the same user may then bind the port
    ///   too.
    /// serve() on one loop ignores it (apart from SO_REUSEPORT).
    accept_mode accept = accept_mode::least_loaded;
    /// The Server header's value; empty (the default): no Server header.
    std::string server_header{};
    /// Where the server's log lines go (a handler that threw, a bad
    /// status, accept failures, failed TLS handshakes, idle connections
    /// closed at max_connections); each call is one line without its
    /// newline. Called on the loop the line is about (any of a pool's
    /// loops, with serve(io_pool&)); calls never overlap. Empty (the
    /// default): stderr.
    std::function<void(std::string_view)> log{};
    /// The log budget: what a peer can trigger (failed TLS handshakes,
    /// idle connections closed at max_connections) is logged once per
    /// log_interval per kind; the rest are counted and the count logged
    /// when the interval ends ("... and 1,999 more in the last 10 s"), or
    /// when serve() ends. A client that goes away mid-response is not
    /// logged at all. Must be positive.
    std::chrono::nanoseconds log_interval = std::chrono::seconds(10);
    /// Serve https: each accepted connection shakes hands with this
    /// (server) context before its first request; a failed handshake closes
    /// the connection (and is logged). Empty (the default): plain HTTP.
    std::optional<tls::context> tls{};
    /// HTTP/2 (on nghttp2) besides HTTP/1.1, with the plain handler
    /// (`request& -> task<response>`): over TLS the context offers ALPN
    /// "h2" and "http/1.1"; in cleartext a connection that opens with the
    /// HTTP/2 preface (prior knowledge) is served as HTTP/2. Off, or with
    /// another kind of handler: HTTP/1.x only.
    bool http2 = true;
    /// HTTP/2: SETTINGS_MAX_CONCURRENT_STREAMS, the streams a client may
    /// have open at once on one connection. At least 1.
    std::uint32_t max_concurrent_streams = 100;
};

/// What a server has done so far; see server::stats().
/// With serve(io_pool&), each figure is the sum over the loops.
struct server_stats {
    std::size_t connections = 0;        ///< open now
    std::uint64_t accepted = 0;         ///< connections accepted in all
    std::uint64_t requests = 0;         ///< responses sent (error answers included)
    std::uint64_t accept_failures = 0;  ///< accept calls that failed and were retried
};

namespace detail {
class server_state;
class server_shard;
class server_connection;
}  // namespace detail

/// A streamed response, for handlers of the form
/// `(request&, response_writer&) -> task<void>`. Each write() is sent at
/// once (as one chunk), so a client sees the body as it is produced.
///
/// Framing: if the headers given to start() hold a Content-Length, the head
/// goes out at start() and exactly that many bytes are sent as they are
/// (no chunking; an HTTP/1.0 client that asked for keep-alive keeps its
/// connection). Without one, the head waits for the first non-empty
/// write(): then it is "Transfer-Encoding: chunked" for an HTTP/1.1 client,
/// and for an HTTP/1.0 client the bytes as they are, the connection
/// closing after the last; a response that finishes before any byte was
/// written gets "Content-Length: 0" instead, no chunking. A HEAD request,
/// 204 and 304 get the head only (at start()): writes are dropped.
///
/// When the handler returns, finish() is called for it if it did not. If
/// it throws before the head went out the client gets a 500; after, the
/// connection is closed (the client sees a cut body) and the failure
/// logged.
///
/// Every member is for the handler's coroutine, on any executor; the
/// awaiting coroutine resumes on its own executor. Each await is a
/// cancellation point (a server shutdown past its grace): cancelled_error.
///
/// @code
/// auto srv = hop::http::server::bind(ep,
///     [](hop::http::request& req, hop::http::response_writer& out) -> hop::task<> {
///         hop::http::headers fields{{"Content-Type", "text/plain"}};
///         co_await out.start(200, std::move(fields));
///         for (int i = 0; i < 3; ++i) co_await out.write("tick\n");
///     });
/// @endcode
class response_writer {
public:
    response_writer(const response_writer&) = delete;
    response_writer& operator=(const response_writer&) = delete;

    /// Sets the head, and sends it if its length is known (see the class;
    /// otherwise it goes with the first write or finish). Date (and Server)
    /// are added; Transfer-Encoding and Connection are the server's to set
    /// and are replaced.
    /// @throws std::invalid_argument for a status outside 200-999, or a
    ///         Content-Length that is not a number.
    /// @throws std::logic_error if the head was sent already.
    /// @throws std::system_error if the client is gone; cancelled_error.
    task<void> start(int status = 200, headers fields = {});
    /// Sends `data` (nothing for an empty view); start() first if the head
    /// has not gone out (status 200, no fields).
    /// @throws std::logic_error after finish(), or past the Content-Length
    ///         given to start().
    /// @throws std::system_error if the client is gone; cancelled_error.
    task<void> write(std::string_view data);
    /// Sends the head now if start() is holding it back for the first byte
    /// (then the body is chunked, or for an HTTP/1.0 client runs until the
    /// close): for a stream whose first byte may be long in coming (server-sent
    /// events), so the client sees the status at once. start() first if it
    /// was not called (status 200, no fields). Does nothing once the head is
    /// out.
    /// @throws std::system_error if the client is gone; cancelled_error.
    task<void> flush();
    /// Ends the body (the last chunk). Calling it again does nothing.
    /// @throws std::logic_error if fewer bytes than start()'s
    ///         Content-Length were written (the connection will be closed).
    /// @throws std::system_error if the client is gone; cancelled_error.
    task<void> finish();

    /// True once start() was called.
    bool started() const noexcept { return m_started; }
    /// True once the body has been ended (finish()).
    bool finished() const noexcept { return m_finished; }

private:
    friend class detail::server_connection;
    explicit response_writer(detail::server_connection& c) noexcept : m_conn(&c) {}

    enum class framing : std::uint8_t { chunked, length, until_close, none };
    detail::server_connection* m_conn;
    bool m_started = false;
    bool m_finished = false;
    // start() without a length: the head waits here for the first byte
    // (chunked / until close) or finish() (Content-Length: 0).
    bool m_head_pending = false;
    int m_pending_status = 200;
    headers m_pending_fields;
    framing m_framing = framing::chunked;
    std::uint64_t m_remaining = 0;  // framing::length: bytes still owed
};

/// The body of a request as it arrives, for handlers of the form
/// `(request&, request_body&) -> task<response>`: the handler is called
/// once the head is in (request::body is empty) and reads the body itself,
/// so an upload of any size is handled in the memory of one read.
///
/// The first read sends "100 Continue" to a client that asked for it
/// (`Expect: 100-continue`). max_body_bytes still holds: a body over it is
/// refused with 413 (at once from its Content-Length, before the handler
/// runs; or when a chunked body passes it, by the server, whatever the
/// handler then returns). A handler that answers without reading the
/// whole body: what is left is read and dropped if it is short (up to
/// 64 KiB), else the connection closes after the answer (with a lingering
/// close, so the answer is not lost to a reset).
///
/// Every member is for the handler's coroutine, on any executor; the
/// awaiting coroutine resumes on its own executor. Each wait for the
/// client is bounded by idle_timeout, and is a cancellation point.
///
/// @code
/// auto srv = hop::http::server::bind(ep,
///     [](hop::http::request& req, hop::http::request_body& body) -> hop::task<hop::http::response> {
///         std::array<char, 16384> buf;
///         std::uint64_t total = 0;
///         while (std::size_t n = co_await body.read_some(buf)) total += n;
///         co_return hop::http::response{.status = 200, .body = std::to_string(total)};
///     });
/// @endcode
class request_body {
public:
    request_body(const request_body&) = delete;
    request_body& operator=(const request_body&) = delete;

    /// Reads the next bytes of the body into `buf` (at least one unless
    /// `buf` is empty); 0 at the body's end.
    /// @throws protocol_error for a body that breaks HTTP's framing or
    ///         passes max_body_bytes (the server answers 400 or 413 itself,
    ///         then closes); std::system_error if the client is gone;
    ///         cancelled_error past idle_timeout without a byte (the
    ///         server answers 408 and closes) or on a shutdown past its
    ///         grace.
    task<std::size_t> read_some(std::span<char> buf);
    /// The rest of the body.
    /// @throws as read_some.
    task<std::string> read_all();
    /// Whether the body has been read to its end.
    bool done() const noexcept { return m_done; }

private:
    friend class detail::server_connection;
    explicit request_body(detail::server_connection& c) noexcept : m_conn(&c) {}

    detail::server_connection* m_conn;
    std::string_view m_pending;  // a piece of body not handed out yet (in the connection's input)
    bool m_done = false;
    int m_refused = 0;           // the status the server answers instead (400, 413)
};

/// An HTTP/1.x server on one io_loop: the loop of the coroutine that
/// awaits serve() (hop::default_loop() for one on a thread that runs none);
/// its listener, connections and handlers run there. Or on every loop of an
/// io_pool (serve(io_pool&)): each connection is served, and its handlers
/// run, on one of the pool's loops, so the handler is called on several
/// threads at once and what it shares must be thread-safe.
///
/// Lifetime: the handler is stored in the server's state, which lives as
/// long as the server object or any coroutine it started (serve(), a
/// connection, a handler) — a capturing lambda is safe. Destroying the
/// server requests the same graceful shutdown as stopping serve() (on any
/// thread); serve() still runs it to its end.
class server {
public:
    /// The plain handler: the whole request in, the whole response out.
    using handler = std::function<task<response>(request&)>;
    /// The streaming handler; see response_writer.
    using stream_handler = std::function<task<void>(request&, response_writer&)>;
    /// The handler that reads the request body as it arrives; see request_body.
    using body_handler = std::function<task<response>(request&, request_body&)>;

    /// An empty server (valid() is false).
    server() noexcept = default;
    /// Moves the server; the other is invalid afterwards.
    server(server&&) noexcept = default;
    /// Requests this server's shutdown, then takes the other's.
    server& operator=(server&& other) noexcept;
    ~server();

    /// Binds and listens on `local` (port 0: the kernel picks one, see
    /// local_endpoint()). Connections wait in the backlog until serve()
    /// runs; bind may be called on any thread. `h` is a copyable callable taking
    /// `request&` and returning `task<response>`, taking
    /// `(request&, response_writer&)` and returning `task<void>`, or taking
    /// `(request&, request_body&)` and returning `task<response>`.
    /// @throws std::invalid_argument naming the value: an empty handler,
    ///         max_connections 0, max_header_bytes 0, a header_timeout,
    ///         idle_timeout, lingering_time or lingering_timeout that is not
    ///         positive, a negative shutdown_grace,
    ///         a backlog below 1.
    /// @throws std::system_error (EADDRINUSE, EACCES...) naming the endpoint.
    template <class F>
    static server bind(const endpoint& local, F&& h, server_options options = {}) {
        using fn = std::decay_t<F>;
        if constexpr (std::is_invocable_r_v<task<void>, fn&, request&, response_writer&>) {
            return bind_streaming(local, stream_handler(std::forward<F>(h)), std::move(options));
        } else if constexpr (std::is_invocable_r_v<task<response>, fn&, request&, request_body&>) {
            return bind_body(local, body_handler(std::forward<F>(h)), std::move(options));
        } else {
            static_assert(std::is_invocable_r_v<task<response>, fn&, request&>,
                          "hop::http::server::bind: the handler must be callable as "
                          "task<response>(request&), task<void>(request&, response_writer&) or "
                          "task<response>(request&, request_body&)");
            return bind_plain(local, handler(std::forward<F>(h)), std::move(options));
        }
    }
    /// bind() with a plain handler (what bind() calls). @throws as bind().
    static server bind_plain(const endpoint& local, handler h, server_options options = {});
    /// bind() with a streaming handler. @throws as bind().
    static server bind_streaming(const endpoint& local, stream_handler h, server_options options = {});
    /// bind() with a handler that reads the body itself. @throws as bind().
    static server bind_body(const endpoint& local, body_handler h, server_options options = {});

    /// False for a moved-from server.
    bool valid() const noexcept { return m_state != nullptr; }

    /// Where the server listens (the port the kernel picked for port 0).
    /// @throws std::logic_error for an empty server.
    endpoint local_endpoint() const;

    /// Accepts and serves connections until the awaiting coroutine's stop
    /// token is requested (`loop.spawn(srv.serve())` then `future.cancel()`,
    /// a task_group's cancel...) or shutdown() is called. Then it shuts
    /// down gracefully: stops accepting (the listener closes: new connects
    /// are refused), closes idle connections at once, lets requests in
    /// flight finish within shutdown_grace (their responses say
    /// "Connection: close"), cancels the handlers still running after
    /// that, waits for every connection to end, and **returns normally** —
    /// a stopped serve() does not throw cancelled_error. A handler that
    /// ignores cancellation is waited for.
    ///
    /// The server's work runs on the loop of the awaiting coroutine (see
    /// the class); the caller resumes on its own executor when serve()
    /// returns. serve() can run once per server.
    /// @throws std::logic_error for an empty server or a second serve().
    /// @throws std::system_error for an accept failure that is not
    ///         transient (EBADF, EINVAL...), after the same graceful shutdown.
    task<void> serve();

    /// serve() on every loop of `loops`: each loop serves its own share of
    /// the connections (its own connection list, deadlines and counters;
    /// nothing is locked per request), spread as options.accept says, and
    /// runs their handlers. With accept_mode::least_loaded the acceptor
    /// runs on the pool's loop that runs the awaiting coroutine, or on
    /// loops[0] if it runs none of them.
    ///
    /// Runs until the awaiting coroutine's stop token is requested,
    /// shutdown() is called, or the pool is stopped (or destroyed); then
    /// the graceful shutdown serve() describes happens on every loop: all
    /// listeners close first, then each loop closes its idle connections,
    /// gives its requests in flight shutdown_grace, cancels the rest and
    /// waits for them; serve(loops) returns normally once every loop is
    /// done. Each loop's part is a task of the pool (io_pool::spawn_on), so
    /// a pool that stops waits for it.
    ///
    /// The caller resumes on its own executor (a pool loop or another).
    /// serve() and serve(io_pool&) together can run once per server.
    /// @throws std::logic_error for an empty server or a second serve.
    /// @throws hop::executor_shutdown_error if `loops` is stopping.
    /// @throws std::system_error if a reuse_port listener cannot be bound
    ///         (naming the endpoint), or for an accept failure that is not
    ///         transient, after the graceful shutdown.
    ///
    /// @code
    /// hop::io_pool loops{4};
    /// auto f = loops.spawn_on(0, srv.serve(loops));  // f.cancel(): graceful shutdown
    /// @endcode
    task<void> serve(io_pool& loops);

    /// Requests the graceful shutdown that stopping serve() does (serve()
    /// then returns; if serve() has not started yet it will return at once
    /// after it starts). Thread-safe; calling it again does nothing.
    void shutdown() noexcept;

    /// Counters (thread-safe reads; the figures are each exact but not
    /// taken at one instant).
    server_stats stats() const noexcept;

private:
    explicit server(std::shared_ptr<detail::server_state> s) noexcept : m_state(std::move(s)) {}
    std::shared_ptr<detail::server_state> m_state;
};

}  // namespace hop::http
