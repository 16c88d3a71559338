// hop::http::server's connections: one coroutine per connection on its
// shard's loop (lib/http/server_connection.hpp).

#include "server_connection.hpp"

#include <hop/io_loop.hpp>
#include <hop/time.hpp>

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace hop::http::detail {

using namespace std::chrono_literals;

namespace {


// True if the comma-separated `value` holds `token` (case-insensitive).
bool has_token(std::string_view value, std::string_view token) {
    while (!value.empty()) {
        const auto comma = value.find(',');
        std::string_view item = value.substr(0, comma);
        while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
        while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
        if (iequals(item, token)) return true;
        if (comma == std::string_view::npos) break;
        value.remove_prefix(comma + 1);
    }
    return false;
}

// RFC 3986 3.2.2 / RFC 9110 7.2: uri-host [ ":" port ], host not empty
// (an "http" URI has a host). IP-literals are checked for their alphabet.
bool valid_host(std::string_view v) {
    auto is_unreserved_or_sub = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               std::string_view("-._~!$&'()*+,;=").find(c) != std::string_view::npos;
    };
    auto is_hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); };
    std::size_t i = 0;
    if (!v.empty() && v.front() == '[') {
        const auto close = v.find(']');
        if (close == std::string_view::npos || close == 1) return false;
        for (char c : v.substr(1, close - 1)) {
            if (!is_unreserved_or_sub(c) && c != ':') return false;
        }
        i = close + 1;
    } else {
        for (; i < v.size() && v[i] != ':'; ++i) {
            if (v[i] == '%') {
                if (i + 2 >= v.size() || !is_hex(v[i + 1]) || !is_hex(v[i + 2])) return false;
                i += 2;
            } else if (!is_unreserved_or_sub(v[i])) {
                return false;
            }
        }
        if (i == 0) return false;
    }
    if (i == v.size()) return true;
    if (v[i] != ':') return false;
    for (char c : v.substr(i + 1)) {
        if (c < '0' || c > '9') return false;
    }
    return true;
}

// The first item of the comma-separated `list` that is not `token`
// (case-insensitive), or "".
std::string_view first_coding_not(std::string_view list, std::string_view token) {
    while (!list.empty()) {
        const auto comma = list.find(',');
        std::string_view item = list.substr(0, comma);
        while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
        while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
        if (!item.empty() && !iequals(item, token)) return item;
        if (comma == std::string_view::npos) break;
        list.remove_prefix(comma + 1);
    }
    return {};
}

// The RFC 9112 section 3 and 6 rules llhttp leaves to the server; 0 if the
// head passes, else the status to refuse it with (`why` says what). An
// absolute-form target is turned into origin-form, its authority put in Host
// (RFC 9112 3.2.2: the target's authority wins over the Host field).
int check_request_head(message_head& h, std::string& why) {
    const auto hosts = h.headers.get_all("Host");
    if (hosts.size() > 1) {
        why = "more than one Host field";
        return 400;
    }
    if (hosts.empty() && h.version_minor >= 1) {
        why = "an HTTP/1.1 request without a Host field";
        return 400;
    }
    if (!hosts.empty() && !valid_host(hosts.front())) {
        why = "the Host field '" + std::string(hosts.front()) + "' is not a host[:port]";
        return 400;
    }
    if (const auto codings = h.headers.get_all("Transfer-Encoding"); !codings.empty()) {
        const std::string_view te = codings.back();
        // RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has
        // faulty framing; 6.3: chunked must be the last coding (400), and
        // a coding this server does not implement is 501.
        if (h.version_minor == 0) {
            why = "Transfer-Encoding in an HTTP/1.0 request";
            return 400;
        }
        if (!h.chunked) {
            why = "Transfer-Encoding '" + std::string(te) + "' does not end with chunked";
            return 400;
        }
        for (std::string_view list : codings) {
            const std::string_view other = first_coding_not(list, "chunked");
            if (!other.empty()) {
                why = "the transfer coding '" + std::string(other) + "' is not implemented";
                return 501;
            }
        }
    }
    std::string& target = h.target;
    if (h.method == "CONNECT") {
        why = "CONNECT: this server is not a proxy";
        return 400;
    }
    if (target == "*") {
        if (h.method == "OPTIONS") return 0;  // asterisk-form: the server as a whole
        why = "the target * is for OPTIONS only";
        return 400;
    }
    if (!target.empty() && target.front() == '/') return 0;  // origin-form
    // absolute-form: scheme "://" authority path-abempty [ "?" query ]
    const auto sep = target.find("://");
    const auto authority_end = sep == std::string::npos ? sep : target.find_first_of("/?#", sep + 3);
    const std::string_view authority = sep == std::string::npos
                                           ? std::string_view()
                                           : std::string_view(target).substr(sep + 3, authority_end == std::string::npos
                                                                                           ? std::string::npos
                                                                                           : authority_end - sep - 3);
    if (sep == std::string::npos || sep == 0 || !valid_host(authority)) {
        why = "the request target '" + target + "' is not origin-form or absolute-form";
        return 400;
    }
    std::string host(authority);
    std::string path = authority_end == std::string::npos ? std::string("/") : target.substr(authority_end);
    if (path.front() == '?') path.insert(0, "/");
    h.headers.set("Host", host);
    target = std::move(path);
    return 0;
}

}  // namespace


task<void> server_connection::serve_connection(std::unique_ptr<server_connection> self) {
    server_connection& c = *self;
    int error_status = 0;
    bool cancelled = false;
    try {
        if (!c.m_st->m_options.tls || co_await c.handshake()) {
            if (h2_negotiated(c.m_h1.io, *c.m_st)) {
                co_await serve_h2(c, c.m_h1.io, std::string());  // ALPN h2 (lib/http/h2_server.hpp)
            } else {
                for (;;) {
                    error_status = co_await c.request_loop();
                    if (error_status != between_requests) break;
                    error_status = 0;
                    // Between requests with nothing buffered: the connection
                    // waits here, in its outermost frame, so an idle one holds
                    // no request_loop or fill frame. On a readiness loop it
                    // holds no input buffer either: it waits for the first
                    // byte, then reads.
                    if (!c.m_out.empty()) co_await c.flush();
                    if (!c.enter_idle()) break;
                    std::size_t n;
                    while ((n = co_await c.m_h1.next_bytes(small_read)) == h1_connection::next_bytes_operation::again) {
                    }
                    if (!c.took(n, small_read)) break;
                }
            }
        }
    } catch (const cancelled_error&) {
        cancelled = true;
    } catch (const std::exception&) {
        // The client reset or went away mid-write: nobody to answer.
    }
    if (cancelled && c.m_stop_reason == stop_reason::timeout &&
        (c.m_phase == phase::head || c.m_phase == phase::body)) {
        // Our token is stopped: no awaits are possible any more. The answer
        // is small and the send buffer empty (the client sends, it does not
        // read), so one non-blocking send delivers it.
        c.m_out.clear();
        c.append_error(408, "the request did not arrive in time");
        c.m_h1.io.try_write(c.m_out);
        c.m_sh->m_requests.fetch_add(1, std::memory_order_relaxed);
    }
    if (error_status != 0) {
        try {
            co_await c.answer_error(error_status);
        } catch (const std::exception&) {
        }
    }
    if (cancelled) {
        c.m_h1.io.close();
    } else {
        // Over TLS close_notify, so the client can tell our close from a cut.
        co_await c.m_h1.io.close_gracefully();
    }
}

// https: the TLS handshake, under header_timeout. False: it failed (logged).
task<bool> server_connection::handshake() {
    m_phase = phase::handshake;
    arm_header();
    std::string failure;
    try {
        co_await m_h1.io.start_tls_server(*m_st->m_options.tls);
    } catch (const tls::error& e) {
        failure = e.what();
    }
    m_phase = phase::idle;
    if (!failure.empty()) {
        disarm();
        m_st->log_limited(*m_sh, server_state::log_kind::tls_handshake,
                          "hop::http::server: TLS handshake failed: " + failure + " (connection closed)",
                          "TLS handshakes failed");
        co_return false;
    }
    // header_timeout goes on: the first request's head is due within it.
    m_header_armed = true;
    co_return true;
}

task<int> server_connection::request_loop() {
    parser& p = m_h1.parse;
    request req;
    for (;;) {
        if (m_fresh && !p.started() && h2_enabled(*m_st)) {
            // HTTP/2 by prior knowledge: the client preface (lib/http/h2_server.hpp).
            const h2_preface pre = match_h2_preface(m_h1.in.view());
            if (pre == h2_preface::whole) {
                h1_connection::handed h = m_h1.hand_over();
                m_h1.io = std::move(h.io);  // the connection's transport again, for its close
                co_await serve_h2(*this, m_h1.io, std::move(h.unread));
                co_return 0;
            }
            if (pre == h2_preface::partial) {
                if (!co_await fill(p)) co_return 0;
                continue;
            }
        }
        parser::event ev = parser::event::need_more;
        int bad = 0;
        try {
            ev = m_h1.next_event();
        } catch (const parse_error& e) {
            bad = e.status();
            m_error_text = e.what();
        }
        if (bad != 0) co_return bad;
        switch (ev) {
            case parser::event::need_more: {
                // Between requests, nothing buffered: serve_connection waits.
                if (!p.started() && m_h1.in.empty()) co_return between_requests;
                const bool more = co_await fill(p);
                if (!more) co_return 0;
                break;
            }
            case parser::event::head: {
                disarm();
                m_header_armed = false;
                m_fresh = false;
                m_phase = phase::body;
                message_head& h = p.head();
                if (const int refused = check_request_head(h, m_error_text)) co_return refused;
                req.method = std::move(h.method);
                req.url = std::move(h.target);
                req.headers = std::move(h.headers);
                req.body.clear();
                m_minor = h.version_minor;
                m_upgrade = h.upgrade;
                if (h.content_length && *h.content_length > m_st->m_options.max_body_bytes) {
                    m_error_text = "Content-Length " + std::to_string(*h.content_length) + " is over max_body_bytes";
                    co_return 413;
                }
                m_continue_pending = h.expect_continue && (h.chunked || h.content_length.value_or(0) > 0);
                if (m_st->m_body_stream) {
                    // The handler reads the body itself, from here.
                    m_keep_alive = h.keep_alive && !m_upgrade && !m_sh->m_draining;
                    if (const int refused = co_await respond_reading(req)) co_return refused;
                    if (!m_keep_alive) {
                        co_await flush();
                        if (m_body_left) co_await linger();
                        co_return 0;
                    }
                    if (m_out.size() >= max_pending_output) co_await flush();
                    req = request{};
                    break;
                }
                if (h.content_length && *h.content_length > 0) {
                    req.body.reserve(static_cast<std::size_t>(*h.content_length));
                }
                break;
            }
            case parser::event::body:
                req.body.append(p.body());
                break;
            case parser::event::message_end: {
                m_continue_pending = false;
                m_keep_alive = p.keep_alive() && !m_upgrade && !m_sh->m_draining;
                const bool keep = co_await respond(req);
                if (!keep) {
                    co_await flush();
                    co_return 0;
                }
                if (m_out.size() >= max_pending_output) co_await flush();
                req = request{};
                break;
            }
        }
    }
}

// Between requests: hold as little as possible, and time the wait with
// idle_timeout. False: the server drains, so the connection ends here.
bool server_connection::enter_idle() {
    if (m_sh->m_draining) return false;
    // An acceptor waits at max_connections: a keep-alive connection makes
    // room rather than wait (a new one has its first request to come).
    if (!m_fresh && m_st->m_room_wanted.load(std::memory_order_relaxed)) return false;
    m_phase = phase::idle;
    m_next_read = small_read;
    m_h1.in.shrink(small_read);
    m_h1.parse.release();
    // Flushed: its memory goes too (a response allocates it again).
    std::string().swap(m_out);
    if (!m_fresh) {
        arm_idle();
    } else if (!m_header_armed) {
        // A new connection: its first head is due header_timeout after
        // the accept, whether or not a byte came.
        arm_header();
        m_header_armed = true;
    }
    return true;
}

// Flushes what is pending, then reads more input. False: the connection
// ends here (end of stream, or the server drains and it is between
// requests).
task<bool> server_connection::fill(parser& p) {
    if (!m_out.empty()) co_await flush();
    if (!p.started()) {
        if (!enter_idle()) co_return false;
    } else if (!p.in_message()) {
        m_phase = phase::head;
        if (!m_header_armed) {
            arm_header();
            m_header_armed = true;
        }
    } else {
        m_phase = phase::body;
        if (m_continue_pending) {
            // The body is wanted and has not come: ask for it.
            m_continue_pending = false;
            m_out.append("HTTP/1.1 100 Continue\r\n\r\n");
            co_await flush();
        }
        arm_idle();
    }
    const auto space = m_h1.in.space(m_next_read);
    co_return took(co_await m_h1.io.read_some(space), space.size());
}

bool server_connection::took(std::size_t n, std::size_t asked) {
    hop::detail::count(hop::detail::counter::http_bytes_in, n);
    const bool header_runs = m_phase == phase::head || (m_phase == phase::idle && m_fresh);
    if (!header_runs) disarm();
    if (n == 0) return false;
    m_h1.in.commit(n);
    if (n >= asked) m_next_read = large_read;
    if (m_phase == phase::idle) {
        m_phase = phase::head;
        m_header_armed = m_fresh;
    }
    return true;
}

task<void> server_connection::flush() {
    std::size_t done = 0;
    const phase was = m_phase;
    while (done < m_out.size()) {
        // A client that does not read its response is timed by idle_timeout.
        arm_idle();
        std::size_t n = 0;
        try {
            n = co_await m_h1.io.write_some(std::string_view(m_out).substr(done));
        } catch (const cancelled_error&) {
            throw;
        } catch (const std::exception&) {
            m_client_gone = true;
            throw;
        }
        disarm();
        hop::detail::count(hop::detail::counter::http_bytes_out, n);
        done += n;
    }
    m_phase = was;
    m_out.clear();
    if (m_header_armed && m_phase == phase::head) {
        arm_header();
    }
}

// The fields every response carries; `h` is the handler's, changed in place.
void server_connection::finish_head(headers& h, int status) {
    // A shutdown that began while the handler ran: this is the last response.
    if (m_sh->m_draining) m_keep_alive = false;
    if (auto c = h.get("Connection"); c && has_token(*c, "close")) m_keep_alive = false;
    h.erase("Connection");
    if (!m_keep_alive) {
        h.add_unchecked("Connection", "close");
    } else if (m_minor == 0) {
        h.add_unchecked("Connection", "keep-alive");
    }
    if (!h.contains("Date")) h.add_unchecked("Date", std::string(http_date()));
    if (!m_st->m_options.server_header.empty() && !h.contains("Server")) {
        h.add_unchecked("Server", m_st->m_options.server_header);
    }
    write_response_head(m_out, status, h, 1);
    hop::detail::count_http_status(status);
}

void server_connection::append_response(response& r) {
    headers& h = r.headers;
    h.erase("Transfer-Encoding");
    const bool no_body = r.status == 204 || r.status == 304;
    if (r.status == 304) {
        // Content-Length, if the handler gave one, is what a GET would get.
    } else {
        h.erase("Content-Length");
        if (!no_body) h.add_unchecked("Content-Length", std::to_string(r.body.size()));
    }
    finish_head(h, r.status);
    if (!m_head_request && !no_body) m_out.append(r.body);
}

void server_connection::append_error(int status, std::string_view text) {
    m_keep_alive = false;
    std::string body(reason_phrase(status));
    body += ": ";
    body += text;
    body += '\n';
    headers h;
    h.add_unchecked("Content-Type", "text/plain; charset=utf-8");
    h.add_unchecked("Content-Length", std::to_string(body.size()));
    finish_head(h, status);
    if (!m_head_request) m_out += body;
}

// Answers a request the server refuses, then reads and drops what the
// client still sends (lingering_time, lingering_timeout) before the close,
// so the answer is not destroyed by a reset.
task<void> server_connection::answer_error(int status) {
    // Responses to requests pipelined before this one go out first.
    m_head_request = false;
    append_error(status, status == 413   ? "the body is over the server's limit"
                         : status == 414 ? "the request target is over the server's limit"
                         : status == 431 ? "the header fields are over the server's limit"
                         : status == 501 ? "the request uses a transfer coding this server does not implement"
                         : status == 505 ? "this server speaks HTTP/1.0 and HTTP/1.1"
                                         : "the request is malformed");
    m_sh->m_requests.fetch_add(1, std::memory_order_relaxed);
    m_phase = phase::linger;
    co_await flush();
    co_await linger();
}

// Lingering close, as nginx's: our end of output goes out after the
// answer; the client may still be sending a body it did not wait to send.
// Reading it until the client closes (bounded) keeps our close from being
// a reset that would make the client's kernel drop the answer unread.
// (Over TLS the transport does this itself while it waits for the
// client's close_notify.)
task<void> server_connection::linger() {
    m_phase = phase::linger;
    const server_options& o = m_st->m_options;
    if (!co_await m_h1.io.end_output(std::chrono::duration_cast<std::chrono::milliseconds>(o.lingering_time))) co_return;
    const auto until = saturating_add(clock::now(), o.lingering_time);
    m_h1.in.consume(m_h1.in.view().size());
    for (;;) {
        const auto now = clock::now();
        if (now >= until) break;
        // Each read waits at most lingering_timeout, and not past the total.
        if (m_sh->m_deadlines) {
            m_sh->m_deadlines->linger.arm_at(m_timeout, std::min(saturating_add(now, o.lingering_timeout), until));
        }
        const std::size_t n = co_await m_h1.io.read_some(m_h1.in.space(large_read));
        if (n == 0) break;
    }
    disarm();
}

namespace {

// What a handler's exception says in the log. A cancellation that the
// server's own stop caused is not a failure: it is rethrown.
std::string handler_failure(std::exception_ptr e, const std::stop_token& token) {
    try {
        std::rethrow_exception(e);
    } catch (const cancelled_error& c) {
        if (token.stop_requested()) throw;
        return std::string("threw hop::cancelled_error: ") + c.what();
    } catch (const std::exception& x) {
        return std::string("threw: ") + x.what();
    } catch (...) {
        return "threw an exception that is not a std::exception";
    }
}

}  // namespace

void server_connection::answer_500(const request& req, const std::string& failure) {
    m_st->log("hop::http::server: the handler for " + req.method + " " + req.url + " " + failure + ": answered 500");
    response r{.status = 500, .headers = {}, .body = "Internal Server Error\n"};
    r.headers.add_unchecked("Content-Type", "text/plain; charset=utf-8");
    append_response(r);
}

task<bool> server_connection::respond(request& req) {
    const hop::detail::http_handler_timing timing;
    m_phase = phase::handler;
    m_head_request = req.method == "HEAD";
    const std::stop_token token = co_await get_stop_token();
    m_sh->m_requests.fetch_add(1, std::memory_order_relaxed);
    std::string failure;
    if (m_st->m_plain) {
        response r;
        try {
            task<response> t = m_st->m_plain(req);
            r = co_await std::move(t);
            if (r.status < 200 || r.status > 999) {
                failure = "returned status " + std::to_string(r.status) + " (a final status is 200-999)";
            }
        } catch (...) {
            failure = handler_failure(std::current_exception(), token);
        }
        if (failure.empty()) {
            append_response(r);
        } else {
            answer_500(req, failure);
        }
        co_return m_keep_alive;
    }

    response_writer w(*this);
    try {
        task<void> t = m_st->m_streaming(req, w);
        co_await std::move(t);
    } catch (...) {
        failure = handler_failure(std::current_exception(), token);
    }
    if (failure.empty() && !w.finished()) {
        try {
            co_await writer_finish(w);
        } catch (const cancelled_error&) {
            if (token.stop_requested()) throw;
            failure = "was cancelled";
        } catch (const std::system_error&) {
            throw;  // the client is gone
        } catch (const std::exception& e) {
            failure = std::string("left its response unfinished: ") + e.what();
        }
    }
    if (failure.empty()) co_return m_keep_alive;
    if (!w.started() || w.m_head_pending) {
        answer_500(req, failure);
        co_return m_keep_alive;
    }
    if (m_client_gone) {
        // The client went away mid-response: an everyday event, not logged.
        m_out.clear();
        m_keep_alive = false;
        co_return false;
    }
    m_st->log("hop::http::server: the handler for " + req.method + " " + req.url + " " + failure +
              " after its response started: connection closed");
    m_out.clear();
    m_keep_alive = false;
    co_return false;
}

// ---- request_body's side ----------------------------------------------------

task<int> server_connection::respond_reading(request& req) {
    const hop::detail::http_handler_timing timing;
    m_phase = phase::handler;
    m_head_request = req.method == "HEAD";
    const std::stop_token token = co_await get_stop_token();
    m_sh->m_requests.fetch_add(1, std::memory_order_relaxed);
    request_body body(*this);
    response r;
    std::string failure;
    try {
        task<response> t = m_st->m_body_stream(req, body);
        r = co_await std::move(t);
        if (r.status < 200 || r.status > 999) {
            failure = "returned status " + std::to_string(r.status) + " (a final status is 200-999)";
        }
    } catch (...) {
        failure = handler_failure(std::current_exception(), token);
    }
    // A body that broke the rules is answered by the server, whatever the
    // handler made of it.
    if (body.m_refused != 0) co_return body.m_refused;
    if (!body.done() && m_continue_pending) {
        // Nobody read: the client still waits for 100 Continue before it
        // sends the body. It gets the answer instead, and the connection
        // closes (lingering, in case it sends anyway).
        m_keep_alive = false;
        m_body_left = true;
    } else if (!body.done() && !co_await drain_body(body)) {
        if (body.m_refused != 0) co_return body.m_refused;
        m_keep_alive = false;
        m_body_left = true;
    }
    m_continue_pending = false;
    if (body.done()) m_keep_alive = m_keep_alive && m_h1.parse.keep_alive();
    m_phase = phase::handler;
    if (failure.empty()) {
        append_response(r);
    } else {
        answer_500(req, failure);
    }
    co_return 0;
}

task<std::size_t> server_connection::body_read(request_body& b, std::span<char> buf) {
    if (b.m_done || buf.empty()) co_return 0;
    if (b.m_refused != 0) throw protocol_error("hop::http::request_body: " + m_error_text);
    for (;;) {
        if (!b.m_pending.empty()) {
            const std::size_t n = std::min(buf.size(), b.m_pending.size());
            std::memcpy(buf.data(), b.m_pending.data(), n);
            b.m_pending.remove_prefix(n);
            co_return n;
        }
        parser::event ev = parser::event::need_more;
        try {
            ev = m_h1.next_event();
        } catch (const parse_error& e) {
            b.m_refused = e.status();
            m_error_text = e.what();
            throw protocol_error(std::string("hop::http::request_body: ") + e.what());
        }
        switch (ev) {
            case parser::event::body:
                b.m_pending = m_h1.parse.body();
                break;
            case parser::event::message_end:
                b.m_done = true;
                co_return 0;
            case parser::event::head:
                throw std::logic_error("hop::http::request_body: a request head inside a body");
            case parser::event::need_more: {
                // The body's pieces are handed out before the next read, which
                // may move the input buffer.
                const bool more = co_await fill(m_h1.parse);
                m_phase = phase::handler;
                if (!more) throw protocol_error("hop::http::request_body: the client closed the connection in the "
                                                "middle of the request body");
                break;
            }
        }
    }
}

task<bool> server_connection::drain_body(request_body& b) {
    constexpr std::uint64_t drain_limit = 64 * 1024;
    std::uint64_t dropped = 0;
    char scrap[4096];
    try {
        while (dropped <= drain_limit) {
            const std::size_t n = co_await body_read(b, std::span<char>(scrap, sizeof scrap));
            if (n == 0) co_return true;
            dropped += n;
        }
    } catch (const protocol_error&) {
        // m_refused says what to answer, if anything.
    }
    co_return false;
}

// ---- response_writer's side ------------------------------------------------

task<void> server_connection::writer_start(response_writer& w, int status, headers fields) {
    using framing = response_writer::framing;
    // The handler may call from the CPU pool: the connection's state is the
    // loop's. The handler resumes on its own executor afterwards.
    co_await m_sh->m_loop->schedule();
    if (w.m_started) throw std::logic_error("hop::http::response_writer::start: the head was sent already");
    if (status < 200 || status > 999) {
        throw std::invalid_argument("hop::http::response_writer::start: status " + std::to_string(status) +
                                    " is not a final status (200-999)");
    }
    const auto lengths = fields.get_all("Content-Length");
    std::optional<std::uint64_t> length;
    for (std::string_view v : lengths) {
        std::uint64_t n = 0;
        const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
        if (v.empty() || ec != std::errc() || end != v.data() + v.size() || (length && *length != n)) {
            throw std::invalid_argument("hop::http::response_writer::start: Content-Length '" + std::string(v) +
                                        "' is not one decimal number");
        }
        length = n;
    }
    fields.erase("Transfer-Encoding");
    fields.erase("Content-Length");
    const bool no_body_status = status == 204 || status == 304;
    framing f;
    if (length) {
        if (status != 204) fields.add_unchecked("Content-Length", std::to_string(*length));
        f = framing::length;
        w.m_remaining = *length;
    } else if (no_body_status) {
        f = framing::none;
    } else {
        f = m_minor >= 1 ? framing::chunked : framing::until_close;
        // HEAD: the head a GET that writes a body would get.
        if (m_head_request && f == framing::chunked) fields.add_unchecked("Transfer-Encoding", "chunked");
    }
    if (m_head_request || no_body_status) f = framing::none;
    w.m_framing = f;
    w.m_started = true;
    if (f == framing::chunked || f == framing::until_close) {
        // The length is not known yet: if the response ends before its
        // first byte, it is 0 and needs no chunking (nor a close for 1.0).
        w.m_head_pending = true;
        w.m_pending_status = status;
        w.m_pending_fields = std::move(fields);
        co_return;
    }
    finish_head(fields, status);
    co_await flush();
}

// The head start() held back, framed now that the first byte comes
// (`empty`: the response ended without one).
void server_connection::writer_send_head(response_writer& w, bool empty) {
    using framing = response_writer::framing;
    w.m_head_pending = false;
    headers fields = std::move(w.m_pending_fields);
    if (empty) {
        fields.add_unchecked("Content-Length", "0");
        w.m_framing = framing::length;
        w.m_remaining = 0;
    } else if (w.m_framing == framing::chunked) {
        fields.add_unchecked("Transfer-Encoding", "chunked");
    } else {
        m_keep_alive = false;  // HTTP/1.0: the body ends with the connection
    }
    finish_head(fields, w.m_pending_status);
}

task<void> server_connection::writer_write(response_writer& w, std::string_view data) {
    using framing = response_writer::framing;
    co_await m_sh->m_loop->schedule();
    if (w.m_finished) throw std::logic_error("hop::http::response_writer::write: called after finish()");
    if (!w.m_started) co_await writer_start(w, 200, headers{});
    if (data.empty()) co_return;
    if (w.m_head_pending) writer_send_head(w, false);  // goes out with this first piece
    switch (w.m_framing) {
        case framing::none:
            co_return;
        case framing::length:
            if (data.size() > w.m_remaining) {
                throw std::logic_error("hop::http::response_writer::write: " + std::to_string(data.size()) +
                                       " bytes, but only " + std::to_string(w.m_remaining) +
                                       " are left of the Content-Length");
            }
            w.m_remaining -= data.size();
            m_out.append(data);
            break;
        case framing::chunked:
            write_chunk_header(m_out, data.size());
            m_out.append(data);
            m_out.append("\r\n");
            break;
        case framing::until_close:
            m_out.append(data);
            break;
    }
    co_await flush();
}

task<void> server_connection::writer_flush(response_writer& w) {
    co_await m_sh->m_loop->schedule();
    if (w.m_finished) co_return;
    if (!w.m_started) co_await writer_start(w, 200, headers{});
    if (!w.m_head_pending) co_return;
    writer_send_head(w, false);
    co_await flush();
}

task<void> server_connection::writer_finish(response_writer& w) {
    using framing = response_writer::framing;
    co_await m_sh->m_loop->schedule();
    if (w.m_finished) co_return;
    if (!w.m_started) {
        headers h;
        h.add_unchecked("Content-Length", "0");
        co_await writer_start(w, 200, std::move(h));
    }
    w.m_finished = true;
    if (w.m_head_pending) {
        writer_send_head(w, true);
        co_await flush();
        co_return;
    }
    if (w.m_framing == framing::chunked) {
        m_out.append(last_chunk);
        co_await flush();
    } else if (w.m_framing == framing::length && w.m_remaining != 0) {
        m_keep_alive = false;
        throw std::logic_error("hop::http::response_writer::finish: " + std::to_string(w.m_remaining) +
                               " bytes of the Content-Length were never written");
    }
}

}  // namespace hop::http::detail
