#pragma once
// Private to hop::http::client: which proxy (if any) a request goes
// through, and the CONNECT that opens a tunnel through one.
//
//   proxy_endpoint  one proxy: host, port, its Basic credentials, and how
//                   error messages name it (never with the password);
//   proxy_table     what client_options::proxy / no_proxy / trust_env say,
//                   read once when the client is made: the proxy for http://
//                   and for https:// URLs, and the NO_PROXY rules;
//   open_tunnel     CONNECT host:port through a proxy, on a transport
//                   already connected to it.
//
// NO_PROXY has curl's and Python's meaning: a comma- (or space-) separated
// list of host names, each matching itself and its subdomains, with or
// without a leading dot ("example.org" and ".example.org" both match
// example.org and a.example.org; "*.example.org" the same); IP addresses
// (IPv6 with or without brackets) and CIDR blocks ("10.0.0.0/8", as Go),
// which alone match a host given as an address;
// an entry with ":port" matches that port only; "*" alone bypasses every
// proxy. Case does not matter. Loopback is not special (curl's rule):
// list "localhost,127.0.0.1" to bypass it.

#include "transport.hpp"

#include <hop/http/message.hpp>
#include <hop/task.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hop::http::detail {

/// One http:// proxy.
struct proxy_endpoint {
    std::string host;  ///< lower case, IPv6 without brackets
    std::uint16_t port = 80;
    /// "Basic <base64(user:password)>" from the proxy URL's (percent-decoded)
    /// credentials; "" without credentials.
    std::string authorization;
    /// How messages name the proxy: "http://host:port" (the user name, but
    /// never the password, when there are credentials).
    std::string shown;
    /// Part of the pool's keys: connections through this proxy with these
    /// credentials.
    std::string key;
};

/// Parses a proxy URL, "http://[user:password@]host[:port][/]" (the scheme
/// may be left out: http is assumed; the port defaults to 80).
/// `what` names where the value came from ("client_options::proxy",
/// "the environment variable HTTPS_PROXY"), for the error.
/// @throws std::invalid_argument naming `what` and the value (its password
///         hidden): another scheme (https://, socks5://...), an empty or bad
///         host, a bad port, a path, a bad percent-escape.
proxy_endpoint parse_proxy_url(std::string_view text, std::string_view what);

/// One NO_PROXY entry.
struct no_proxy_rule {
    std::string name;          ///< a host name suffix (lower case, no leading dot), or
    std::vector<std::uint8_t> ip;  ///< an address (4 or 16 bytes) ...
    int prefix_bits = -1;      ///< ... with a CIDR prefix (-1: the whole address)
    std::uint16_t port = 0;    ///< 0: any port
};

/// NO_PROXY's rules.
struct no_proxy_list {
    bool everything = false;  ///< "*"
    std::vector<no_proxy_rule> rules;

    /// @throws std::invalid_argument naming `what` and the entry for a bad
    ///         port or CIDR prefix.
    static no_proxy_list parse(std::string_view text, std::string_view what);
    /// Whether a request to host:port goes direct (host as url::host:
    /// lower case, IPv6 without brackets).
    bool matches(std::string_view host, std::uint16_t port) const;
};

/// The proxies a client uses.
class proxy_table {
public:
    /// From the options: `proxy` (with `no_proxy`) if set, else with
    /// `trust_env` the environment (read now, once): http_proxy /
    /// HTTP_PROXY for http:// URLs (the upper-case form is ignored when
    /// REQUEST_METHOD is set: a CGI program's HTTP_PROXY may come from a
    /// request's "Proxy:" field), https_proxy / HTTPS_PROXY for https://,
    /// all_proxy / ALL_PROXY for either when its own is unset, and
    /// no_proxy / NO_PROXY (each lower-case form first, as curl and Python).
    /// `getenv` is std::getenv unless a test gives another.
    /// @throws std::invalid_argument naming the option or variable and the value.
    static proxy_table make(const std::string& proxy, const std::string& no_proxy, bool trust_env,
                            const std::function<const char*(const char*)>& getenv = {});

    /// The proxy for `target`, or null for a direct connection.
    const proxy_endpoint* route(const url& target) const;
    bool empty() const noexcept { return !m_http && !m_https; }

private:
    std::optional<proxy_endpoint> m_http;
    std::optional<proxy_endpoint> m_https;
    no_proxy_list m_bypass;
};

/// "Basic " + base64("user:password").
std::string basic_credentials(std::string_view user, std::string_view password);

/// Percent-decodes `s`. @throws std::invalid_argument for a bad escape.
std::string percent_decode(std::string_view s);

/// Sends `CONNECT host:port` on `io` (connected to `proxy`) and reads the
/// answer. Returns once the tunnel is open (a 2xx); the transport then
/// carries the bytes to and from host:port. `authorization` (if not empty)
/// is sent as Proxy-Authorization; `max_head` bounds the answer's head.
/// @throws proxy_error naming the proxy, the target and the status (a 407,
///         any other refusal) or the proxy closing before it answered;
///         protocol_error for an answer that is not HTTP.
task<void> open_tunnel(transport& io, const proxy_endpoint& proxy, const url& target, const std::string& user_agent,
                       const std::string& authorization, std::size_t max_head);

}  // namespace hop::http::detail
