// hop::http::server's HTTP/2 connections, on nghttp2 (lib/http/h2_server.hpp).

#include "h2_server.hpp"

#include "../metrics_impl.hpp"
#include "server_connection.hpp"
#include "server_state.hpp"
#include "transport.hpp"

#include <hop/future.hpp>
#include <hop/sync.hpp>
#include <hop/task_group.hpp>

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace hop::http::detail {

namespace {

constexpr std::string_view client_preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
// Output is gathered from nghttp2 up to this size per write.
constexpr std::size_t max_gather = 64 * 1024;
// Reads: small while a connection is idle, large once a read fills it.
constexpr std::size_t read_size = 16 * 1024;
// nghttp2's own defaults for the rapid-reset limit (RST_STREAMs a client
// may cause: a burst, then so many per second) and the CONTINUATION limit,
// set here so they hold whatever the library's build says.
constexpr std::uint64_t reset_burst = 1000;
constexpr std::uint64_t reset_rate = 33;
constexpr std::size_t max_continuations = 8;
// A request refused before its body ended (413, 431): up to this much more
// body is read and dropped, so a client that sends it all before it reads
// gets its answer; past it, RST_STREAM NO_ERROR asks it to stop (RFC 9113
// 8.1). As the HTTP/1 server drains a short body rather than close.
constexpr std::uint64_t drain_limit = 64 * 1024;

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& ch : out) {
        if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
    }
    return out;
}

// RFC 9113 8.2.2: connection-specific fields are not sent in HTTP/2.
bool connection_specific(std::string_view lname) {
    return lname == "connection" || lname == "keep-alive" || lname == "proxy-connection" ||
           lname == "transfer-encoding" || lname == "upgrade";
}

nghttp2_nv make_nv(const std::string& name, const std::string& value) {
    return nghttp2_nv{reinterpret_cast<std::uint8_t*>(const_cast<char*>(name.data())),
                      reinterpret_cast<std::uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
                      NGHTTP2_NV_FLAG_NONE};
}

}  // namespace

h2_preface match_h2_preface(std::string_view in) noexcept {
    if (in.empty()) return h2_preface::no;
    const std::size_t n = std::min(in.size(), client_preface.size());
    if (in.substr(0, n) != client_preface.substr(0, n)) return h2_preface::no;
    return n == client_preface.size() ? h2_preface::whole : h2_preface::partial;
}

bool h2_enabled(const server_state& st) noexcept { return st.m_options.http2 && static_cast<bool>(st.m_plain); }

bool h2_negotiated(const transport& io, const server_state& st) noexcept {
    return h2_enabled(st) && io.tls() != nullptr && io.tls()->alpn_protocol() == "h2";
}

// One stream: its request as it arrives, then the response being sent.
struct h2_stream {
    std::int32_t id = 0;
    request req;
    std::string authority;
    std::size_t header_bytes = 0;
    std::optional<std::uint64_t> content_length;
    std::uint64_t received = 0;     // body bytes, kept or dropped
    std::uint64_t dropped = 0;      // body bytes dropped after the response went out
    bool reset_sent = false;
    int refused = 0;               // the status the server answers instead (400, 413, 431)
    bool request_complete = false;  // END_STREAM received
    bool responded = false;         // a response was submitted
    bool running = false;           // its handler runs
    bool closed = false;            // nghttp2 closed it
    future<void> handler;
    // The response: its fields (nghttp2 copies nothing: they live here
    // until the stream closes) and its body, sent from `sent` on.
    std::vector<std::string> fields;
    std::string body;
    std::size_t sent = 0;
};

class h2_session {
public:
    h2_session(server_connection& c, transport& io) : m_c(c), m_io(io) {}
    h2_session(const h2_session&) = delete;
    h2_session& operator=(const h2_session&) = delete;
    ~h2_session() {
        if (m_session != nullptr) nghttp2_session_del(m_session);
    }

    task<void> run(std::string unread);
    bool stop() noexcept;

private:
    server_state& st() const noexcept { return *m_c.m_st; }
    void start_session();
    task<void> reader(std::string unread);
    task<void> writer();
    task<void> run_stream(h2_stream* s);
    // Feeds received bytes to nghttp2; false: the connection is broken
    // (nghttp2 queued a GOAWAY if there is one to send).
    bool receive(std::string_view bytes);
    void submit(h2_stream& s, response& r);
    void refuse(h2_stream& s, int status, std::string_view text);
    void dispatch(h2_stream& s);
    void forget(std::int32_t id) noexcept { m_streams.erase(id); }
    // idle_timeout runs while no handler does (the connection waits for
    // the client: a request, a body, a window to send in); `progress`
    // (HEADERS or DATA moved) starts it again.
    void update_timer(bool progress) noexcept;
    task<void> wake_later() {
        wake();
        co_return;
    }
    // Wakes the writer. hop::event resumes a waiter on this loop inline,
    // and nghttp2 must not be entered again from its own callbacks: inside
    // mem_recv the wake waits until it returns.
    void wake() noexcept {
        if (m_receiving) {
            m_wake_pending = true;
        } else {
            m_wake.set();
        }
    }

    static h2_session& self(void* p) noexcept { return *static_cast<h2_session*>(p); }
    static int on_begin_headers(nghttp2_session*, const nghttp2_frame* f, void* p);
    static int on_header(nghttp2_session*, const nghttp2_frame* f, const std::uint8_t* name, std::size_t namelen,
                         const std::uint8_t* value, std::size_t valuelen, std::uint8_t flags, void* p);
    static int on_frame_recv(nghttp2_session*, const nghttp2_frame* f, void* p);
    static int on_data_chunk(nghttp2_session*, std::uint8_t flags, std::int32_t id, const std::uint8_t* data,
                             std::size_t len, void* p);
    static int on_frame_send(nghttp2_session*, const nghttp2_frame* f, void* p);
    static int on_stream_close(nghttp2_session*, std::int32_t id, std::uint32_t code, void* p);
    static ssize_t read_body(nghttp2_session*, std::int32_t id, std::uint8_t* buf, std::size_t length,
                             std::uint32_t* flags, nghttp2_data_source* src, void* p);

    server_connection& m_c;
    transport& m_io;
    nghttp2_session* m_session = nullptr;
    std::unordered_map<std::int32_t, std::unique_ptr<h2_stream>> m_streams;
    task_group m_group;
    event m_wake;
    std::string m_out;
    std::size_t m_running = 0;  // handlers running
    bool m_broken = false;      // the peer left or broke the protocol: flush, then end
    bool m_going_away = false;  // GOAWAY submitted
    bool m_timer_armed = false;
    bool m_receiving = false;     // inside nghttp2_session_mem_recv
    bool m_wake_pending = false;  // a wake() came meanwhile
    // The connection ends on an error of the client's (a GOAWAY with an
    // error code, or a preface that was none): a lingering close, so the
    // GOAWAY is not lost to the reset a close with unread input would be.
    bool m_linger = false;
    bool m_sent_progress = false;  // HEADERS or DATA went out in the last write
};

void h2_session::start_session() {
    nghttp2_session_callbacks* cbs = nullptr;
    if (nghttp2_session_callbacks_new(&cbs) != 0) throw std::bad_alloc();
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, &on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, &on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, &on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, &on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, &on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, &on_stream_close);
    nghttp2_option* opt = nullptr;
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cbs);
        throw std::bad_alloc();
    }
    nghttp2_option_set_stream_reset_rate_limit(opt, reset_burst, reset_rate);
    nghttp2_option_set_max_continuations(opt, max_continuations);
    const int rv = nghttp2_session_server_new2(&m_session, cbs, this, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0) throw std::bad_alloc();

    const server_options& o = st().m_options;
    const std::uint32_t header_list =
        static_cast<std::uint32_t>(std::min<std::size_t>(o.max_header_bytes, UINT32_MAX));
    const nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, o.max_concurrent_streams},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, header_list},
    };
    nghttp2_submit_settings(m_session, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
}

task<void> serve_h2(server_connection& c, transport& io, std::string unread) {
    h2_session s(c, io);
    co_await s.run(std::move(unread));
}

bool h2_stop(h2_session& s) noexcept { return s.stop(); }

task<void> h2_session::run(std::string unread) {
    start_session();
    m_c.m_h2 = this;
    // The drain and the sweepers see an HTTP/2 connection as idle: their
    // stop() is this session's GOAWAY (h2_stop), never an abrupt close.
    m_c.m_phase = server_connection::phase::idle;
    m_c.disarm();
    update_timer(true);
    if (m_c.m_sh->m_draining) stop();
    std::exception_ptr failure;
    try {
        m_group.spawn(reader(std::move(unread)));
        m_group.spawn(writer());
        co_await m_group.wait();
    } catch (const cancelled_error&) {
        failure = std::current_exception();
    } catch (const std::exception&) {
        // The transport failed (the peer reset or went away).
    }
    m_c.disarm();
    m_c.m_h2 = nullptr;
    if (failure) std::rethrow_exception(failure);
    if (m_linger) {
        try {
            co_await m_c.linger();
        } catch (const cancelled_error&) {
            throw;
        } catch (const std::exception&) {
            // The client reset or left meanwhile.
        }
    }
}

bool h2_session::stop() noexcept {
    if (m_going_away || m_session == nullptr) return false;
    m_going_away = true;
    const int rv = nghttp2_submit_goaway(m_session, NGHTTP2_FLAG_NONE,
                                         nghttp2_session_get_last_proc_stream_id(m_session), NGHTTP2_NO_ERROR,
                                         nullptr, 0);
    if (rv != 0) return false;
    // A peer that never reads the GOAWAY nor ends its streams is closed
    // when the idle timeout comes again (a handler running holds it off:
    // then the shutdown's grace bounds it).
    if (m_running == 0) {
        m_c.arm_idle();
        m_timer_armed = true;
    }
    // The writer is woken from a task of its own: stop() is called from
    // the server's loops over its connections, which an inline wake could
    // end under them.
    try {
        m_group.spawn(wake_later());
    } catch (...) {
        return false;
    }
    return true;
}

bool h2_session::receive(std::string_view bytes) {
    m_receiving = true;
    const ssize_t rv = nghttp2_session_mem_recv(m_session, reinterpret_cast<const std::uint8_t*>(bytes.data()),
                                                bytes.size());
    m_receiving = false;
    m_wake_pending = false;
    if (rv < 0) {
        // A connection error nghttp2 did not answer itself (a flood of
        // CONTINUATIONs, a bad preface): GOAWAY says why, if the session
        // can still send it.
        if (rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS || rv == NGHTTP2_ERR_FLOODED) {
            nghttp2_session_terminate_session(m_session, NGHTTP2_ENHANCE_YOUR_CALM);
        } else if (rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
            nghttp2_session_terminate_session(m_session, NGHTTP2_PROTOCOL_ERROR);
        }
        m_broken = true;
        m_linger = true;
        wake();
        return false;
    }
    wake();
    return true;
}

task<void> h2_session::reader(std::string unread) {
    if (!unread.empty() && !receive(unread)) co_return;
    std::string().swap(unread);
    std::unique_ptr<char[]> buf(new char[read_size]);
    for (;;) {
        const std::size_t n = co_await m_io.read_some(std::span<char>(buf.get(), read_size));
        hop::detail::count(hop::detail::counter::http_bytes_in, n);
        if (n == 0) {
            // The peer left: nobody to answer.
            m_broken = true;
            m_group.cancel();
            co_return;
        }
        if (!receive(std::string_view(buf.get(), n))) co_return;
    }
}

task<void> h2_session::writer() {
    for (;;) {
        m_wake.reset();
        while (nghttp2_session_want_write(m_session) != 0) {
            m_out.clear();
            while (m_out.size() < max_gather) {
                const std::uint8_t* data = nullptr;
                const ssize_t n = nghttp2_session_mem_send(m_session, &data);
                if (n < 0) {
                    m_broken = true;
                    break;
                }
                if (n == 0) break;
                m_out.append(reinterpret_cast<const char*>(data), static_cast<std::size_t>(n));
            }
            if (m_out.empty()) break;
            m_sent_progress = false;
            co_await m_io.write_all(std::string_view(m_out));
            hop::detail::count(hop::detail::counter::http_bytes_out, m_out.size());
            // A client that reads its responses is not idle.
            if (m_sent_progress) update_timer(true);
            if (m_broken) break;
        }
        if (m_out.capacity() > read_size) std::string().swap(m_out);
        if (m_broken || (nghttp2_session_want_read(m_session) == 0 && nghttp2_session_want_write(m_session) == 0)) {
            // Done: the GOAWAY went out and no stream is left, or the
            // connection broke. The reader and any handler end here.
            m_group.cancel();
            co_return;
        }
        if (nghttp2_session_want_write(m_session) != 0) continue;
        co_await m_wake.wait();
    }
}

// ---- streams ------------------------------------------------------------------

void h2_session::update_timer(bool progress) noexcept {
    if (m_running == 0) {
        if (progress || !m_timer_armed) {
            m_c.arm_idle();
            m_timer_armed = true;
        }
    } else if (m_timer_armed) {
        m_c.disarm();
        m_timer_armed = false;
    }
}

int h2_session::on_begin_headers(nghttp2_session* session, const nghttp2_frame* f, void* p) {
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    h2_session& s = self(p);
    auto st = std::make_unique<h2_stream>();
    st->id = f->hd.stream_id;
    nghttp2_session_set_stream_user_data(session, st->id, st.get());
    s.m_streams[st->id] = std::move(st);
    return 0;
}

int h2_session::on_header(nghttp2_session* session, const nghttp2_frame* f, const std::uint8_t* name,
                          std::size_t namelen, const std::uint8_t* value, std::size_t valuelen, std::uint8_t,
                          void* p) {
    auto* st = static_cast<h2_stream*>(nghttp2_session_get_stream_user_data(session, f->hd.stream_id));
    if (st == nullptr || f->hd.type != NGHTTP2_HEADERS) return 0;
    if (f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;  // trailers: not passed on
    h2_session& s = self(p);
    // RFC 9113 6.5.2: a field's size is name + value + 32.
    st->header_bytes += namelen + valuelen + 32;
    if (st->refused != 0) return 0;
    if (st->header_bytes > s.st().m_options.max_header_bytes) {
        st->refused = 431;
        return 0;
    }
    const std::string_view n(reinterpret_cast<const char*>(name), namelen);
    const std::string_view v(reinterpret_cast<const char*>(value), valuelen);
    if (!n.empty() && n.front() == ':') {
        if (n == ":method") {
            st->req.method = v;
        } else if (n == ":path") {
            st->req.url = v;
        } else if (n == ":authority") {
            st->authority = v;
        }
        return 0;
    }
    if (n == "content-length") {
        // nghttp2 checked it is a number and will check the DATA against it.
        std::uint64_t len = 0;
        for (char ch : v) len = len * 10 + static_cast<std::uint64_t>(ch - '0');
        st->content_length = len;
        if (len > s.st().m_options.max_body_bytes) st->refused = 413;
    }
    st->req.headers.add_unchecked(std::string(n), std::string(v));
    return 0;
}

int h2_session::on_frame_recv(nghttp2_session* session, const nghttp2_frame* f, void* p) {
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) return 0;
    auto* st = static_cast<h2_stream*>(nghttp2_session_get_stream_user_data(session, f->hd.stream_id));
    if (st == nullptr) return 0;
    h2_session& s = self(p);
    s.update_timer(true);
    const bool end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        // RFC 9113 8.3.1: :authority stands for Host.
        if (!st->authority.empty() && !st->req.headers.contains("host")) {
            st->req.headers.add_unchecked("host", std::move(st->authority));
        }
        if (st->refused == 0 && st->req.method == "CONNECT") st->refused = 400;
        if (st->refused != 0) {
            s.refuse(*st, st->refused,
                     st->refused == 413   ? "Content Too Large\n"
                     : st->refused == 431 ? "Request Header Fields Too Large\n"
                                          : "Bad Request\n");
        }
    }
    if (end) {
        st->request_complete = true;
        if (!st->responded) s.dispatch(*st);
    }
    return 0;
}

int h2_session::on_data_chunk(nghttp2_session* session, std::uint8_t, std::int32_t id, const std::uint8_t* data,
                              std::size_t len, void* p) {
    auto* st = static_cast<h2_stream*>(nghttp2_session_get_stream_user_data(session, id));
    if (st == nullptr) return 0;
    st->received += len;
    if (st->responded) {
        st->dropped += len;
        if (st->dropped > drain_limit && !st->reset_sent) {
            st->reset_sent = true;
            nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, id, NGHTTP2_NO_ERROR);
        }
        return 0;
    }
    h2_session& s = self(p);
    if (st->req.body.size() + len > s.st().m_options.max_body_bytes) {
        std::string().swap(st->req.body);
        s.refuse(*st, 413, "Content Too Large\n");
        return 0;
    }
    st->req.body.append(reinterpret_cast<const char*>(data), len);
    return 0;
}

int h2_session::on_frame_send(nghttp2_session* session, const nghttp2_frame* f, void* p) {
    if (f->hd.type == NGHTTP2_GOAWAY && f->goaway.error_code != NGHTTP2_NO_ERROR) self(p).m_linger = true;
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) return 0;
    self(p).m_sent_progress = true;
    if ((f->hd.flags & NGHTTP2_FLAG_END_STREAM) == 0) return 0;
    auto* st = static_cast<h2_stream*>(nghttp2_session_get_stream_user_data(session, f->hd.stream_id));
    // RFC 9113 8.1: a response sent before the request ended asks the
    // client to stop sending with RST_STREAM NO_ERROR, unless what it
    // said is left is short (drain_limit).
    if (st != nullptr && !st->request_complete && !st->reset_sent) {
        const bool short_rest =
            st->content_length && *st->content_length - std::min(*st->content_length, st->received) <= drain_limit;
        if (!short_rest) {
            st->reset_sent = true;
            nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_NO_ERROR);
        }
    }
    return 0;
}

int h2_session::on_stream_close(nghttp2_session* session, std::int32_t id, std::uint32_t, void* p) {
    auto* st = static_cast<h2_stream*>(nghttp2_session_get_stream_user_data(session, id));
    if (st == nullptr) return 0;
    h2_session& s = self(p);
    nghttp2_session_set_stream_user_data(session, id, nullptr);
    st->closed = true;
    if (st->running) {
        // Reset by the client: its handler is cancelled, and forgets the
        // stream when it ends.
        try {
            st->handler.cancel();
        } catch (...) {
        }
        return 0;
    }
    s.forget(id);
    return 0;
}

ssize_t h2_session::read_body(nghttp2_session* session, std::int32_t id, std::uint8_t* buf, std::size_t length,
                              std::uint32_t* flags, nghttp2_data_source*, void*) {
    auto* st = static_cast<h2_stream*>(nghttp2_session_get_stream_user_data(session, id));
    if (st == nullptr) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    const std::size_t n = std::min(length, st->body.size() - st->sent);
    std::memcpy(buf, st->body.data() + st->sent, n);
    st->sent += n;
    if (st->sent == st->body.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
}

void h2_session::refuse(h2_stream& s, int status, std::string_view text) {
    s.refused = status;
    response r{.status = status, .headers = {}, .body = std::string(text)};
    r.headers.add_unchecked("content-type", "text/plain; charset=utf-8");
    submit(s, r);
}

void h2_session::submit(h2_stream& s, response& r) {
    if (s.responded || s.closed) return;
    s.responded = true;
    m_c.m_sh->m_requests.fetch_add(1, std::memory_order_relaxed);
    hop::detail::count_http_status(r.status);
    const bool no_body = r.status == 204 || r.status == 304 || s.req.method == "HEAD";
    s.fields.clear();
    s.fields.reserve(2 * (r.headers.size() + 4));
    s.fields.emplace_back(":status");
    s.fields.push_back(std::to_string(r.status));
    for (const auto& f : r.headers) {
        std::string name = lower(f.name);
        if (connection_specific(name) || name == "content-length" || name == "date") continue;
        if (!name.empty() && name.front() == ':') continue;
        s.fields.push_back(std::move(name));
        s.fields.push_back(f.value);
    }
    if (r.status == 304) {
        if (auto cl = r.headers.get("Content-Length")) {
            s.fields.emplace_back("content-length");
            s.fields.emplace_back(*cl);
        }
    } else if (r.status != 204) {
        s.fields.emplace_back("content-length");
        s.fields.push_back(std::to_string(r.body.size()));
    }
    s.fields.emplace_back("date");
    s.fields.emplace_back(http_date());
    if (!st().m_options.server_header.empty()) {
        s.fields.emplace_back("server");
        s.fields.push_back(st().m_options.server_header);
    }
    std::vector<nghttp2_nv> nva;
    nva.reserve(s.fields.size() / 2);
    for (std::size_t i = 0; i + 1 < s.fields.size(); i += 2) nva.push_back(make_nv(s.fields[i], s.fields[i + 1]));
    nghttp2_data_provider provider{};
    provider.read_callback = &read_body;
    if (!no_body) {
        s.body = std::move(r.body);
        s.sent = 0;
    }
    const bool with_data = !no_body && !s.body.empty();
    if (nghttp2_submit_response(m_session, s.id, nva.data(), nva.size(), with_data ? &provider : nullptr) != 0) {
        nghttp2_submit_rst_stream(m_session, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_INTERNAL_ERROR);
    }
    wake();
}

void h2_session::dispatch(h2_stream& s) {
    s.running = true;
    ++m_running;
    update_timer(false);
    s.handler = m_group.spawn(run_stream(&s));
}

task<void> h2_session::run_stream(h2_stream* s) {
    const hop::detail::http_handler_timing timing;
    const std::stop_token token = co_await get_stop_token();
    response r;
    std::string failure;
    try {
        task<response> t = st().m_plain(s->req);
        r = co_await std::move(t);
        if (r.status < 200 || r.status > 999) {
            failure = "returned status " + std::to_string(r.status) + " (a final status is 200-999)";
        }
    } catch (const cancelled_error& e) {
        if (!token.stop_requested()) failure = std::string("threw hop::cancelled_error: ") + e.what();
    } catch (const std::exception& e) {
        failure = std::string("threw: ") + e.what();
    } catch (...) {
        failure = "threw an exception that is not a std::exception";
    }
    s->running = false;
    --m_running;
    update_timer(true);
    if (s->closed || token.stop_requested()) {
        // Reset by the client, or the connection ends: nobody to answer.
        if (s->closed) forget(s->id);
        co_return;
    }
    if (!failure.empty()) {
        st().log("hop::http::server: the handler for " + s->req.method + " " + s->req.url + " " + failure +
                 ": answered 500");
        r = response{.status = 500, .headers = {}, .body = "Internal Server Error\n"};
        r.headers.add_unchecked("content-type", "text/plain; charset=utf-8");
    }
    // The request is answered: its memory goes now, not at the stream's end
    // (the method stays: a HEAD's response has no body).
    std::string().swap(s->req.body);
    s->req.headers.clear();
    submit(*s, r);
}

}  // namespace hop::http::detail
