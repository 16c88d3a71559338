#pragma once
// Private to the implementation: HTTP/1.x on the wire. The parser is
// llhttp (Debian's node-llhttp sources), run strictly: no lenient flags.
// The client and the server both build on this file; neither talks to
// llhttp directly.

#include <hop/http/message.hpp>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace hop::http::detail {

/// A message head as parsed.
struct message_head {
    // Requests.
    std::string method;
    std::string target;
    // Responses.
    int status = 0;
    std::string reason;

    int version_major = 1;
    int version_minor = 1;
    http::headers headers;
    /// llhttp's verdict after the head (Connection, version).
    bool keep_alive = false;
    bool chunked = false;
    std::optional<std::uint64_t> content_length;
    /// Request with "Expect: 100-continue".
    bool expect_continue = false;
    /// Upgrade or CONNECT: the connection stops being HTTP after the head.
    bool upgrade = false;
    /// A chunked message's trailer fields; complete at message_end.
    http::headers trailers;
};

/// What went wrong, and the status a server answers it with.
enum class parse_failure {
    bad_message,       ///< 400
    header_too_large,  ///< 431
    body_too_large,    ///< 413
    uri_too_long,      ///< 414: a request line alone over max_header_bytes
    version_not_supported,  ///< 505: a request that is not HTTP/1.x
};

/// A message the parser refuses. what() names the reason (llhttp's own
/// words plus the byte offset).
class parse_error : public protocol_error {
public:
    parse_error(parse_failure kind, const std::string& what) : protocol_error(what), m_kind(kind) {}
    parse_failure kind() const noexcept { return m_kind; }
    /// 400, 431, 413, 414 or 505.
    int status() const noexcept;

private:
    parse_failure m_kind;
};

/// Incremental, strict HTTP/1.x parser for one direction of one connection.
/// It hands over one thing at a time, so pipelined messages are taken in
/// order and a body can be streamed without being stored:
///
///   parse(in) -> need_more      all of `in` used, nothing to report
///             -> head           head() is complete (status / method, fields)
///             -> body           body() is the next piece of the (de-chunked)
///                               body; it points into `in`
///             -> message_end    the message is complete; the next call
///                               starts the next message
///
/// `consumed` says how much of `in` was used; the caller keeps the rest and
/// passes it again (with more bytes after it) on the next call.
class parser {
public:
    enum class kind { request, response };
    enum class event { need_more, head, body, message_end };
    struct limits {
        /// The request / status line plus every field, in bytes.
        std::size_t max_header_bytes = 16 * 1024;
        std::uint64_t max_body_bytes = std::numeric_limits<std::uint64_t>::max();
    };

    parser(kind k, limits l);
    ~parser();
    parser(const parser&) = delete;
    parser& operator=(const parser&) = delete;

    /// Responses: the next response answers a HEAD request (or is otherwise
    /// known to have no body). Call before feeding its bytes.
    void expect_no_body() noexcept;

    /// @throws parse_error (the parser is then unusable: close the
    ///         connection).
    event parse(std::string_view in, std::size_t& consumed);
    /// The peer closed the connection. Ends a response body that runs until
    /// close (returns message_end); returns need_more between messages.
    /// @throws parse_error if a message was cut short.
    event finish();

    const message_head& head() const noexcept;
    message_head& head() noexcept;
    std::string_view body() const noexcept;
    /// After message_end: whether the connection may carry another message.
    bool keep_alive() const noexcept;
    /// Between head and message_end.
    bool in_message() const noexcept;
    /// Between the first byte of a message and message_end.
    bool started() const noexcept;

    /// Between messages: frees the parser's state (about 0.5 KiB), which
    /// the next parse() or finish() makes again, so a connection waiting
    /// for its next message holds none. Does nothing inside a message or
    /// after a failure, an upgrade or the end of the stream.
    void release() noexcept;

private:
    struct impl;
    impl& state();

    std::unique_ptr<impl> m_impl;
    kind m_kind;
    limits m_limits;
    // Kept over a release: the offset of the stream's next byte, and the
    // keep_alive() of the last message.
    std::uint64_t m_offset = 0;
    bool m_keep_alive = false;
    bool m_skip_next_body = false;  // expect_no_body() while released
};

/// Appends "METHOD target HTTP/1.1\r\n", the fields and the blank line.
/// @throws std::invalid_argument naming the method (not a token) or the
///         target (empty, spaces, control characters).
void write_request_head(std::string& out, std::string_view method, std::string_view target, const headers& fields);
/// Appends "HTTP/1.x status reason\r\n", the fields and the blank line.
/// @throws std::invalid_argument for a status outside 100-999.
void write_response_head(std::string& out, int status, const headers& fields, int version_minor = 1);
/// Now as an HTTP date ("Sun, 06 Nov 1994 08:49:37 GMT"), for a Date field:
/// formatted once a second per thread; valid until the thread's next call.
std::string_view http_date();
/// Appends one chunk's size line ("1a\r\n"); the data and "\r\n" follow.
/// @throws std::invalid_argument for size 0 (that is last_chunk: it would
///         end the body).
void write_chunk_header(std::string& out, std::size_t size);
/// The last chunk and the end of the message: "0\r\n\r\n".
inline constexpr std::string_view last_chunk = "0\r\n\r\n";

/// Content-Encoding gzip or deflate, decoded as it streams (zlib).
class decompressor {
public:
    enum class format { gzip, deflate };
    /// The format for a Content-Encoding value ("gzip", "x-gzip",
    /// "deflate"), or nullopt.
    static std::optional<format> for_encoding(std::string_view content_encoding) noexcept;

    explicit decompressor(format f);
    ~decompressor();
    decompressor(const decompressor&) = delete;
    decompressor& operator=(const decompressor&) = delete;

    /// Appends what `in` decodes to onto `out`.
    /// @throws protocol_error for bad data, or when `out` would grow past
    ///         `max_out` bytes (a decompression bomb; `out` is then filled
    ///         to exactly `max_out`).
    void feed(std::string_view in, std::string& out, std::size_t max_out);
    /// The body ended. @throws protocol_error if the compressed stream did not.
    void finish();

private:
    struct impl;
    std::unique_ptr<impl> m_impl;
};

}  // namespace hop::http::detail
