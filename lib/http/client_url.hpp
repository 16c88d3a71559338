#pragma once
// Private to hop::http::client: URLs as users and servers write them, made
// into what url::parse takes, as browsers and Python's requests send them:
//
//   - credentials ("http://user:password@host/") are taken out, percent-
//     decoded, and become "Authorization: Basic ...";
//   - in the path, query and fragment, a space, a byte of 0x80 or more
//     (UTF-8) and the characters "<>\^`{|} are percent-encoded; a '%' not
//     followed by two hex digits becomes %25; escapes already there stay.
//
// Control characters are left as they are: url::parse refuses them,
// naming the byte. The host is not touched (no IDNA: a non-ASCII host is
// refused by url::parse).

#include <optional>
#include <string>
#include <string_view>

namespace hop::http::detail {

struct written_url {
    /// The URL (or relative reference) without credentials, encoded.
    std::string text;
    /// "Basic <base64(user:password)>" when the URL had credentials.
    std::optional<std::string> authorization;
};

/// `text` as it will be sent (see the top of the file); a relative
/// reference (a redirect's Location) is only encoded.
/// @throws std::invalid_argument naming the URL (its password hidden) for
///         a bad percent-escape in the credentials or CR, LF or NUL in them.
written_url write_url(std::string_view text);

}  // namespace hop::http::detail
