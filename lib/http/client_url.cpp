// URLs as written, made into what hop::http::client sends (client_url.hpp).

#include "client_url.hpp"

#include "proxy.hpp"  // basic_credentials, percent_decode

#include <algorithm>
#include <stdexcept>

namespace hop::http::detail {

namespace {

bool is_hex(char c) noexcept { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// Bytes of a path, query or fragment that are sent percent-encoded.
bool needs_escape(unsigned char c) noexcept {
    return c == ' ' || c >= 0x80 || c == '"' || c == '<' || c == '>' || c == '\\' || c == '^' || c == '`' ||
           c == '{' || c == '|' || c == '}';
}

void encode_into(std::string& out, std::string_view s) {
    static const char hex[] = "0123456789ABCDEF";
    for (std::size_t i = 0; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        const bool lone_percent = c == '%' && !(i + 2 < s.size() && is_hex(s[i + 1]) && is_hex(s[i + 2]));
        if (needs_escape(c) || lone_percent) {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 0xf];
        } else {
            out += static_cast<char>(c);
        }
    }
}

}  // namespace

written_url write_url(std::string_view text) {
    written_url w;
    // The authority: after "scheme://" or "//", up to the path, query or fragment.
    std::size_t auth_start = std::string_view::npos;
    const auto sep = text.find("://");
    if (sep != std::string_view::npos && text.find_first_of("/?#") > sep) {
        auth_start = sep + 3;
    } else if (text.substr(0, 2) == "//") {
        auth_start = 2;
    }
    std::size_t rest_start = 0;
    if (auth_start != std::string_view::npos) {
        const std::size_t auth_end = std::min(text.find_first_of("/?#", auth_start), text.size());
        std::string_view authority = text.substr(auth_start, auth_end - auth_start);
        w.text.append(text.substr(0, auth_start));
        if (const auto at = authority.rfind('@'); at != std::string_view::npos) {
            const std::string_view info = authority.substr(0, at);
            const auto colon = info.find(':');
            const auto hidden = [&] {
                std::string h(text.substr(0, auth_start));
                h.append(info.substr(0, colon));
                if (colon != std::string_view::npos) h += ":***";
                h += '@';
                h.append(text.substr(at + 1 + auth_start, 200));
                return h;
            };
            std::string user;
            std::string password;
            try {
                user = percent_decode(info.substr(0, colon));
                if (colon != std::string_view::npos) password = percent_decode(info.substr(colon + 1));
            } catch (const std::invalid_argument& e) {
                throw std::invalid_argument("bad URL '" + hidden() + "': its credentials hold " + e.what());
            }
            const std::string creds = user + password;
            if (creds.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
                throw std::invalid_argument("bad URL '" + hidden() + "': its credentials hold CR, LF or NUL");
            }
            w.authorization = basic_credentials(user, password);
            authority.remove_prefix(at + 1);
        }
        w.text.append(authority);
        rest_start = auth_end;
    }
    encode_into(w.text, text.substr(rest_start));
    return w;
}

}  // namespace hop::http::detail
