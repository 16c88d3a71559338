#pragma once
/// @file
/// Networking. For now: hop::endpoint (IPv4 and IPv6 socket addresses).
/// resolve, tcp_stream, tcp_listener and udp_socket are not available yet.

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace hop {

/// An IPv4 or IPv6 address and a port: what sockets bind and connect to.
///
/// @code
/// auto a = hop::endpoint::parse("127.0.0.1:8080");
/// auto b = hop::endpoint::parse("[::1]:80");
/// a.port();         // 8080
/// b.to_string();    // "[::1]:80"
/// @endcode
class endpoint {
public:
    /// 0.0.0.0:0.
    endpoint() noexcept;

    /// Parses "a.b.c.d:port" or "[ipv6]:port" (an IPv6 scope is "[fe80::1%2]"
    /// or "[fe80::1%eth0]"). Names are not looked up here: use hop::resolve.
    /// @throws std::invalid_argument naming the text and what is wrong with it.
    static endpoint parse(std::string_view text);

    /// From a socket address of family AF_INET or AF_INET6.
    /// @throws std::invalid_argument for another family or a short length.
    static endpoint from_sockaddr(const sockaddr* address, socklen_t length);

    static endpoint loopback_v4(std::uint16_t port) noexcept;
    static endpoint loopback_v6(std::uint16_t port) noexcept;
    static endpoint any_v4(std::uint16_t port) noexcept;
    static endpoint any_v6(std::uint16_t port) noexcept;

    bool is_v4() const noexcept { return m_addr.v4.sin_family == AF_INET; }
    bool is_v6() const noexcept { return m_addr.v6.sin6_family == AF_INET6; }
    std::uint16_t port() const noexcept;
    /// The same address with another port.
    endpoint with_port(std::uint16_t port) const noexcept;
    /// "127.0.0.1", "::1", "fe80::1%2".
    std::string address() const;
    /// "127.0.0.1:8080", "[::1]:80": what parse() reads back.
    std::string to_string() const;

    const sockaddr* data() const noexcept { return reinterpret_cast<const sockaddr*>(&m_addr); }
    socklen_t size() const noexcept { return is_v4() ? sizeof(sockaddr_in) : sizeof(sockaddr_in6); }

    friend bool operator==(const endpoint& a, const endpoint& b) noexcept;

private:
    union {
        sockaddr_in v4;
        sockaddr_in6 v6;
    } m_addr;
};

}  // namespace hop
