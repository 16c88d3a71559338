#pragma once
// Private to hop::http::server: one client connection, from its accept (or
// hand-off) to its close: the TLS handshake, the request loop over the
// shared HTTP/1 connection (lib/http/h1_connection.hpp), the handler's
// response and response_writer, refusals and the lingering close.

#include "../metrics_impl.hpp"
#include "h1_connection.hpp"
#include "h2_server.hpp"
#include "server_state.hpp"

#include <hop/future.hpp>
#include <hop/http/server.hpp>
#include <hop/task.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace hop::http::detail {

// Read sizes: a connection waiting for its next request holds a small
// buffer (an idle keep-alive connection should cost little memory); one
// whose read filled the buffer reads in large pieces from then on.
inline constexpr std::size_t small_read = 1024;
inline constexpr std::size_t large_read = 16 * 1024;
// Pipelined responses are gathered into one write up to this size.
inline constexpr std::size_t max_pending_output = 64 * 1024;

// One client connection. Owned by its coroutine's frame (serve_connection);
// linked into the server's list of connections while it lives.
class server_connection {
public:
    enum class phase : std::uint8_t { handshake, idle, head, body, handler, linger };
    enum class stop_reason : std::uint8_t { none, timeout, shutdown, evicted };

    // On `sh`'s loop. The connection was counted (its slot and the
    // shard's load) when it was accepted; it gives both back when it ends.
    server_connection(std::shared_ptr<server_state> st, server_shard& sh, tcp_stream s) noexcept
        : m_st(std::move(st)),
          m_sh(&sh),
          m_h1(transport(std::move(s)), parser::kind::request,
               parser::limits{.max_header_bytes = m_st->m_options.max_header_bytes,
                              .max_body_bytes = m_st->m_options.max_body_bytes}) {
        m_timeout.owner = this;
        m_next = m_sh->m_first;
        if (m_next) m_next->m_prev = this;
        m_sh->m_first = this;
        hop::detail::count(hop::detail::counter::http_accepted);
        try {
            m_h1.io.set_nodelay(true);
        } catch (const std::exception&) {
            // Reset before we got here: the first read says so.
        }
    }
    ~server_connection() {
        deadline_queue::disarm(m_timeout);
        if (m_prev) m_prev->m_next = m_next;
        if (m_next) m_next->m_prev = m_prev;
        if (m_sh->m_first == this) m_sh->m_first = m_next;
        m_sh->m_load.fetch_sub(1, std::memory_order_relaxed);
        hop::detail::count(hop::detail::counter::http_closed);
        m_st->release_slot();
    }
    server_connection(const server_connection&) = delete;
    server_connection& operator=(const server_connection&) = delete;

    static task<void> serve_connection(std::unique_ptr<server_connection> self);

    // Ends the connection's coroutine at its next await (loop thread).
    void stop(stop_reason why) noexcept {
        if (m_h2 != nullptr && h2_stop(*m_h2)) return;  // HTTP/2: GOAWAY first
        if (m_stop_reason == stop_reason::none) m_stop_reason = why;
        try {
            if (m_future.valid()) m_future.cancel();
        } catch (...) {
        }
    }
    // No request begun: closed at once when the server drains.
    bool idle() const noexcept { return m_phase == phase::idle || m_phase == phase::handshake; }
    // Waiting for a request (not in a TLS handshake): may be evicted.
    bool waiting() const noexcept { return m_phase == phase::idle; }
    // The connection whose timeout `d` is (an entry of a shard's header,
    // idle or linger queue).
    static server_connection& owner_of(deadline& d) noexcept { return *static_cast<timeout_entry&>(d).owner; }
    // Takes its timeout out of its queue.
    void disarm() noexcept { deadline_queue::disarm(m_timeout); }
    server_connection* next() const noexcept { return m_next; }

    task<void> writer_start(response_writer& w, int status, headers fields);
    task<void> writer_write(response_writer& w, std::string_view data);
    task<void> writer_flush(response_writer& w);
    task<void> writer_finish(response_writer& w);
    void writer_send_head(response_writer& w, bool empty);
    task<std::size_t> body_read(request_body& b, std::span<char> buf);

    future<void> m_future;

private:
    friend class h2_session;
    // Serves requests until one ends the connection (0, or the status of
    // a refusal to answer) or the connection is between requests with
    // nothing buffered (between_requests: serve_connection waits).
    task<int> request_loop();
    static constexpr int between_requests = -1;
    bool enter_idle();
    task<bool> fill(parser& p);
    // After a read of `n` bytes into space of `asked`: the timeouts, the
    // phase, the next read's size. False: the stream ended (n == 0).
    bool took(std::size_t n, std::size_t asked);
    task<void> flush();
    task<bool> respond(request& req);
    // A body_handler's request, called at its head: the status the server
    // answers instead (400, 413: the body broke the rules), or 0.
    task<int> respond_reading(request& req);
    // Reads and drops the rest of a body the handler left, up to a bound:
    // false if it was longer (the connection then closes).
    task<bool> drain_body(request_body& b);
    // Our end of output, then what the client still sends is read and
    // dropped (bounded), so our close is not a reset that loses the answer.
    task<void> linger();
    void append_response(response& r);
    // The handler failed before its response started: log it, answer 500.
    void answer_500(const request& req, const std::string& failure);
    void append_error(int status, std::string_view text);
    task<void> answer_error(int status);
    void arm_header() {
        if (m_sh->m_deadlines) m_sh->m_deadlines->header.arm(m_timeout);
    }
    void arm_idle() {
        if (m_sh->m_deadlines) m_sh->m_deadlines->idle.arm(m_timeout);
    }
    void finish_head(headers& h, int status);

    task<bool> handshake();

    std::shared_ptr<server_state> m_st;
    server_shard* m_sh;                 // owned by *m_st
    h1_connection m_h1;
    server_connection* m_prev = nullptr;
    server_connection* m_next = nullptr;
    h2_session* m_h2 = nullptr;  // set while the connection speaks HTTP/2
    // The one timeout running (header, idle or lingering): it stops the
    // connection.
    struct timeout_entry final : deadline {
        server_connection* owner = nullptr;
        void expired(bool loop_closing) noexcept override {
            if (!loop_closing) owner->stop(stop_reason::timeout);
        }
    } m_timeout;
    std::string m_out;
    std::string m_error_text;
    std::size_t m_next_read = small_read;
    phase m_phase = phase::idle;
    stop_reason m_stop_reason = stop_reason::none;
    // The request being answered.
    int m_minor = 1;
    bool m_head_request = false;
    bool m_keep_alive = true;
    bool m_continue_pending = false;
    bool m_upgrade = false;
    bool m_header_armed = false;
    // No request head has arrived yet: header_timeout runs from the
    // accept (or the TLS handshake's start), first byte or not.
    bool m_fresh = true;
    // A write to the client failed (it reset or went away): a handler
    // failing because of it is not worth a log line.
    bool m_client_gone = false;
    // A handler answered before the request body ended and the rest was
    // too long to drain: linger when closing.
    bool m_body_left = false;
};

}  // namespace hop::http::detail
