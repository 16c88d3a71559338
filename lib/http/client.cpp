// hop::http::client: one request from the pool wait to the end of its body.
// The pool, the timeouts' agent and the name cache are in client_pool.cpp;
// every byte on the wire goes through the codec (codec.hpp).
//
// A request's life (stream_state):
//   prepare (validate, at the call) -> begin (loop, agent, total timeout)
//   -> acquire (idle connection for this loop and host, or a slot: connect)
//   -> send -> read the head -> [redirect: skip the body, go round]
//   -> body (get/fetch: whole; open: the response_stream's reads)
//   -> finish_message: the connection back to the pool, or closed; the
//      request is done (a redirect's response only releases its connection:
//      release_connection).
// Every wait runs under the request's own stop source (stop_scope), which
// the caller's token and the agent's timeouts both stop; a cancelled_error
// then becomes the timeout's own error if a timeout fired.

#include <hop/http/client.hpp>

#include "../error_text.hpp"
#include "../metrics_impl.hpp"
#include "body_decoder.hpp"
#include "client_pool.hpp"
#include "client_url.hpp"
#include "codec.hpp"
#include "grammar.hpp"
#include "proxy.hpp"

#include <hop/detail/assert.hpp>
#include <hop/file.hpp>
#include <hop/io_loop.hpp>
#include <hop/net.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <system_error>

namespace hop::http {

namespace detail {

namespace {

constexpr std::size_t read_size = 16 * 1024;          // a response's reads, at most
constexpr std::size_t inline_body_limit = 64 * 1024;
constexpr std::size_t upload_piece = 64 * 1024;  // a streamed body's writes  // larger bodies are written on their own
constexpr std::uint64_t redirect_body_limit = 64 * 1024;  // more than this of a redirect's body: close instead
// An idempotent request takes a connection idle for less than this without
// checking it is still open (servers close idle connections after seconds;
// a request that meets one closed anyway is sent again).
constexpr auto unchecked_idle = std::chrono::milliseconds(100);

// ---- validation ---------------------------------------------------------------

bool has_ctl_breaks(std::string_view s) noexcept {
    return s.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos;
}

// At most this many bytes of a URL or value quoted in an error message.
constexpr std::size_t shown_bytes = 200;

// `s` for an error message: control characters escaped, text longer than
// shown_bytes cut (at a UTF-8 character's start) and marked with "…".
std::string shown(std::string_view s) {
    std::string_view head = s;
    if (s.size() > shown_bytes) {
        std::size_t cut = shown_bytes;
        while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xc0) == 0x80) --cut;
        head = s.substr(0, cut);
    }
    std::string out;
    for (char c : head) {
        switch (c) {
            case '\r': out += "\\r"; break;
            case '\n': out += "\\n"; break;
            case '\0': out += "\\0"; break;
            default:
                if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
                    static const char hex[] = "0123456789abcdef";
                    out += "\\x";
                    out += hex[(static_cast<unsigned char>(c) >> 4) & 0xf];
                    out += hex[static_cast<unsigned char>(c) & 0xf];
                } else {
                    out += c;
                }
        }
    }
    if (head.size() < s.size()) out += "\u2026";  // …
    return out;
}

std::string_view trim(std::string_view s) noexcept {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

std::string format_duration(std::chrono::milliseconds d) {
    const auto ms = d.count();
    if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
    return std::to_string(ms) + "ms";
}

void check_duration(const char* name, std::chrono::milliseconds d) {
    if (d.count() < 0) {
        throw std::invalid_argument(std::string("hop::http::client: ") + name + " " + std::to_string(d.count()) +
                                    "ms is negative (0 means no timeout)");
    }
}

client_options validated(client_options o) {
    if (o.tls && o.tls->is_server()) {
        throw std::invalid_argument(
            "hop::http::client: client_options::tls is a server context: use hop::tls::context::client()");
    }
    if (o.max_connections == 0) {
        throw std::invalid_argument("hop::http::client: max_connections 0 is not allowed (it must be at least 1)");
    }
    check_duration("connect_timeout", o.connect_timeout);
    check_duration("read_timeout", o.read_timeout);
    check_duration("pool_timeout", o.pool_timeout);
    check_duration("total_timeout", o.total_timeout);
    check_duration("idle_timeout", o.idle_timeout);
    if (o.max_redirects < 0) {
        throw std::invalid_argument("hop::http::client: max_redirects " + std::to_string(o.max_redirects) +
                                    " is negative");
    }
    if (o.max_body_bytes == 0) {
        throw std::invalid_argument("hop::http::client: max_body_bytes 0 is not allowed (it must be at least 1)");
    }
    if (o.max_header_bytes == 0) {
        throw std::invalid_argument("hop::http::client: max_header_bytes 0 is not allowed (it must be at least 1)");
    }
    if (has_ctl_breaks(o.user_agent)) {
        throw std::invalid_argument("hop::http::client: user_agent '" + shown(o.user_agent) +
                                    "' holds CR, LF or NUL");
    }
    return o;
}

bool is_idempotent(std::string_view m) noexcept {
    return m == "GET" || m == "HEAD" || m == "PUT" || m == "DELETE" || m == "OPTIONS" || m == "TRACE";
}

bool expects_body(std::string_view m) noexcept { return m == "POST" || m == "PUT" || m == "PATCH"; }

bool is_redirect(int status) noexcept {
    return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

// The errors a kept-alive connection the server already closed gives.
bool is_reset(const std::error_code& ec) noexcept {
    if (ec.category() != std::generic_category() && ec.category() != std::system_category()) return false;
    const int e = ec.value();
    return e == ECONNRESET || e == EPIPE || e == ECONNABORTED || e == ENOTCONN;
}

std::optional<endpoint> ip_literal(const std::string& host, std::uint16_t port) {
    const bool v6 = host.find(':') != std::string::npos;
    const bool v4 = !host.empty() && std::all_of(host.begin(), host.end(), [](char c) {
        return (c >= '0' && c <= '9') || c == '.';
    });
    if (!v4 && !v6) return std::nullopt;
    try {
        return endpoint::parse(v6 ? "[" + host + "]:" + std::to_string(port) : host + ":" + std::to_string(port));
    } catch (const std::invalid_argument&) {
        return std::nullopt;  // not a literal after all: resolve it
    }
}

// The pool's key: scheme, host and port (an https and an http connection to
// one host are never interchangeable). Through a proxy: the proxy, for
// http:// (one connection carries requests to any origin); the origin and
// the proxy for a tunnel (it reaches one origin only).
std::string origin_of(const url& u, const proxy_endpoint* via) {
    std::string o = u.scheme + "://" + u.host + ":" + std::to_string(u.port);
    if (!via) return o;
    if (u.scheme == "http") return "proxy " + via->key;
    return o + " via " + via->key;
}

// " through the proxy http://host:port" for messages, or "".
std::string through(const proxy_endpoint* via) { return via ? " through the proxy " + via->shown : std::string(); }

}  // namespace

// ---- the request as validated ---------------------------------------------------------

struct prepared_request {
    std::string method;
    url target;
    http::headers fields;  // the caller's
    std::string body;
    std::optional<body_source> source;  // a streamed body instead of `body`
    bool chunked = false;      // the caller asked for Transfer-Encoding: chunked
    bool close_after = false;  // the caller sent Connection: close
};

namespace {

prepared_request prepare(request&& r) {
    prepared_request p;
    if (!is_token(r.method)) {
        throw std::invalid_argument("hop::http::client: the method '" + shown(r.method) + "' is not an HTTP token");
    }
    // Credentials out (they become Authorization), spaces and UTF-8 encoded.
    written_url written = write_url(r.url);
    p.target = url::parse(written.text);
    if (p.target.scheme != "http" && p.target.scheme != "https") {
        throw std::invalid_argument("hop::http::client: the URL '" + shown(written.text) +
                                    "' is not http:// or https://");
    }
    std::size_t te_fields = 0;
    for (const auto& f : r.headers) {
        if (!is_token(f.name)) {
            throw std::invalid_argument("hop::http::client: the header name '" + shown(f.name) +
                                        "' is not an HTTP token");
        }
        if (has_ctl_breaks(f.value)) {
            throw std::invalid_argument("hop::http::client: the value of header '" + f.name + "' ('" + shown(f.value) +
                                        "') holds CR, LF or NUL");
        }
        if (iequals(f.name, "Transfer-Encoding")) {
            ++te_fields;
            if (!iequals(trim(f.value), "chunked")) {
                throw std::invalid_argument("hop::http::client: Transfer-Encoding '" + shown(f.value) +
                                            "' is not supported (only chunked)");
            }
            p.chunked = true;
        }
        if (iequals(f.name, "Connection") && iequals(trim(f.value), "close")) p.close_after = true;
    }
    if (te_fields > 1) throw std::invalid_argument("hop::http::client: Transfer-Encoding is given more than once");
    const auto lengths = r.headers.get_all("Content-Length");
    if (r.body_source) {
        if (!r.body.empty()) {
            throw std::invalid_argument("hop::http::client: a request with a body_source has a body of " +
                                        std::to_string(r.body.size()) + " bytes too: give one or the other");
        }
        if (!lengths.empty()) {
            throw std::invalid_argument("hop::http::client: a request with a body_source has Content-Length '" +
                                        shown(lengths.front()) + "': the source gives the length (a file's size, "
                                        "or body_source::producer's size)");
        }
    } else if (!lengths.empty()) {
        if (p.chunked) {
            throw std::invalid_argument("hop::http::client: a request cannot have both Content-Length and "
                                        "Transfer-Encoding: chunked");
        }
        for (std::string_view v : lengths) {
            v = trim(v);
            std::uint64_t n = 0;
            auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
            if (ec != std::errc() || end != v.data() + v.size() || n != r.body.size()) {
                throw std::invalid_argument("hop::http::client: Content-Length '" + shown(v) +
                                            "' does not match the body's " + std::to_string(r.body.size()) +
                                            " bytes");
            }
        }
    }
    p.method = std::move(r.method);
    p.fields = std::move(r.headers);
    // The request's own Authorization wins over the URL's credentials.
    if (written.authorization && !p.fields.contains("Authorization")) {
        p.fields.add_unchecked("Authorization", *written.authorization);
    }
    p.body = std::move(r.body);
    p.source = std::move(r.body_source);
    return p;
}

}  // namespace

// ---- one request's state ----------------------------------------------------------------

struct stream_state {
    explicit stream_state(std::shared_ptr<client_state> s, prepared_request p)
        : st(std::move(s)), req(std::move(p)), url_text(req.target.to_string()), first_url(url_text) {
        head_request = req.method == "HEAD";
    }
    stream_state(const stream_state&) = delete;
    stream_state& operator=(const stream_state&) = delete;
    ~stream_state() { close(); }

    std::shared_ptr<client_state> st;
    prepared_request req;
    std::string url_text;   // the URL being fetched now (after redirects)
    std::string first_url;  // the URL asked for
    io_loop* loop = nullptr;
    request_timers timers;
    bool head_request = false;
    // The proxy the current target goes through (null: direct); the
    // client's table owns it.
    const proxy_endpoint* via = nullptr;

    // The connection in use.
    std::unique_ptr<connection> conn;
    bool conn_reused = false;
    bool peer_closed = false;        // the connection's read side ended
    std::uint64_t response_bytes = 0;  // read since the request was sent
    bool eof_before_response = false;
    std::string wire;
    bool body_separate = false;
    // The server answered before the request's body was all sent (and
    // closed its side): the connection cannot carry another request.
    bool send_cut_short = false;

    // The response.
    int status = 0;
    http::headers head_fields;
    std::optional<std::uint64_t> content_length;
    // A response_stream's: closed early, a body already buffered whole is
    // consumed and the connection kept. A request that failed never is.
    bool drain_on_close = false;

    // Streaming the body.
    std::unique_ptr<body_decoder> decoder;
    std::string decoded;
    std::size_t decoded_pos = 0;
    std::string_view pending;  // raw body bytes not handed out yet (in the connection's buffer)
    std::exception_ptr broken;  // a failed read: every later read rethrows it

    // Where the request is. Each transition is made in one function:
    //   exchange --read_head: a final head--> body
    //   body --release_connection: a redirect's body ended--> exchange
    //   body --finish_message: the final body ended--> done
    //   exchange, body --abandon: failed or cut short--> exchange (the
    //                   caller retries or rethrows; the connection is gone)
    //   any --close--> done
    // Only `body` is a clean place to stop and keep the connection.
    enum class phase : std::uint8_t { exchange, body, done };
    phase at = phase::exchange;
    bool done() const noexcept { return at == phase::done; }
    void move_to(phase next) noexcept {
        HOP_ASSERT(next != phase::body || (at == phase::exchange && conn), "a body without a head");
        HOP_ASSERT(at != phase::done || next == phase::done, "a request moved on after it ended");
        at = next;
    }

    void begin();
    [[noreturn]] void throw_timeout(timeout_kind k) const;
    void rethrow_timeout_if_fired() const {
        const auto k = timers.fired.load(std::memory_order_acquire);
        if (k != timeout_kind::none) throw_timeout(k);
    }
    void close() noexcept;

    static response_stream make_stream(std::unique_ptr<stream_state> s) { return response_stream(std::move(s)); }
};

void stream_state::begin() {
    loop = &this_thread_loop();
    timers.agent = st->agent_for(*loop);
    if (st->opts.total_timeout.count() > 0) timers.arm_total(clock::now() + st->opts.total_timeout);
}

void stream_state::throw_timeout(timeout_kind k) const {
    const auto& o = st->opts;
    const std::string prefix = "hop::http::client: ";
    switch (k) {
        case timeout_kind::pool: {
            std::string caps = "max_connections " + std::to_string(o.max_connections);
            if (o.max_connections_per_host) {
                caps += ", max_connections_per_host " + std::to_string(o.max_connections_per_host);
            }
            throw pool_timeout(prefix + "pool timeout (" + format_duration(o.pool_timeout) +
                               ") waiting for a free connection for " + shown(url_text) + " (" + caps + ")");
        }
        case timeout_kind::connect:
            throw connect_timeout(prefix + "connect timeout (" + format_duration(o.connect_timeout) +
                                  ") connecting to " + shown(url_text) + through(via));
        case timeout_kind::read:
            throw read_timeout(prefix + "read timeout (" + format_duration(o.read_timeout) + ") waiting for " +
                               shown(url_text));
        case timeout_kind::total:
            throw timeout_error(prefix + "total timeout (" + format_duration(o.total_timeout) + ") for " +
                                req.method + " " + shown(first_url));
        case timeout_kind::none:
            break;
    }
    throw std::logic_error("hop::http::client: no timeout fired");
}

namespace {

enum class step { piece, end, more };

[[noreturn]] void throw_malformed(const stream_state& s, const std::exception& e) {
    throw protocol_error("hop::http::client: a malformed response from " + shown(s.url_text) + ": " + e.what());
}

// The connection's next event, or its end once the server closed (finish);
// a malformed response is a protocol_error naming the URL.
parser::event next_event(stream_state& s) {
    try {
        return s.conn->next_event();
    } catch (const parse_error& e) {
        throw_malformed(s, e);
    }
}
parser::event finish_parse(stream_state& s) {
    try {
        return s.conn->finish();
    } catch (const parse_error& e) {
        throw_malformed(s, e);
    }
}

// After a read of `n` bytes into the connection's input (0: the server
// ended its side).
void took(stream_state& s, std::size_t n) noexcept {
    if (n == 0) {
        s.peer_closed = true;
        return;
    }
    s.response_bytes += n;
    s.timers.progress();
}

// Parses what the connection has buffered: the next piece of body, the end
// of the message, or `more` (read, then call again).
step body_step(stream_state& s, std::string_view& piece) {
    connection& c = *s.conn;
    for (;;) {
        // Called with nothing buffered too: an event may be due without
        // input (the end of a message whose last body byte was the last
        // thing parsed, or of a message without a body).
        switch (next_event(s)) {
            case parser::event::body:
                piece = c.parse.body();
                if (piece.empty()) continue;
                return step::piece;
            case parser::event::message_end:
                return step::end;
            case parser::event::head:
                throw protocol_error("hop::http::client: a second response head inside the body from " + shown(s.url_text));
            case parser::event::need_more:
                break;
        }
        break;  // need_more: all of `in` was taken
    }
    if (!s.peer_closed) return step::more;
    if (finish_parse(s) != parser::event::message_end) {
        throw protocol_error("hop::http::client: the connection closed in the middle of the response from " +
                             shown(s.url_text));
    }
    return step::end;
}

// A response has ended (a redirect's, or the final one): its connection
// back to the pool, or closed. The request goes on: it may follow a
// redirect, and its total_timeout still runs.
void release_connection(stream_state& s) {
    s.move_to(stream_state::phase::exchange);
    s.timers.disarm_phase();  // the read timeout was this response's
    std::unique_ptr<connection> c = std::move(s.conn);
    ++c->served;
    const bool reuse = !s.peer_closed && !s.req.close_after && !s.send_cut_short && c->parse.keep_alive() &&
                       c->in.empty();
    if (reuse) {
        s.st->release(std::move(c));
    } else {
        s.st->discard(std::move(c));
    }
}

// The request's body is a producer's: it can be sent once.
bool one_shot_body(const stream_state& s) noexcept { return s.req.source && !s.req.source->replayable(); }

// The exchange failed or was cut short mid-message: its connection is
// closed (it cannot carry another request), its slot freed.
void abandon(stream_state& s) noexcept {
    if (!s.done()) s.move_to(stream_state::phase::exchange);
    if (s.conn) s.st->discard(std::move(s.conn));
}

// The final response's body has ended: the request is over.
void finish_message(stream_state& s) {
    release_connection(s);
    s.move_to(stream_state::phase::done);
    s.timers.disarm_total();
}

// The request's head into s.wire: the caller's fields, and ours where the
// caller gave none. `length`: the body's, for Content-Length; `chunked`:
// Transfer-Encoding: chunked (the caller's, or ours for a streamed body of
// unknown length).
void build_head(stream_state& s, std::optional<std::uint64_t> length, bool chunked) {
    const client_options& o = s.st->opts;
    const prepared_request& p = s.req;
    headers h;
    if (!p.fields.contains("Host")) h.add_unchecked("Host", p.target.authority());
    if (!o.user_agent.empty() && !p.fields.contains("User-Agent")) h.add_unchecked("User-Agent", o.user_agent);
    if (o.decompress && !p.fields.contains("Accept-Encoding")) {
        h.add_unchecked("Accept-Encoding", std::string(accepted_encodings));
    }
    // A Proxy-Authorization of the caller's is the proxy's: it went with the
    // CONNECT, never into the tunnel to the origin.
    const bool tunnelled = s.via && p.target.scheme == "https";
    for (const auto& f : p.fields) {
        if (!tunnelled || !iequals(f.name, "Proxy-Authorization")) h.add_unchecked(f.name, f.value);
    }
    if (chunked && !p.chunked) h.add_unchecked("Transfer-Encoding", "chunked");
    if (!chunked && length && !p.fields.contains("Content-Length") && (*length > 0 || expects_body(p.method))) {
        h.add_unchecked("Content-Length", std::to_string(*length));
    }
    // Through a proxy, http:// goes in absolute form with the proxy's
    // credentials (a tunnel's requests are the origin's own).
    const bool proxied = s.via && p.target.scheme == "http";
    if (proxied && !s.via->authorization.empty() && !p.fields.contains("Proxy-Authorization")) {
        h.add_unchecked("Proxy-Authorization", s.via->authorization);
    }
    s.wire.clear();
    write_request_head(s.wire, p.method, proxied ? p.target.to_string() : p.target.target, h);
}

void build_wire(stream_state& s) {
    const prepared_request& p = s.req;
    build_head(s, p.body.size(), p.chunked);
    s.body_separate = false;
    if (p.chunked) {
        if (!p.body.empty()) {
            write_chunk_header(s.wire, p.body.size());
            if (p.body.size() <= inline_body_limit) {
                s.wire += p.body;
                s.wire += "\r\n";
                s.wire += last_chunk;
            } else {
                s.body_separate = true;
            }
        } else {
            s.wire += last_chunk;
        }
    } else if (p.body.size() <= inline_body_limit) {
        s.wire += p.body;
    } else {
        s.body_separate = true;
    }
}

// A streamed body (body_source): the head, then the body piece by piece as
// the source gives it, each piece one write (with its chunk framing when
// the length is not known), never more than one piece in memory.
task<void> send_streamed(stream_state& s) {
    const body_source& src = *s.req.source;
    std::optional<file> f;
    std::optional<std::uint64_t> length = src.declared_size();
    if (src.replayable()) {
        f.emplace(co_await file::open(src.path(), open_mode::read));
        length = f->size();
    }
    const bool chunked = s.req.chunked || !length;
    build_head(s, length, chunked);
    co_await s.conn->io.write_all(s.wire);
    s.timers.progress();
    // [room for a chunk header][a piece][CRLF]
    constexpr std::size_t room = 18;
    std::unique_ptr<char[]> buf(new char[room + upload_piece + 2]);
    const std::span<char> piece(buf.get() + room, upload_piece);
    std::uint64_t sent = 0;
    const auto what = [&] {
        return "hop::http::client: " + s.req.method + " " + shown(s.url_text) + ": the body_source " +
               (f ? "file '" + shown(src.path()) + "'" : std::string("producer"));
    };
    for (;;) {
        std::size_t n = 0;
        if (f) {
            n = co_await f->read_at(piece, static_cast<std::int64_t>(sent));
        } else {
            n = co_await src.producer_fn()(piece);
        }
        if (n > piece.size()) {
            throw std::invalid_argument(what() + " returned " + std::to_string(n) + " for a piece of " +
                                        std::to_string(piece.size()) + " bytes");
        }
        if (n == 0) break;
        sent += n;
        if (!chunked && sent > *length) {
            throw std::invalid_argument(what() + " gave more than its " + std::to_string(*length) + " bytes");
        }
        std::string_view out(piece.data(), n);
        if (chunked) {
            s.wire.clear();
            write_chunk_header(s.wire, n);
            char* start = piece.data() - s.wire.size();
            std::memcpy(start, s.wire.data(), s.wire.size());
            piece.data()[n] = '\r';  // the buffer has 2 bytes past the piece
            piece.data()[n + 1] = '\n';
            out = std::string_view(start, s.wire.size() + n + 2);
        }
        co_await s.conn->io.write_all(out);
        s.timers.progress();
    }
    if (chunked) {
        co_await s.conn->io.write_all(last_chunk);
    } else if (sent != *length) {
        throw std::invalid_argument(what() + " gave " + std::to_string(sent) + " bytes of its " +
                                    std::to_string(*length));
    }
    s.timers.progress();
}

task<void> send_request(stream_state& s) {
    s.timers.arm_phase(timeout_kind::read, s.st->opts.read_timeout);
    if (s.req.source) {
        co_await send_streamed(s);
        co_return;
    }
    build_wire(s);
    if (s.body_separate) {
        // The head and a large body in one gathered write, without a copy.
        static constexpr std::string_view tail = "\r\n0\r\n\r\n";
        const std::array<std::string_view, 3> parts{s.wire, s.req.body, s.req.chunked ? tail : std::string_view()};
        co_await s.conn->io.write_all(parts);
    } else {
        co_await s.conn->io.write_all(s.wire);
    }
    s.timers.progress();
}

// Reads more of the response into the connection's input; 0 at the end of
// the stream.
h1_connection::read_operation receive(connection& c) { return c.read_more(read_size); }

task<void> read_head(stream_state& s) {
    connection& c = *s.conn;
    if (s.head_request) c.parse.expect_no_body();
    bool informational = false;  // between a 1xx head and its end
    for (;;) {
        for (;;) {
            const parser::event ev = next_event(s);
            if (ev == parser::event::need_more) break;
            if (ev == parser::event::message_end && informational) {
                informational = false;
                continue;
            }
            if (ev != parser::event::head) {
                throw protocol_error("hop::http::client: a response from " + shown(s.url_text) + " without a head");
            }
            message_head& h = c.parse.head();
            if (h.status == 101) {
                throw protocol_error("hop::http::client: " + shown(s.url_text) +
                                     " switched protocols (101), which this client does not do");
            }
            if (h.status < 200) {
                // 100 Continue, 103 Early Hints...: not the answer yet.
                informational = true;
                continue;
            }
            s.status = h.status;
            s.head_fields = std::move(h.headers);
            s.content_length = h.content_length;
            s.move_to(stream_state::phase::body);
            co_return;
        }
        const std::size_t n = co_await receive(c);
        if (n == 0) {
            s.peer_closed = true;
            if (s.response_bytes == 0) {
                s.eof_before_response = true;
                throw protocol_error("hop::http::client: the server closed the connection before answering " +
                                     s.req.method + " " + shown(s.url_text));
            }
            finish_parse(s);
            throw protocol_error("hop::http::client: the connection closed in the middle of the response head from " +
                                 shown(s.url_text));
        }
        took(s, n);
    }
}

task<void> connect(stream_state& s, const pool_key& key) {
    const client_options& o = s.st->opts;
    s.timers.arm_phase(timeout_kind::connect, o.connect_timeout);
    const url& u = s.req.target;
    // The TCP connection goes to the proxy, if there is one.
    const std::string& host = s.via ? s.via->host : u.host;
    const std::uint16_t port = s.via ? s.via->port : u.port;
    std::vector<endpoint> candidates;
    if (auto lit = ip_literal(host, port)) {
        candidates.push_back(*lit);
    } else {
        future<std::vector<endpoint>> lookup = s.st->lookup(host, port);
        try {
            // Shielded: the lookup is shared with other requests to this
            // host, so a stop on this one leaves it running for them.
            candidates = co_await hop::shield(lookup);
        } catch (const std::system_error& e) {
            s.st->forget_lookup(host, port, lookup);
            if (!s.via) throw;
            throw std::system_error(e.code(), "hop::http::client: " + s.req.method + " " + shown(s.url_text) +
                                                  ": looking up the proxy " + s.via->shown + ": " +
                                                  hop::detail::without_code_text(e));
        }
    }
    tcp_stream t;
    try {
        if (candidates.size() == 1) {
            t = co_await tcp_stream::connect(candidates.front());
        } else {
            t = co_await tcp_stream::connect(std::move(candidates));
        }
    } catch (const std::system_error& e) {
        const std::string to_proxy = s.via ? "connecting to the proxy " + s.via->shown + ": " : "";
        throw std::system_error(e.code(), "hop::http::client: " + s.req.method + " " + shown(s.url_text) + ": " +
                                              to_proxy + hop::detail::without_code_text(e));
    }
    t.set_nodelay(true);
    transport io(std::move(t));
    if (s.via && u.scheme == "https") {
        // The tunnel is part of connecting: under connect_timeout.
        try {
            // The proxy URL's credentials, else the caller's Proxy-Authorization.
            const auto field = s.req.fields.get("Proxy-Authorization");
            const std::string auth = !s.via->authorization.empty() ? s.via->authorization
                                     : field                       ? std::string(*field)
                                                                   : std::string();
            co_await open_tunnel(io, *s.via, u, o.user_agent, auth, o.max_header_bytes);
        } catch (const std::system_error& e) {
            throw std::system_error(e.code(), "hop::http::client: " + s.req.method + " " + shown(s.url_text) +
                                                  ": CONNECT through the proxy " + s.via->shown + ": " +
                                                  hop::detail::without_code_text(e));
        }
    }
    if (u.scheme == "https") {
        // The handshake is part of connecting: under connect_timeout.
        try {
            co_await io.start_tls_client(s.st->tls_context(), u.host);
            if (io.tls()->session_reused()) s.st->tls_resumed.fetch_add(1, std::memory_order_relaxed);
        } catch (const tls::error& e) {
            throw tls::error("hop::http::client: " + s.req.method + " " + shown(s.url_text) + through(s.via) + ": " +
                                 e.what(),
                             e.verify_result());
        }
    }
    s.timers.disarm_phase();
    s.conn = std::make_unique<connection>(std::move(io), key, o.max_header_bytes);
    s.conn_reused = false;
    s.peer_closed = false;
    s.st->connects.fetch_add(1, std::memory_order_relaxed);
}

// A slot taken from the pool, given back unless a connection was made with it.
struct slot_guard {
    client_state* st;
    const std::string* origin;
    ~slot_guard() {
        if (st) st->release_slot(*origin);
    }
};

task<void> acquire(stream_state& s, bool force_new) {
    // No timeout of an earlier phase (a failed attempt's read) runs on into
    // the pool wait, which arms none when pool_timeout is 0.
    s.timers.disarm_phase();
    s.via = s.st->proxies.route(s.req.target);
    const pool_key key{s.loop, origin_of(s.req.target, s.via)};
    for (;;) {
        pool_wait w(*s.st, key, force_new);
        if (!s.st->try_acquire(w)) {
            s.timers.arm_phase(timeout_kind::pool, s.st->opts.pool_timeout);
            co_await w;
            s.timers.disarm_phase();
        }
        if (w.conn) {
            std::unique_ptr<connection> c = std::move(w.conn);
            // A connection that sat idle may have been closed by the server:
            // look (one non-blocking peek) unless it was idle only a moment
            // and the request may be sent again if it was (idempotent).
            const bool look = w.from_idle && (!is_idempotent(s.req.method) ||
                                              clock::now() - c->idle_since >= unchecked_idle);
            if (look && !still_open(c->fd())) {
                s.st->discard(std::move(c));  // the server closed it while it was idle
                continue;
            }
            s.conn = std::move(c);
            s.conn_reused = true;
            s.peer_closed = false;
            s.st->reuses.fetch_add(1, std::memory_order_relaxed);
            co_return;
        }
        w.slot = false;
        slot_guard guard{s.st.get(), &key.origin};
        co_await connect(s, key);
        guard.st = nullptr;  // the connection holds the slot now
        co_return;
    }
}

[[noreturn]] void throw_stale(const stream_state& s, std::exception_ptr failure) {
    const std::string why = "hop::http::client: " + s.req.method + " " + shown(s.url_text) +
                            ": the server closed the kept-alive connection before answering; " + s.req.method +
                            " is not idempotent, so it was not sent again";
    try {
        std::rethrow_exception(failure);
    } catch (const std::system_error& e) {
        throw std::system_error(e.code(), why);
    } catch (...) {
        throw protocol_error(why);
    }
}

// Sends the request and reads the response's head. A server may answer
// before it has read the whole request body and close the connection (a 413
// for an upload too large, RFC 9112 section 9.5): the write then fails with
// EPIPE or ECONNRESET while the answer waits in the socket's receive queue.
// That answer is read and returned, as curl does; only if none can be read
// is the write's failure reported.
task<void> send_then_read_head(stream_state& s) {
    s.send_cut_short = false;
    std::exception_ptr send_failure;
    try {
        co_await send_request(s);
    } catch (const std::system_error& e) {
        if (!is_reset(e.code())) throw;
        send_failure = std::current_exception();
    }
    if (!send_failure) {
        co_await read_head(s);
        co_return;
    }
    s.send_cut_short = true;  // the connection cannot carry another request
    bool answered = false;
    try {
        co_await read_head(s);
        answered = true;
    } catch (const cancelled_error&) {
        throw;
    } catch (const std::exception&) {
        // No answer could be read: the write's failure is the error.
    }
    if (!answered) std::rethrow_exception(send_failure);
}

// A failure of the connection while a request was sent or its head read:
// std::system_error gets the request's method and URL (the socket's own
// message names only its descriptor).
[[noreturn]] void rethrow_naming_request(const stream_state& s, std::exception_ptr failure) {
    try {
        std::rethrow_exception(failure);
    } catch (const std::system_error& e) {
        throw std::system_error(e.code(), "hop::http::client: " + s.req.method + " " + shown(s.url_text) + ": " +
                                              hop::detail::without_code_text(e));
    }
}

// Sends the request and reads the response's head. A request whose reused
// connection turns out closed before any byte of response came back is
// sent once more on a new connection if its method is idempotent.
task<void> exchange_head(stream_state& s) {
    bool retried = false;
    for (;;) {
        // A body that can be sent once goes on a new connection: a kept-alive
        // one might turn out closed once part of it is gone.
        co_await acquire(s, retried || one_shot_body(s));
        s.response_bytes = 0;
        s.eof_before_response = false;
        std::exception_ptr failure;
        bool stale = false;
        try {
            co_await send_then_read_head(s);
        } catch (const cancelled_error&) {
            throw;
        } catch (const std::system_error& e) {
            stale = s.conn_reused && s.response_bytes == 0 && is_reset(e.code());
            failure = std::current_exception();
        } catch (const protocol_error&) {
            stale = s.conn_reused && s.eof_before_response;
            failure = std::current_exception();
        }
        if (!failure) co_return;
        abandon(s);
        if (!stale) rethrow_naming_request(s, failure);
        if (!is_idempotent(s.req.method) || one_shot_body(s)) throw_stale(s, failure);
        retried = true;
        s.st->retries.fetch_add(1, std::memory_order_relaxed);
    }
}

// The body of a redirect: read and dropped if short, else the connection
// is closed.
task<void> skip_body(stream_state& s) {
    std::uint64_t skipped = 0;
    for (;;) {
        std::string_view piece;
        const step st = body_step(s, piece);
        if (st == step::end) {
            // Not the end of the request: it goes on to the redirect's
            // target (under the same total_timeout).
            release_connection(s);
            co_return;
        }
        if (st == step::piece) {
            skipped += piece.size();
            if (skipped > redirect_body_limit) break;
            continue;
        }
        took(s, co_await receive(*s.conn));
    }
    abandon(s);
}

void follow(stream_state& s, url next) {
    prepared_request& p = s.req;
    bool drop_body = false;
    if (s.status == 303) {
        if (p.method != "HEAD") p.method = "GET";
        drop_body = true;
    } else if ((s.status == 301 || s.status == 302) && p.method == "POST") {
        p.method = "GET";
        drop_body = true;
    }
    if (drop_body) {
        p.body.clear();
        p.source.reset();
        p.chunked = false;
        for (const char* f : {"Content-Length", "Content-Type", "Transfer-Encoding", "Content-Encoding"}) p.fields.erase(f);
    }
    if (!p.target.same_origin(next)) {
        for (const char* f : {"Authorization", "Cookie", "Proxy-Authorization", "Host"}) p.fields.erase(f);
    }
    p.target = std::move(next);
    s.url_text = p.target.to_string();
    s.head_request = p.method == "HEAD";
}

// The final response's head, redirects followed.
task<void> open_head(stream_state& s) {
    const client_options& o = s.st->opts;
    int redirects = 0;
    for (;;) {
        co_await exchange_head(s);
        if (s.status == 407 && s.via && s.req.target.scheme == "http") {
            throw proxy_error("hop::http::client: the proxy " + s.via->shown + " refused " + s.req.method + " " +
                                  shown(s.url_text) + ": 407 Proxy Authentication Required" +
                                  (s.via->authorization.empty() && !s.req.fields.contains("Proxy-Authorization")
                                       ? " (it wants credentials: http://user:password@host:port)"
                                       : " (it did not accept the credentials)"),
                              407);
        }
        if (!o.follow_redirects || !is_redirect(s.status)) co_return;
        // A body that can be sent once is not sent again: the 307 or 308
        // is the answer.
        if (one_shot_body(s) && (s.status == 307 || s.status == 308)) co_return;
        const auto location = s.head_fields.get("Location");
        if (!location) co_return;
        std::string where(*location);
        if (redirects >= o.max_redirects) {
            throw redirect_error("hop::http::client: more than " + std::to_string(o.max_redirects) +
                                 " redirects (max_redirects) for " + s.req.method + " " + shown(s.first_url) +
                                 "; the last one, from " + shown(s.url_text) + ", was to " + shown(where));
        }
        url next;
        std::optional<std::string> location_auth;
        try {
            // Encoded as a URL the user gave; credentials in it are its own.
            written_url written = write_url(where);
            location_auth = std::move(written.authorization);
            next = s.req.target.resolve(written.text);
        } catch (const std::invalid_argument& e) {
            throw protocol_error("hop::http::client: " + shown(s.url_text) + " redirected to a bad Location '" + shown(where) +
                                 "': " + e.what());
        }
        co_await skip_body(s);
        follow(s, std::move(next));
        if (location_auth) {
            s.req.fields.erase("Authorization");
            s.req.fields.add_unchecked("Authorization", *location_auth);
        }
        ++redirects;
    }
}

// Sets up decoding of a gzip, deflate, br or zstd body. Another coding
// (or a list of several) is left as it came, its Content-Encoding kept.
void prepare_decoder(stream_state& s) {
    if (!s.st->opts.decompress || s.head_request || s.status == 204 || s.status == 304) return;
    const auto ce = s.head_fields.get("Content-Encoding");
    if (!ce) return;
    s.decoder = body_decoder::for_encoding(*ce);
    if (!s.decoder) return;
    s.head_fields.erase("Content-Encoding");
    s.head_fields.erase("Content-Length");
}

[[noreturn]] void throw_too_big(const stream_state& s) {
    throw protocol_error("hop::http::client: the response body from " + shown(s.url_text) +
                         " exceeds client_options::max_body_bytes (" + std::to_string(s.st->opts.max_body_bytes) +
                         " bytes)");
}

void decode_into(stream_state& s, std::string_view in, std::string& out, std::size_t limit) {
    try {
        s.decoder->feed(in, out, limit);
    } catch (const protocol_error& e) {
        if (out.size() >= limit) throw_too_big(s);
        throw protocol_error("hop::http::client: a badly encoded body from " + shown(s.url_text) + ": " + e.what());
    }
    if (out.size() > limit) throw_too_big(s);
}

void decode_finish(stream_state& s) {
    try {
        s.decoder->finish();
    } catch (const protocol_error& e) {
        throw protocol_error("hop::http::client: a badly encoded body from " + shown(s.url_text) + ": " + e.what());
    }
}

// get / fetch: the whole body, bounded.
task<void> read_body(stream_state& s, std::string& out) {
    const std::size_t limit = s.st->opts.max_body_bytes;
    if (s.content_length && *s.content_length > limit) throw_too_big(s);
    if (s.content_length && !s.decoder) out.reserve(static_cast<std::size_t>(*s.content_length));
    std::uint64_t raw = 0;
    for (;;) {
        std::string_view piece;
        const step st = body_step(s, piece);
        if (st == step::piece) {
            raw += piece.size();
            if (raw > limit) throw_too_big(s);
            if (s.decoder) {
                decode_into(s, piece, out, limit);
            } else {
                out.append(piece);
            }
            continue;
        }
        if (st == step::end) {
            if (s.decoder) decode_finish(s);
            // Trailer fields of a chunked body join the head's.
            for (const auto& f : s.conn->parse.head().trailers) s.head_fields.add_unchecked(f.name, f.value);
            finish_message(s);
            co_return;
        }
        took(s, co_await receive(*s.conn));
    }
}

task<response> fetch_all(stream_state& s) {
    co_await open_head(s);
    prepare_decoder(s);
    response r;
    r.status = s.status;
    co_await read_body(s, r.body);
    r.headers = std::move(s.head_fields);
    co_return r;
}

// Rethrows a request's failure, a cancellation as the timeout that caused
// it if one did; counted by its kind for hop::metrics.
[[noreturn]] void rethrow_failure(const stream_state& s, std::exception_ptr failure) {
    try {
        try {
            std::rethrow_exception(failure);
        } catch (const cancelled_error&) {
            s.rethrow_timeout_if_fired();
            throw;
        }
    } catch (...) {
        count_client_failure(std::current_exception());
        throw;
    }
}

void observe_latency(std::chrono::steady_clock::time_point started) noexcept {
    hop::detail::observe(hop::detail::histogram_id::http_client, std::chrono::steady_clock::now() - started);
}

task<response> run_fetch(std::unique_ptr<stream_state> s) {
    s->begin();
    const auto started = std::chrono::steady_clock::now();
    std::exception_ptr failure;
    try {
        response r = co_await stop_scope<response>(s->timers.stop, fetch_all(*s));
        observe_latency(started);
        co_return r;
    } catch (...) {
        failure = std::current_exception();
    }
    rethrow_failure(*s, failure);
}

task<response_stream> run_open(std::unique_ptr<stream_state> s) {
    s->begin();
    const auto started = std::chrono::steady_clock::now();
    std::exception_ptr failure;
    try {
        co_await stop_scope<void>(s->timers.stop, open_head(*s));
    } catch (...) {
        failure = std::current_exception();
    }
    if (failure) rethrow_failure(*s, failure);
    observe_latency(started);
    // Nobody waits for the body until read_some: only total_timeout runs on.
    s->timers.disarm_phase();
    s->drain_on_close = true;
    prepare_decoder(*s);
    const int status = s->status;
    http::headers fields = std::move(s->head_fields);
    response_stream out = stream_state::make_stream(std::move(s));
    out.status = status;
    out.headers = std::move(fields);
    co_return out;
}

// One read_some of a response_stream, under the stream's stop source.
task<std::size_t> read_inner(stream_state& s, std::span<char> buf) {
    s.timers.arm_phase(timeout_kind::read, s.st->opts.read_timeout);
    for (;;) {
        if (s.decoded_pos < s.decoded.size()) {
            const std::size_t n = std::min(buf.size(), s.decoded.size() - s.decoded_pos);
            std::memcpy(buf.data(), s.decoded.data() + s.decoded_pos, n);
            s.decoded_pos += n;
            if (s.decoded_pos == s.decoded.size()) {
                s.decoded.clear();
                s.decoded_pos = 0;
            }
            s.timers.disarm_phase();
            co_return n;
        }
        if (!s.pending.empty()) {
            if (s.decoder) {
                decode_into(s, s.pending, s.decoded, std::numeric_limits<std::size_t>::max());
                s.pending = {};
                continue;
            }
            const std::size_t n = std::min(buf.size(), s.pending.size());
            std::memcpy(buf.data(), s.pending.data(), n);
            s.pending.remove_prefix(n);
            s.timers.disarm_phase();
            co_return n;
        }
        if (!s.conn) {
            // Only a stream that is done has no connection: never end a body
            // that its framing has not ended.
            throw protocol_error("hop::http::client: the response body from " + shown(s.url_text) +
                                 " has no connection to come from (the stream was closed)");
        }
        std::string_view piece;
        const step st = body_step(s, piece);
        if (st == step::piece) {
            s.pending = piece;
            continue;
        }
        if (st == step::end) {
            if (s.decoder) decode_finish(s);
            finish_message(s);
            co_return 0;
        }
        took(s, co_await receive(*s.conn));
    }
}

task<std::size_t> stream_read(stream_state* s, std::span<char> buf) {
    if (s == nullptr || buf.empty()) co_return 0;
    if (s->broken) std::rethrow_exception(s->broken);
    if (s->done()) co_return 0;
    if (&this_thread_loop() != s->loop) {
        throw std::logic_error("hop::http::response_stream::read_some: the stream of " + shown(s->url_text) +
                               " belongs to another loop than the caller's (use it where it was opened)");
    }
    // total_timeout runs until the body has been read: past it, a read
    // fails even if the rest of the body is already in the buffer.
    if (s->timers.fired.load(std::memory_order_acquire) == timeout_kind::total) {
        abandon(*s);
        try {
            s->throw_timeout(timeout_kind::total);
        } catch (...) {
            s->broken = std::current_exception();
            throw;
        }
    }
    std::exception_ptr failure;
    try {
        co_return co_await stop_scope<std::size_t>(s->timers.stop, read_inner(*s, buf));
    } catch (...) {
        failure = std::current_exception();
    }
    // A failed or cancelled read leaves the connection mid-message: close it,
    // and every later read fails the same way.
    abandon(*s);
    try {
        try {
            std::rethrow_exception(failure);
        } catch (const cancelled_error&) {
            s->rethrow_timeout_if_fired();
            throw;
        }
    } catch (...) {
        s->broken = std::current_exception();
        throw;
    }
}

task<std::string> stream_read_all(stream_state* s) {
    std::string out;
    if (s == nullptr) co_return out;
    const std::size_t limit = s->st->opts.max_body_bytes;
    char buf[16 * 1024];
    for (;;) {
        const std::size_t n = co_await stream_read(s, std::span<char>(buf, sizeof buf));
        if (n == 0) break;
        if (out.size() + n > limit) {
            abandon(*s);
            s->move_to(stream_state::phase::done);
            throw_too_big(*s);
        }
        out.append(buf, n);
    }
    co_return out;
}

}  // namespace

// Ends the stream: a body that has already arrived whole in the buffer is
// consumed and the connection kept; otherwise the connection is closed.
void stream_state::close() noexcept {
    if (conn) {
        try {
            if (drain_on_close && at == phase::body && !broken) {
                for (;;) {
                    std::string_view piece;
                    const step k = body_step(*this, piece);
                    if (k == step::piece) continue;
                    if (k == step::end) finish_message(*this);
                    break;
                }
            }
        } catch (...) {
        }
        if (conn) st->discard(std::move(conn));
    }
    move_to(phase::done);
    pending = {};
    timers.disarm_phase();
    timers.disarm_total();
}

}  // namespace detail

// ---- response_stream -------------------------------------------------------------------------

response_stream::response_stream() noexcept = default;
response_stream::response_stream(std::unique_ptr<detail::stream_state> s) noexcept : m_state(std::move(s)) {}
response_stream::response_stream(response_stream&&) noexcept = default;

response_stream& response_stream::operator=(response_stream&& o) noexcept {
    if (this != &o) {
        close();
        status = o.status;
        headers = std::move(o.headers);
        m_state = std::move(o.m_state);
    }
    return *this;
}

response_stream::~response_stream() = default;

task<std::size_t> response_stream::read_some(std::span<char> buf) { return detail::stream_read(m_state.get(), buf); }

task<std::size_t> response_stream::read_some(std::span<std::byte> buf) {
    return detail::stream_read(m_state.get(), std::span<char>(reinterpret_cast<char*>(buf.data()), buf.size()));
}

task<std::string> response_stream::read_all() { return detail::stream_read_all(m_state.get()); }

bool response_stream::done() const noexcept { return !m_state || m_state->done() || m_state->broken; }

void response_stream::close() noexcept {
    if (m_state) m_state->close();
}

const std::string& response_stream::url() const noexcept {
    static const std::string none;
    return m_state ? m_state->url_text : none;
}

// ---- client ------------------------------------------------------------------------------------

client::client() : client(client_options{}) {}

client::client(client_options options)
    : m_state(std::make_shared<detail::client_state>(detail::validated(std::move(options)))) {}

client::~client() { m_state->shut_down(); }

task<response> client::get(std::string url) {
    request r;
    r.url = std::move(url);
    return fetch(std::move(r));
}

task<response> client::get(std::string url, http::headers fields) {
    request r;
    r.url = std::move(url);
    r.headers = std::move(fields);
    return fetch(std::move(r));
}

task<response> client::post(std::string url, std::string body, http::headers fields) {
    request r;
    r.method = "POST";
    r.url = std::move(url);
    r.headers = std::move(fields);
    r.body = std::move(body);
    return fetch(std::move(r));
}

task<response_stream> client::open_url(std::string url) {
    request r;
    r.url = std::move(url);
    return open(std::move(r));
}

task<response> client::fetch(request req) {
    auto s = std::make_unique<detail::stream_state>(m_state, detail::prepare(std::move(req)));
    return detail::run_fetch(std::move(s));
}

task<response_stream> client::open(request req) {
    auto s = std::make_unique<detail::stream_state>(m_state, detail::prepare(std::move(req)));
    return detail::run_open(std::move(s));
}

const client_options& client::options() const noexcept { return m_state->opts; }

client_stats client::stats() const { return m_state->stats(); }

}  // namespace hop::http
