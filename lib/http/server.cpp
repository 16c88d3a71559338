// hop::http::server, the facade: bind (options checked), serve, stats,
// shutdown. What it is made of is in lib/http/server_state.hpp.
#include <hop/http/server.hpp>

#include "server_connection.hpp"
#include "server_state.hpp"

#include <hop/io_loop.hpp>

#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

namespace hop::http {

namespace detail {

namespace {

std::string ns_text(std::chrono::nanoseconds d) { return std::to_string(d.count()) + "ns"; }

}  // namespace

namespace {

void validate(const server_options& o) {
    const char* where = "hop::http::server::bind: ";
    if (o.max_connections == 0) {
        throw std::invalid_argument(std::string(where) + "max_connections is 0: at least 1 connection is needed");
    }
    if (o.max_header_bytes == 0) {
        throw std::invalid_argument(std::string(where) + "max_header_bytes is 0: no request head fits");
    }
    auto require_positive = [&](const char* name, std::chrono::nanoseconds d) {
        if (d <= std::chrono::nanoseconds::zero()) {
            throw std::invalid_argument(std::string(where) + name + " is " + ns_text(d) + ": it must be positive");
        }
    };
    require_positive("header_timeout", o.header_timeout);
    require_positive("idle_timeout", o.idle_timeout);
    require_positive("lingering_time", o.lingering_time);
    require_positive("lingering_timeout", o.lingering_timeout);
    require_positive("log_interval", o.log_interval);
    if (o.shutdown_grace < std::chrono::nanoseconds::zero()) {
        throw std::invalid_argument(std::string(where) + "shutdown_grace is " + ns_text(o.shutdown_grace) +
                                    ": it must not be negative");
    }
    if (o.backlog < 1) {
        throw std::invalid_argument(std::string(where) + "backlog is " + std::to_string(o.backlog) +
                                    ": it must be at least 1");
    }
    if (o.accept != accept_mode::least_loaded && o.accept != accept_mode::reuse_port) {
        throw std::invalid_argument(std::string(where) + "accept is " + std::to_string(static_cast<int>(o.accept)) +
                                    ": it must be hop::accept_mode::least_loaded or reuse_port");
    }
    if (o.max_concurrent_streams == 0) {
        throw std::invalid_argument(std::string(where) + "max_concurrent_streams is 0: at least 1 stream is needed");
    }
    if (o.tls && !o.tls->is_server()) {
        throw std::invalid_argument(std::string(where) +
                                    "tls is a client context: use hop::tls::context::server(cert, key)");
    }
}

std::shared_ptr<server_state> make_state(const endpoint& local, server_options options) {
    validate(options);
    // reuse_port: serve(io_pool&) binds more listeners to the same port.
    const listen_options lo{.backlog = options.backlog,
                            .reuse_port = options.reuse_port || options.accept == accept_mode::reuse_port,
                            .reuse_address = true};
    auto st = std::make_shared<server_state>(std::move(options));
    st->m_listener = tcp_listener::bind(local, lo);
    st->m_local = st->m_listener.local_endpoint();
    return st;
}

}  // namespace

}  // namespace detail

// ---- response_writer --------------------------------------------------------

task<void> response_writer::start(int status, headers fields) {
    return m_conn->writer_start(*this, status, std::move(fields));
}
task<void> response_writer::write(std::string_view data) { return m_conn->writer_write(*this, data); }
task<void> response_writer::flush() { return m_conn->writer_flush(*this); }
task<void> response_writer::finish() { return m_conn->writer_finish(*this); }

// ---- request_body -----------------------------------------------------------

task<std::size_t> request_body::read_some(std::span<char> buf) { return m_conn->body_read(*this, buf); }

task<std::string> request_body::read_all() {
    std::string out;
    char buf[16 * 1024];
    while (const std::size_t n = co_await read_some(std::span<char>(buf, sizeof buf))) out.append(buf, n);
    co_return out;
}

// ---- server -------------------------------------------------------------------

namespace {

// What the server agrees to in ALPN, set once per bind: a context shared by
// servers of one kind, already shaking hands on other loops, then sees the
// same list again, which set_alpn leaves alone (no write to race with the
// handshakes that read it). Servers of different kinds (HTTP/2 and not)
// sharing one context would rewrite each other's list: each needs its own.
void offer_alpn(detail::server_state& st, bool h2) {
    if (!st.m_options.tls) return;
    if (h2) {
        st.m_options.tls->set_alpn({"h2", "http/1.1"});
    } else {
        st.m_options.tls->set_alpn({"http/1.1"});
    }
}

}  // namespace

server server::bind_plain(const endpoint& local, handler h, server_options options) {
    if (!h) throw std::invalid_argument("hop::http::server::bind: the handler is empty");
    auto st = detail::make_state(local, std::move(options));
    st->m_plain = std::move(h);
    // HTTP/2 serves the plain handler (lib/http/h2_server.hpp): offered in ALPN.
    offer_alpn(*st, st->m_options.http2);
    return server(std::move(st));
}

server server::bind_streaming(const endpoint& local, stream_handler h, server_options options) {
    if (!h) throw std::invalid_argument("hop::http::server::bind: the handler is empty");
    auto st = detail::make_state(local, std::move(options));
    st->m_streaming = std::move(h);
    offer_alpn(*st, false);
    return server(std::move(st));
}

server server::bind_body(const endpoint& local, body_handler h, server_options options) {
    if (!h) throw std::invalid_argument("hop::http::server::bind: the handler is empty");
    auto st = detail::make_state(local, std::move(options));
    st->m_body_stream = std::move(h);
    offer_alpn(*st, false);
    return server(std::move(st));
}

server& server::operator=(server&& other) noexcept {
    if (this != &other) {
        if (m_state) m_state->request_shutdown();
        m_state = std::move(other.m_state);
    }
    return *this;
}

server::~server() {
    if (m_state) m_state->request_shutdown();
}

endpoint server::local_endpoint() const {
    if (!m_state) throw std::logic_error("hop::http::server::local_endpoint: the server is empty");
    return m_state->m_local;
}

task<void> server::serve() { return detail::server_state::serve_one(m_state); }

task<void> server::serve(io_pool& loops) { return detail::server_state::serve_pool(m_state, loops); }

void server::shutdown() noexcept {
    if (m_state) m_state->request_shutdown();
}

server_stats server::stats() const noexcept {
    server_stats s;
    if (!m_state) return s;
    const std::size_t n = m_state->m_shard_count.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) {
        const detail::server_shard& sh = *m_state->m_shards[i];
        s.connections += sh.m_load.load(std::memory_order_relaxed);
        s.accepted += sh.m_accepted.load(std::memory_order_relaxed);
        s.requests += sh.m_requests.load(std::memory_order_relaxed);
        s.accept_failures += sh.m_accept_failures.load(std::memory_order_relaxed);
    }
    return s;
}

}  // namespace hop::http
