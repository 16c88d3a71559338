// Proxies for hop::http::client: the proxy URL, NO_PROXY, the environment
// and CONNECT (see proxy.hpp).

#include "proxy.hpp"

#include <hop/http/client.hpp>

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace hop::http::detail {

namespace {

char lower(char c) noexcept { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

std::string lowered(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = lower(c);
    return out;
}

std::string_view trim(std::string_view s) noexcept {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// `text` for a message: the password (if any) replaced by "***", control
// bytes escaped, at most 200 bytes.
std::string without_password(std::string_view text) {
    std::string t(text);
    const std::size_t start = t.find("://") == std::string::npos ? 0 : t.find("://") + 3;
    const std::size_t end = std::min(t.find('/', start), t.size());
    const std::size_t at = t.rfind('@', end == 0 ? 0 : end - 1);
    if (at != std::string::npos && at >= start) {
        const std::size_t colon = t.find(':', start);
        if (colon != std::string::npos && colon < at) t.replace(colon + 1, at - colon - 1, "***");
    }
    std::string out;
    for (char c : t.substr(0, std::min<std::size_t>(t.size(), 200))) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
            static const char hex[] = "0123456789abcdef";
            out += "\\x";
            out += hex[(static_cast<unsigned char>(c) >> 4) & 0xf];
            out += hex[static_cast<unsigned char>(c) & 0xf];
        } else {
            out += c;
        }
    }
    if (t.size() > 200) out += "\u2026";
    return out;
}

// host for a URI or a CONNECT target: IPv6 in brackets.
std::string bracketed(const std::string& host) {
    return host.find(':') != std::string::npos ? "[" + host + "]" : host;
}

// The bytes of an IPv4 or IPv6 address (brackets allowed), or none.
std::optional<std::vector<std::uint8_t>> ip_bytes(std::string_view text) {
    if (text.size() >= 2 && text.front() == '[' && text.back() == ']') text = text.substr(1, text.size() - 2);
    const std::string s(text);
    std::array<std::uint8_t, 16> b{};
    if (::inet_pton(AF_INET, s.c_str(), b.data()) == 1) return std::vector<std::uint8_t>(b.begin(), b.begin() + 4);
    if (::inet_pton(AF_INET6, s.c_str(), b.data()) == 1) return std::vector<std::uint8_t>(b.begin(), b.end());
    return std::nullopt;
}

bool prefix_equal(const std::vector<std::uint8_t>& a, const std::vector<std::uint8_t>& b, int bits) {
    if (a.size() != b.size()) return false;
    if (bits < 0) return a == b;
    for (std::size_t i = 0; i < a.size() && bits > 0; ++i, bits -= 8) {
        const std::uint8_t mask = bits >= 8 ? 0xff : static_cast<std::uint8_t>(0xff << (8 - bits));
        if ((a[i] & mask) != (b[i] & mask)) return false;
    }
    return true;
}

std::uint16_t parse_port(std::string_view text, bool& ok) {
    unsigned v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    ok = !text.empty() && ec == std::errc() && end == text.data() + text.size() && v > 0 && v <= 65535;
    return static_cast<std::uint16_t>(v);
}

}  // namespace

std::string percent_decode(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    const auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        c = lower(c);
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return -1;
    };
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '%') {
            out += s[i];
            continue;
        }
        const int hi = i + 1 < s.size() ? hex(s[i + 1]) : -1;
        const int lo = i + 2 < s.size() ? hex(s[i + 2]) : -1;
        if (hi < 0 || lo < 0) throw std::invalid_argument("a '%' not followed by two hex digits");
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
    }
    return out;
}

std::string basic_credentials(std::string_view user, std::string_view password) {
    std::string in(user);
    in += ':';
    in += password;
    static const char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out = "Basic ";
    std::size_t i = 0;
    for (; i + 3 <= in.size(); i += 3) {
        const std::uint32_t v = (static_cast<std::uint8_t>(in[i]) << 16) | (static_cast<std::uint8_t>(in[i + 1]) << 8) |
                                static_cast<std::uint8_t>(in[i + 2]);
        out += table[(v >> 18) & 63];
        out += table[(v >> 12) & 63];
        out += table[(v >> 6) & 63];
        out += table[v & 63];
    }
    if (const std::size_t rest = in.size() - i; rest > 0) {
        std::uint32_t v = static_cast<std::uint8_t>(in[i]) << 16;
        if (rest == 2) v |= static_cast<std::uint8_t>(in[i + 1]) << 8;
        out += table[(v >> 18) & 63];
        out += table[(v >> 12) & 63];
        out += rest == 2 ? table[(v >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

proxy_endpoint parse_proxy_url(std::string_view text, std::string_view what) {
    const auto fail = [&](const std::string& why) {
        return std::invalid_argument("hop::http::client: " + std::string(what) + " '" + without_password(text) +
                                     "' is not a proxy URL: " + why);
    };
    std::string_view rest = trim(text);
    if (rest.empty()) throw fail("it is empty");
    if (const auto sep = rest.find("://"); sep != std::string_view::npos) {
        const std::string scheme = lowered(rest.substr(0, sep));
        if (scheme == "https") {
            throw fail("https:// proxies (TLS to the proxy) are not supported: use http://, which still carries "
                       "https:// requests end to end encrypted through CONNECT");
        }
        if (scheme != "http") throw fail("the scheme '" + scheme + "' is not supported (only http:// proxies)");
        rest.remove_prefix(sep + 3);
    }
    const std::size_t slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    if (slash != std::string_view::npos && rest.substr(slash) != "/") {
        throw fail("a proxy URL has no path (give http://host:port)");
    }
    if (authority.find_first_of("?#") != std::string_view::npos) throw fail("a proxy URL has no query or fragment");
    proxy_endpoint p;
    std::string user;
    std::string user_shown;  // as written (not decoded), for messages
    if (const auto at = authority.rfind('@'); at != std::string_view::npos) {
        const std::string_view info = authority.substr(0, at);
        authority.remove_prefix(at + 1);
        const auto colon = info.find(':');
        user_shown = without_password(info.substr(0, colon));
        try {
            user = percent_decode(info.substr(0, colon));
            const std::string password = colon == std::string_view::npos ? "" : percent_decode(info.substr(colon + 1));
            p.authorization = basic_credentials(user, password);
        } catch (const std::invalid_argument& e) {
            throw fail(std::string("its credentials hold ") + e.what());
        }
        if (user.empty()) throw fail("credentials without a user name");
    }
    if (authority.empty()) throw fail("no host");
    url u;
    try {
        u = url::parse("http://" + std::string(authority) + "/");
    } catch (const std::invalid_argument& e) {
        throw fail(e.what());
    }
    p.host = u.host;
    p.port = u.port;
    const std::string hostport = bracketed(p.host) + ":" + std::to_string(p.port);
    p.shown = "http://" + (user_shown.empty() ? "" : user_shown + "@") + hostport;
    p.key = "http://" + hostport + (p.authorization.empty() ? "" : " " + p.authorization);
    return p;
}

// ---- NO_PROXY ----------------------------------------------------------------------

no_proxy_list no_proxy_list::parse(std::string_view text, std::string_view what) {
    no_proxy_list list;
    std::size_t i = 0;
    while (i < text.size()) {
        const std::size_t end = std::min(text.find_first_of(", \t", i), text.size());
        const std::string entry = lowered(text.substr(i, end - i));
        i = end + 1;
        if (entry.empty()) continue;
        const auto fail = [&](const std::string& why) {
            return std::invalid_argument("hop::http::client: " + std::string(what) + ": the entry '" +
                                         without_password(entry) + "' " + why);
        };
        if (entry == "*") {
            list.everything = true;
            continue;
        }
        no_proxy_rule r;
        std::string_view host = entry;
        // host:port, [v6]:port, [v6]; a bare IPv6 address has several colons.
        if (host.front() == '[') {
            const auto close = host.find(']');
            if (close == std::string_view::npos) throw fail("has '[' without ']'");
            const std::string_view after = host.substr(close + 1);
            host = host.substr(1, close - 1);
            if (!after.empty()) {
                bool ok = false;
                if (after.front() == ':') r.port = parse_port(after.substr(1), ok);
                if (!ok) throw fail("has a bad port (expected [address]:port, port 1-65535)");
            }
        } else if (std::count(host.begin(), host.end(), ':') == 1) {
            const auto colon = host.find(':');
            bool ok = false;
            r.port = parse_port(host.substr(colon + 1), ok);
            if (!ok) throw fail("has a bad port (expected host:port, port 1-65535)");
            host = host.substr(0, colon);
        }
        std::string_view bits;
        bool has_bits = false;
        if (const auto slash = host.find('/'); slash != std::string_view::npos) {
            bits = host.substr(slash + 1);
            has_bits = true;
            host = host.substr(0, slash);
        }
        if (auto ip = ip_bytes(host)) {
            r.ip = std::move(*ip);
            if (has_bits) {
                unsigned n = 0;
                auto [p, ec] = std::from_chars(bits.data(), bits.data() + bits.size(), n);
                if (bits.empty() || ec != std::errc() || p != bits.data() + bits.size() || n > r.ip.size() * 8) {
                    throw fail("has a bad CIDR prefix length (0-" + std::to_string(r.ip.size() * 8) + ")");
                }
                r.prefix_bits = static_cast<int>(n);
            }
        } else {
            if (has_bits) throw fail("has a CIDR prefix after something not an address");
            if (host.substr(0, 2) == "*.") host.remove_prefix(2);
            while (!host.empty() && host.front() == '.') host.remove_prefix(1);
            while (!host.empty() && host.back() == '.') host.remove_suffix(1);
            if (host.empty()) throw fail("names no host");
            r.name = std::string(host);
        }
        list.rules.push_back(std::move(r));
    }
    return list;
}

bool no_proxy_list::matches(std::string_view host, std::uint16_t port) const {
    if (everything) return true;
    if (rules.empty()) return false;
    const std::string h = lowered(host);
    std::string_view name = h;
    while (!name.empty() && name.back() == '.') name.remove_suffix(1);
    const auto ip = ip_bytes(name);
    for (const auto& r : rules) {
        if (r.port != 0 && r.port != port) continue;
        if (!r.ip.empty()) {
            if (ip && prefix_equal(*ip, r.ip, r.prefix_bits)) return true;
            continue;
        }
        // An address is matched by addresses only (curl): ".0.0.1" is no
        // suffix of 127.0.0.1.
        if (ip) continue;
        if (name == r.name) return true;
        if (name.size() > r.name.size() && name.substr(name.size() - r.name.size()) == r.name &&
            name[name.size() - r.name.size() - 1] == '.') {
            return true;
        }
    }
    return false;
}

// ---- the table -------------------------------------------------------------------------

proxy_table proxy_table::make(const std::string& proxy, const std::string& no_proxy, bool trust_env,
                              const std::function<const char*(const char*)>& getenv) {
    proxy_table t;
    if (!proxy.empty()) {
        t.m_http = parse_proxy_url(proxy, "client_options::proxy");
        t.m_https = t.m_http;
        t.m_bypass = no_proxy_list::parse(no_proxy, "client_options::no_proxy");
        return t;
    }
    if (!no_proxy.empty()) t.m_bypass = no_proxy_list::parse(no_proxy, "client_options::no_proxy");
    if (!trust_env) return t;
    const auto env = [&](const char* name) -> const char* {
        const char* v = getenv ? getenv(name) : std::getenv(name);
        return v != nullptr && *v != '\0' ? v : nullptr;
    };
    // The lower-case form first; `upper` may be null (not consulted).
    const auto lookup = [&](const char* low, const char* upper) -> std::optional<proxy_endpoint> {
        for (const char* name : {low, upper}) {
            if (name == nullptr) continue;
            if (const char* v = env(name)) {
                return parse_proxy_url(v, std::string("the environment variable ") + name);
            }
        }
        return std::nullopt;
    };
    const bool cgi = env("REQUEST_METHOD") != nullptr;
    auto all = lookup("all_proxy", "ALL_PROXY");
    t.m_http = lookup("http_proxy", cgi ? nullptr : "HTTP_PROXY");
    if (!t.m_http) t.m_http = all;
    t.m_https = lookup("https_proxy", "HTTPS_PROXY");
    if (!t.m_https) t.m_https = all;
    if (no_proxy.empty()) {
        for (const char* name : {"no_proxy", "NO_PROXY"}) {
            if (const char* v = env(name)) {
                t.m_bypass = no_proxy_list::parse(v, std::string("the environment variable ") + name);
                break;
            }
        }
    }
    return t;
}

const proxy_endpoint* proxy_table::route(const url& target) const {
    const std::optional<proxy_endpoint>& p = target.scheme == "https" ? m_https : m_http;
    if (!p || m_bypass.matches(target.host, target.port)) return nullptr;
    return &*p;
}

// ---- CONNECT -------------------------------------------------------------------------------

task<void> open_tunnel(transport& io, const proxy_endpoint& proxy, const url& target, const std::string& user_agent,
                       const std::string& authorization, std::size_t max_head) {
    const std::string authority = bracketed(target.host) + ":" + std::to_string(target.port);
    std::string out = "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n";
    if (!user_agent.empty()) out += "User-Agent: " + user_agent + "\r\n";
    if (!authorization.empty()) out += "Proxy-Authorization: " + authorization + "\r\n";
    out += "\r\n";
    co_await io.write_all(std::string_view(out));
    const std::string where = "the proxy " + proxy.shown + " ";
    std::string head;
    std::array<char, 4096> buf;
    std::size_t end = std::string::npos;
    while ((end = head.find("\r\n\r\n")) == std::string::npos) {
        if (head.size() > max_head) {
            throw protocol_error("hop::http::client: " + where + "answered CONNECT " + authority +
                                 " with a head over " + std::to_string(max_head) + " bytes (max_header_bytes)");
        }
        const std::size_t n = co_await io.read_some(std::span<char>(buf));
        if (n == 0) {
            throw proxy_error("hop::http::client: " + where + "closed the connection before answering CONNECT " +
                                  authority + (head.empty() ? "" : " (after " + std::to_string(head.size()) + " bytes)"),
                              0);
        }
        head.append(buf.data(), n);
    }
    const std::string line = head.substr(0, head.find("\r\n"));
    int status = 0;
    if (line.size() >= 12 && line.compare(0, 7, "HTTP/1.") == 0 && line[8] == ' ') {
        auto [p, ec] = std::from_chars(line.data() + 9, line.data() + 12, status);
        if (ec != std::errc() || p != line.data() + 12 || (line.size() > 12 && line[12] != ' ')) status = 0;
    }
    if (status < 100 || status > 999) {
        throw protocol_error("hop::http::client: " + where + "answered CONNECT " + authority +
                             " with something not HTTP: '" + without_password(line) + "'");
    }
    if (status < 200 || status > 299) {
        const std::string reason(trim(std::string_view(line).substr(12)));
        std::string why = "hop::http::client: " + where + "refused CONNECT " + authority + ": " +
                          std::to_string(status) + (reason.empty() ? "" : " " + without_password(reason));
        if (status == 407) {
            why += authorization.empty() ? " (it wants credentials: http://user:password@host:port)"
                                               : " (it did not accept the credentials in the proxy URL)";
        }
        throw proxy_error(why, status);
    }
    if (end + 4 != head.size()) {
        throw protocol_error("hop::http::client: " + where + "sent " + std::to_string(head.size() - end - 4) +
                             " bytes after its answer to CONNECT " + authority + ", before the TLS handshake");
    }
}

}  // namespace hop::http::detail
