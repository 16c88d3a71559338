#pragma once
// Private to hop::http::client: the Content-Encodings it decodes as a body
// streams in. gzip and deflate through zlib (codec.hpp's decompressor), br
// through libbrotlidec, zstd through libzstd (its window bounded to 8 MiB,
// as RFC 9659 asks of HTTP decoders). Every decoder bounds what it
// produces, so a small body cannot decompress into a huge one unchecked.

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace hop::http::detail {

/// What the client sends as Accept-Encoding (client_options::decompress).
inline constexpr std::string_view accepted_encodings = "gzip, deflate, br, zstd";

/// One body's decoder.
class body_decoder {
public:
    /// The decoder for a Content-Encoding value ("gzip", "x-gzip",
    /// "deflate", "br", "zstd"; case and surrounding blanks ignored), or
    /// null for one hop does not decode (a list of several included).
    static std::unique_ptr<body_decoder> for_encoding(std::string_view content_encoding);

    virtual ~body_decoder() = default;
    /// Appends what `in` decodes to onto `out`.
    /// @throws protocol_error for bad data, or when `out` would grow past
    ///         `max_out` bytes (then filled to exactly `max_out`).
    virtual void feed(std::string_view in, std::string& out, std::size_t max_out) = 0;
    /// The body ended. @throws protocol_error if the compressed stream did not.
    virtual void finish() = 0;
};

}  // namespace hop::http::detail
