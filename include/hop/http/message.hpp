#pragma once
/// @file
/// hop::http value types — headers, request, response, url — and the HTTP
/// errors. A handler and a client speak the same types, like Go's net/http
/// and Python's requests.

#include <hop/future.hpp>
#include <hop/task.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hop::http {

/// Header fields in the order they were added; names compare
/// case-insensitively, as HTTP says. Repeated names are kept (Set-Cookie).
///
/// @code
/// hop::http::headers h;
/// h.add("Accept", "text/plain");
/// h.set("content-type", "application/json");   // replaces every Content-Type
/// std::optional<std::string_view> v = h.get("Content-Type");
/// @endcode
class headers {
public:
    /// One header field, as received or to be sent.
    struct field {
        /// The field name, as written.
        std::string name;
        /// The field value.
        std::string value;
    };
    /// Iterates the fields in order.
    using const_iterator = std::vector<field>::const_iterator;

    headers() = default;
    /// @throws std::invalid_argument as add() does.
    headers(std::initializer_list<std::pair<std::string_view, std::string_view>> fields);

    /// Adds a field (a name may repeat).
    /// @throws std::invalid_argument naming the field when the name is empty
    ///         or not an HTTP token, or the value holds CR, LF or NUL (no
    ///         header injection).
    void add(std::string_view name, std::string_view value);
    /// Replaces every field called `name` with one. @throws as add().
    void set(std::string_view name, std::string_view value);
    /// The first value of `name`, if any.
    std::optional<std::string_view> get(std::string_view name) const noexcept;
    /// Every value of `name`, in order.
    std::vector<std::string_view> get_all(std::string_view name) const;
    /// Whether a field called `name` (any case) is present.
    bool contains(std::string_view name) const noexcept;
    /// Removes every field called `name`; returns how many went.
    std::size_t erase(std::string_view name) noexcept;
    /// Removes every field.
    void clear() noexcept { m_fields.clear(); }

    /// The number of fields (a repeated name counts each time).
    std::size_t size() const noexcept { return m_fields.size(); }
    /// True with no fields.
    bool empty() const noexcept { return m_fields.empty(); }
    /// The first field, in the order added.
    const_iterator begin() const noexcept { return m_fields.begin(); }
    /// Past the last field.
    const_iterator end() const noexcept { return m_fields.end(); }

    /// For parsers whose input was already validated: no checks.
    void add_unchecked(std::string name, std::string value) {
        m_fields.push_back({std::move(name), std::move(value)});
    }

private:
    std::vector<field> m_fields;
};

/// True if `a` and `b` are equal ignoring ASCII case.
bool iequals(std::string_view a, std::string_view b) noexcept;

/// A request body the client sends as it is read, never holding more than
/// one piece (64 KiB) of it: a file, or what a coroutine produces.
///
/// @code
/// hop::http::request up;
/// up.method = "PUT";
/// up.url = "http://127.0.0.1:8080/upload";
/// up.body_source = hop::http::body_source::file("/var/tmp/big.iso");
/// hop::http::response r = co_await client.fetch(std::move(up));
/// @endcode
class body_source {
public:
    /// Fills the span with the body's next bytes and returns how many; 0
    /// ends the body. Awaited on the loop that sends the request, one call
    /// at a time.
    using producer_function = std::function<task<std::size_t>(std::span<char>)>;

    /// The file at `path`, opened when the request is sent; Content-Length
    /// is its size then. Sent again from its start when a 307 or 308
    /// redirect or a retry on a fresh connection needs it.
    /// @throws std::invalid_argument for an empty path.
    static body_source file(std::string path);
    /// What `fn` produces, sent as it comes: with Transfer-Encoding:
    /// chunked, or with Content-Length if `size` is given (a producer that
    /// gives fewer or more bytes fails the request with
    /// std::invalid_argument naming both counts). It can be sent once: a
    /// 307 or 308 redirect is then the response (it is not followed), and
    /// the request goes on a new connection, never a kept-alive one that
    /// might have been closed under it.
    /// @throws std::invalid_argument for an empty function.
    static body_source producer(producer_function fn, std::optional<std::uint64_t> size = std::nullopt);

    /// Whether the body can be sent a second time (a file).
    bool replayable() const noexcept { return !m_path.empty(); }
    /// The file's path ("" for a producer).
    const std::string& path() const noexcept { return m_path; }
    /// The producer (empty for a file).
    const producer_function& producer_fn() const noexcept { return m_produce; }
    /// The producer's declared size, if any (a file's is read when it is sent).
    std::optional<std::uint64_t> declared_size() const noexcept { return m_size; }

private:
    std::string m_path;
    producer_function m_produce;
    std::optional<std::uint64_t> m_size;
};

/// A request: what a client sends and what a server's handler receives.
/// On the client `url` is absolute ("http://host:port/path?q"); on the
/// server it is the request target as sent ("/path?q").
struct request {
    /// The method, e.g. "GET", "POST".
    std::string method = "GET";
    /// The absolute URL (client) or the request target as received (server).
    std::string url{};
    /// The header fields.
    http::headers headers{};
    /// The body.
    std::string body{};
    /// Client only: a body streamed from a file or a producer instead of
    /// `body` (which must then be empty).
    std::optional<http::body_source> body_source{};
};

/// A response: what a client receives and what a handler returns. A status
/// of 400 or more is a response like any other, not an exception.
struct response {
    /// The status code.
    int status = 200;
    /// The header fields.
    http::headers headers{};
    /// The body (the client decodes gzip and deflate unless told not to).
    std::string body{};
};

/// "OK" for 200, "Not Found" for 404...; "" for a code it does not know.
std::string_view reason_phrase(int status) noexcept;

/// An absolute http:// or https:// URL, split.
///
/// @code
/// auto u = hop::http::url::parse("http://[::1]:8080/items?id=1");
/// u.host;      // "::1"
/// u.port;      // 8080
/// u.target;    // "/items?id=1"
/// @endcode
struct url {
    std::string scheme;        ///< "http" or "https"
    std::string host;          ///< a name or an address; IPv6 without brackets
    std::uint16_t port = 80;   ///< the explicit port, or the scheme's default
    std::string target = "/";  ///< path and query ("/" when empty); never the fragment

    /// @throws std::invalid_argument naming the text and what is wrong:
    ///         no or another scheme, an empty host, a bad port, userinfo,
    ///         spaces or control characters.
    static url parse(std::string_view text);
    /// The Host header's value: host, with brackets for IPv6, and ":port"
    /// unless it is the scheme's default.
    std::string authority() const;
    /// "scheme://authority/target".
    std::string to_string() const;
    /// A redirect's Location resolved against this URL (absolute,
    /// scheme-relative "//h/p", absolute-path "/p" or relative "p").
    /// @throws std::invalid_argument for a Location that is none of these.
    url resolve(std::string_view location) const;
    /// Same scheme, host and port.
    bool same_origin(const url& other) const noexcept;
};

/// A malformed or unexpected message from the peer.
class protocol_error : public std::runtime_error {
public:
    /// With a message naming what was malformed and where.
    explicit protocol_error(const std::string& what) : std::runtime_error(what) {}
};

/// More redirects than client_options::max_redirects.
class redirect_error : public std::runtime_error {
public:
    /// With a message naming the redirect and why it was refused.
    explicit redirect_error(const std::string& what) : std::runtime_error(what) {}
};

/// No connection within client_options::connect_timeout.
class connect_timeout : public timeout_error {
public:
    /// With a message naming the timeout and the URL.
    explicit connect_timeout(const std::string& what) : timeout_error(what) {}
};

/// No byte from the peer within client_options::read_timeout.
class read_timeout : public timeout_error {
public:
    /// With a message naming the timeout and the URL.
    explicit read_timeout(const std::string& what) : timeout_error(what) {}
};

/// No free connection within client_options::pool_timeout.
class pool_timeout : public timeout_error {
public:
    /// With a message naming the timeout and the URL.
    explicit pool_timeout(const std::string& what) : timeout_error(what) {}
};

}  // namespace hop::http
