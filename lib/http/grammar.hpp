#pragma once
// Private to hop::http: RFC 9110's character classes, for the message types,
// the codec and the client alike.

#include <algorithm>
#include <string_view>

namespace hop::http::detail {

/// RFC 9110 5.6.2: tchar, a character of a token (a method, a field name).
constexpr bool is_tchar(char ch) noexcept {
    const auto c = static_cast<unsigned char>(ch);
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
    return c != 0 && std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

/// A non-empty run of tchar.
constexpr bool is_token(std::string_view s) noexcept { return !s.empty() && std::all_of(s.begin(), s.end(), is_tchar); }

}  // namespace hop::http::detail
