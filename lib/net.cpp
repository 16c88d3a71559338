#include <hop/net.hpp>

#include <hop/file.hpp>

#include <netdb.h>

#include <arpa/inet.h>
#include <net/if.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace hop {

namespace {

[[noreturn]] void bad_endpoint(std::string_view text, const char* why) {
    throw std::invalid_argument("hop::endpoint::parse: '" + std::string(text) + "' is not an endpoint: " + why +
                                " (expected 'a.b.c.d:port' or '[ipv6]:port'; for a host name use hop::resolve)");
}

// 0 to 65535, digits only.
bool parse_port(std::string_view s, std::uint16_t& out) {
    if (s.empty() || s.size() > 5) return false;
    unsigned v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
        v = v * 10 + static_cast<unsigned>(c - '0');
    }
    if (v > 65535) return false;
    out = static_cast<std::uint16_t>(v);
    return true;
}

}  // namespace

endpoint::endpoint() noexcept {
    std::memset(&m_addr, 0, sizeof m_addr);
    m_addr.v4.sin_family = AF_INET;
}

endpoint endpoint::parse(std::string_view text) {
    if (text.empty()) bad_endpoint(text, "it is empty");
    endpoint e;
    std::string_view host, port_text;
    if (text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string_view::npos) bad_endpoint(text, "the '[' of an IPv6 address is not closed");
        host = text.substr(1, close - 1);
        auto rest = text.substr(close + 1);
        if (rest.empty() || rest.front() != ':') bad_endpoint(text, "a ':port' must follow ']'");
        port_text = rest.substr(1);
        e.reset_v6(in6addr_any);
        std::string h(host);
        if (auto pct = h.find('%'); pct != std::string::npos) {
            std::string scope = h.substr(pct + 1);
            h.resize(pct);
            if (scope.empty()) bad_endpoint(text, "the IPv6 scope after '%' is empty");
            unsigned id = 0;
            bool numeric = scope.find_first_not_of("0123456789") == std::string::npos && scope.size() <= 9;
            id = numeric ? static_cast<unsigned>(std::stoul(scope)) : ::if_nametoindex(scope.c_str());
            if (id == 0) bad_endpoint(text, "the IPv6 scope names no interface");
            e.m_addr.v6.sin6_scope_id = id;
        }
        if (h.empty() || ::inet_pton(AF_INET6, h.c_str(), &e.m_addr.v6.sin6_addr) != 1) {
            bad_endpoint(text, "the part in brackets is not an IPv6 address");
        }
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string_view::npos) bad_endpoint(text, "the ':port' is missing");
        host = text.substr(0, colon);
        port_text = text.substr(colon + 1);
        if (host.find(':') != std::string_view::npos) bad_endpoint(text, "an IPv6 address must be in brackets");
        std::string h(host);
        if (h.empty() || ::inet_pton(AF_INET, h.c_str(), &e.m_addr.v4.sin_addr) != 1) {
            bad_endpoint(text, "the part before ':' is not an IPv4 address");
        }
    }
    std::uint16_t port = 0;
    if (!parse_port(port_text, port)) bad_endpoint(text, "the port is not a number from 0 to 65535");
    return e.with_port(port);
}

endpoint endpoint::from_sockaddr(const sockaddr* address, socklen_t length) {
    if (address == nullptr) throw std::invalid_argument("hop::endpoint::from_sockaddr: the address is null");
    endpoint e;
    std::memset(&e.m_addr, 0, sizeof e.m_addr);
    if (address->sa_family == AF_INET && length >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
        std::memcpy(&e.m_addr.v4, address, sizeof(sockaddr_in));
    } else if (address->sa_family == AF_INET6 && length >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
        std::memcpy(&e.m_addr.v6, address, sizeof(sockaddr_in6));
    } else {
        throw std::invalid_argument("hop::endpoint::from_sockaddr: family " + std::to_string(address->sa_family) +
                                    " with length " + std::to_string(length) +
                                    " is not an IPv4 or IPv6 socket address");
    }
    return e;
}

endpoint endpoint::loopback_v4(std::uint16_t port) noexcept {
    endpoint e;
    e.m_addr.v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return e.with_port(port);
}

endpoint endpoint::loopback_v6(std::uint16_t port) noexcept {
    endpoint e;
    e.reset_v6(in6addr_loopback);
    return e.with_port(port);
}

endpoint endpoint::any_v4(std::uint16_t port) noexcept { return endpoint{}.with_port(port); }

endpoint endpoint::any_v6(std::uint16_t port) noexcept {
    endpoint e;
    e.reset_v6(in6addr_any);
    return e.with_port(port);
}

void endpoint::reset_v6(const in6_addr& address) noexcept {
    std::memset(&m_addr, 0, sizeof m_addr);
    m_addr.v6.sin6_family = AF_INET6;
    m_addr.v6.sin6_addr = address;
}

std::uint16_t endpoint::port() const noexcept { return ntohs(is_v4() ? m_addr.v4.sin_port : m_addr.v6.sin6_port); }

endpoint endpoint::with_port(std::uint16_t port) const noexcept {
    endpoint e = *this;
    if (is_v4()) {
        e.m_addr.v4.sin_port = htons(port);
    } else {
        e.m_addr.v6.sin6_port = htons(port);
    }
    return e;
}

std::string endpoint::address() const {
    char buf[INET6_ADDRSTRLEN] = {};
    if (is_v4()) {
        ::inet_ntop(AF_INET, &m_addr.v4.sin_addr, buf, sizeof buf);
        return buf;
    }
    ::inet_ntop(AF_INET6, &m_addr.v6.sin6_addr, buf, sizeof buf);
    std::string s = buf;
    if (m_addr.v6.sin6_scope_id != 0) {
        s += '%';
        s += std::to_string(m_addr.v6.sin6_scope_id);
    }
    return s;
}

std::string endpoint::to_string() const {
    // Appended piece by piece: GCC 12 warns (-Wrestrict, falsely) on a chain
    // of operator+ at -O3.
    std::string s;
    if (is_v6()) s += '[';
    s += address();
    s += is_v6() ? "]:" : ":";
    s += std::to_string(port());
    return s;
}

bool operator==(const endpoint& a, const endpoint& b) noexcept {
    if (a.is_v4() != b.is_v4()) return false;
    if (a.is_v4()) {
        return a.m_addr.v4.sin_port == b.m_addr.v4.sin_port && a.m_addr.v4.sin_addr.s_addr == b.m_addr.v4.sin_addr.s_addr;
    }
    return a.m_addr.v6.sin6_port == b.m_addr.v6.sin6_port &&
           std::memcmp(&a.m_addr.v6.sin6_addr, &b.m_addr.v6.sin6_addr, sizeof(in6_addr)) == 0 &&
           a.m_addr.v6.sin6_scope_id == b.m_addr.v6.sin6_scope_id;
}

namespace detail {

namespace {
class gai_category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "getaddrinfo"; }
    std::string message(int code) const override { return ::gai_strerror(code); }
};
const std::error_category& gai_category() {
    static gai_category_impl c;
    return c;
}
}  // namespace

future<std::vector<endpoint>> resolve_blocking(std::string host, std::uint16_t port) {
    if (host.empty()) throw std::invalid_argument("hop::resolve: the host name is empty");
    if (host.find('\0') != std::string::npos) {
        throw std::invalid_argument("hop::resolve: the host name contains a NUL byte");
    }
    return run_blocking([host = std::move(host), port]() {
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_ADDRCONFIG;
        addrinfo* list = nullptr;
        const std::string service = std::to_string(port);
        int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &list);
        if (rc == EAI_SYSTEM) {
            throw std::system_error(errno, std::generic_category(), "hop::resolve: '" + host + "'");
        }
        if (rc != 0) throw std::system_error(rc, gai_category(), "hop::resolve: '" + host + "'");
        std::vector<endpoint> out;
        for (auto* a = list; a; a = a->ai_next) {
            if (a->ai_family != AF_INET && a->ai_family != AF_INET6) continue;
            auto e = endpoint::from_sockaddr(a->ai_addr, a->ai_addrlen);
            bool seen = false;
            for (auto& x : out) seen = seen || x == e;
            if (!seen) out.push_back(e);
        }
        ::freeaddrinfo(list);
        return out;
    });
}

}  // namespace detail

}  // namespace hop
