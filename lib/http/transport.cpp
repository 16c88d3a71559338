// hop::http's byte stream: TCP, or TLS over TCP (lib/http/transport.hpp).

#include "transport.hpp"

#include <hop/io_loop.hpp>

#include <hop/detail/assert.hpp>

#include <sys/socket.h>

#include <cerrno>
#include <system_error>

namespace hop::http::detail {

task<void> transport::start_tls_client(const tls::context& ctx, std::string host_name) {
    m_tls = std::make_unique<tls::stream>(co_await tls::stream::connect(ctx, std::move(m_tcp), std::move(host_name)));
}

task<void> transport::start_tls_server(const tls::context& ctx) {
    m_tls = std::make_unique<tls::stream>(co_await tls::stream::accept(ctx, std::move(m_tcp)));
}

void transport::try_write(std::string_view bytes) noexcept {
    if (m_tls) {
        m_tls->try_write(bytes);
        return;
    }
    if (!m_tcp.is_open()) return;
    [[maybe_unused]] auto r = ::send(m_tcp.native_handle(), bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

task<std::size_t> transport::write_parts_tls(tls::stream& s, std::span<const std::string_view> parts) {
    // What fits in one TLS record goes as one (one SSL_write, one send);
    // larger parts are written as they are, without a copy.
    constexpr std::size_t record = 16 * 1024;
    std::size_t total = 0;
    for (auto p : parts) total += p.size();
    if (total <= record) {
        std::string joined;
        joined.reserve(total);
        for (auto p : parts) joined.append(p);
        co_await s.write_all(joined);
        co_return total;
    }
    for (auto p : parts) co_await s.write_all(p);
    co_return total;
}

bool transport::cheap_readiness_wait() const noexcept {
    if (m_tls) return false;
    const io_loop* loop = current_loop();
    return loop != nullptr && loop->backend_kind() == hop::backend::epoll;
}

hop::detail::fd_wait_operation transport::wait_readable() {
    HOP_ASSERT(!m_tls);
    return m_tcp.wait_readable();
}

std::size_t transport::try_read_some(std::span<char> buf, std::size_t nothing) {
    HOP_ASSERT(!m_tls);
    for (;;) {
        const ssize_t n = ::recv(m_tcp.native_handle(), buf.data(), buf.size(), MSG_DONTWAIT);
        if (n >= 0) return static_cast<std::size_t>(n);
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return nothing;
        throw std::system_error(errno, std::system_category(), "hop::http: recv");
    }
}

task<bool> transport::end_output(std::chrono::milliseconds tls_wait) {
    if (m_tls) {
        co_await m_tls->shutdown(tls_wait);
        co_return false;
    }
    m_tcp.shutdown_write();
    co_return true;
}

task<void> transport::close_gracefully() {
    if (m_tls && m_tls->is_open()) {
        try {
            co_await m_tls->shutdown(std::chrono::milliseconds(0));
        } catch (const std::exception&) {
            // A peer that already left: the close below is all there is.
        }
    }
    close();
}

void transport::close() noexcept {
    if (m_tls) m_tls->close();
    m_tcp.close();
}

}  // namespace hop::http::detail
