#include <hop/http/message.hpp>

#include "grammar.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdint>

namespace hop::http {

namespace {

char lower(char c) noexcept { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

// The text in quotes, with bytes that would garble a message shown as \xNN.
std::string quoted(std::string_view s) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out = "\"";
    for (char ch : s.substr(0, 200)) {
        auto c = static_cast<unsigned char>(ch);
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
        } else {
            out += ch;
        }
    }
    if (s.size() > 200) out += "\u2026";  // …
    out += '"';
    return out;
}

std::uint16_t default_port(std::string_view scheme) noexcept { return scheme == "https" ? 443 : 80; }

// RFC 3986 5.2.4, step by step.
std::string remove_dot_segments(std::string_view in) {
    std::string out;
    auto pop_segment = [&out] {
        auto slash = out.rfind('/');
        out.erase(slash == std::string::npos ? 0 : slash);
    };
    while (!in.empty()) {
        if (in.starts_with("../")) {
            in.remove_prefix(3);
        } else if (in.starts_with("./")) {
            in.remove_prefix(2);
        } else if (in.starts_with("/./")) {
            in.remove_prefix(2);
        } else if (in == "/.") {
            in = "/";
        } else if (in.starts_with("/../")) {
            in.remove_prefix(3);
            pop_segment();
        } else if (in == "/..") {
            in = "/";
            pop_segment();
        } else if (in == "." || in == "..") {
            in = {};
        } else {
            auto end = in.find('/', 1);
            if (end == std::string_view::npos) end = in.size();
            out.append(in.substr(0, end));
            in.remove_prefix(end);
        }
    }
    if (out.empty() || out.front() != '/') out.insert(out.begin(), '/');
    return out;
}

void check_url_bytes(std::string_view text, std::string_view what) {
    for (std::size_t i = 0; i < text.size(); ++i) {
        auto c = static_cast<unsigned char>(text[i]);
        if (c == ' ')
            throw std::invalid_argument(std::string(what) + " " + quoted(text) + ": a space at byte " +
                                        std::to_string(i) + " (percent-encode it as %20)");
        if (c < 0x20 || c == 0x7f)
            throw std::invalid_argument(std::string(what) + " " + quoted(text) + ": a control character at byte " +
                                        std::to_string(i));
        if (c >= 0x80)
            throw std::invalid_argument(std::string(what) + " " + quoted(text) + ": a non-ASCII byte at byte " +
                                        std::to_string(i) + " (percent-encode it)");
    }
}

}  // namespace

// ---- headers ----------------------------------------------------------------

headers::headers(std::initializer_list<std::pair<std::string_view, std::string_view>> fields) {
    for (const auto& [name, value] : fields) add(name, value);
}

void headers::add(std::string_view name, std::string_view value) {
    if (name.empty()) throw std::invalid_argument("empty header name (value " + quoted(value) + ")");
    if (!detail::is_token(name))
        throw std::invalid_argument("header name " + quoted(name) +
                                    " is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~ only)");
    for (char c : value) {
        if (c == '\r' || c == '\n' || c == '\0')
            throw std::invalid_argument("header " + quoted(name) + " has a value holding CR, LF or NUL: " +
                                        quoted(value));
    }
    m_fields.push_back({std::string(name), std::string(value)});
}

void headers::set(std::string_view name, std::string_view value) {
    headers checked;
    checked.add(name, value);  // validate before changing anything
    erase(name);
    m_fields.push_back(std::move(checked.m_fields.front()));
}

std::optional<std::string_view> headers::get(std::string_view name) const noexcept {
    for (const auto& f : m_fields)
        if (iequals(f.name, name)) return std::string_view(f.value);
    return std::nullopt;
}

std::vector<std::string_view> headers::get_all(std::string_view name) const {
    std::vector<std::string_view> out;
    for (const auto& f : m_fields)
        if (iequals(f.name, name)) out.emplace_back(f.value);
    return out;
}

bool headers::contains(std::string_view name) const noexcept { return get(name).has_value(); }

std::size_t headers::erase(std::string_view name) noexcept {
    auto before = m_fields.size();
    std::erase_if(m_fields, [&](const field& f) { return iequals(f.name, name); });
    return before - m_fields.size();
}

bool iequals(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (lower(a[i]) != lower(b[i])) return false;
    return true;
}

// ---- reason phrases -----------------------------------------------------------

body_source body_source::file(std::string path) {
    if (path.empty()) throw std::invalid_argument("hop::http::body_source::file: the path is empty");
    body_source b;
    b.m_path = std::move(path);
    return b;
}

body_source body_source::producer(producer_function fn, std::optional<std::uint64_t> size) {
    if (!fn) throw std::invalid_argument("hop::http::body_source::producer: the function is empty");
    body_source b;
    b.m_produce = std::move(fn);
    b.m_size = size;
    return b;
}

std::string_view reason_phrase(int status) noexcept {
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 102: return "Processing";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 207: return "Multi-Status";
    case 208: return "Already Reported";
    case 226: return "IM Used";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 305: return "Use Proxy";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 418: return "I'm a teapot";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 423: return "Locked";
    case 424: return "Failed Dependency";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 506: return "Variant Also Negotiates";
    case 507: return "Insufficient Storage";
    case 508: return "Loop Detected";
    case 510: return "Not Extended";
    case 511: return "Network Authentication Required";
    default: return "";
    }
}

// ---- url --------------------------------------------------------------------

url url::parse(std::string_view text) {
    auto fail = [&](const std::string& why) -> std::invalid_argument {
        return std::invalid_argument("bad URL " + quoted(text) + ": " + why);
    };
    check_url_bytes(text, "bad URL");

    url u;
    auto sep = text.find("://");
    if (sep == std::string_view::npos) throw fail("no scheme (expected http:// or https://)");
    std::string scheme;
    for (char c : text.substr(0, sep)) scheme += lower(c);
    if (scheme != "http" && scheme != "https")
        throw fail("unsupported scheme " + quoted(text.substr(0, sep)) + " (expected http or https)");
    u.scheme = std::move(scheme);

    std::string_view rest = text.substr(sep + 3);
    auto auth_end = rest.find_first_of("/?#");
    std::string_view authority = rest.substr(0, auth_end);
    std::string_view tail = auth_end == std::string_view::npos ? std::string_view{} : rest.substr(auth_end);

    if (authority.find('@') != std::string_view::npos)
        throw fail("userinfo (user:password@) is not supported; send credentials in a header");

    std::string_view host;
    std::string_view port_text;
    bool has_port = false;
    if (!authority.empty() && authority.front() == '[') {
        auto close = authority.find(']');
        if (close == std::string_view::npos) throw fail("unterminated IPv6 literal (missing ']')");
        host = authority.substr(1, close - 1);
        if (host.empty()) throw fail("empty host");
        if (host.find(':') == std::string_view::npos ||
            !std::all_of(host.begin(), host.end(), [](char c) {
                return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' ||
                       c == '.';
            }))
            throw fail("bad IPv6 literal " + quoted(host));
        std::string_view after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') throw fail("unexpected " + quoted(after) + " after the IPv6 literal");
            has_port = true;
            port_text = after.substr(1);
        }
    } else {
        auto colon = authority.find(':');
        host = authority.substr(0, colon);
        if (colon != std::string_view::npos) {
            has_port = true;
            port_text = authority.substr(colon + 1);
        }
        if (host.empty()) throw fail("empty host");
        for (char c : host) {
            bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      std::string_view("-._~!$&'()*+,;=%").find(c) != std::string_view::npos;
            if (!ok) throw fail("bad character '" + std::string(1, c) + "' in host " + quoted(host));
        }
    }
    for (char c : host) u.host += lower(c);

    u.port = default_port(u.scheme);
    if (has_port) {
        if (port_text.empty()) throw fail("empty port after ':'");
        unsigned value = 0;
        auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), value);
        if (ec != std::errc{} || end != port_text.data() + port_text.size() || value == 0 || value > 65535 ||
            port_text.front() == '+' || port_text.front() == '-')
            throw fail("bad port " + quoted(port_text) + " (expected 1-65535)");
        u.port = static_cast<std::uint16_t>(value);
    }

    tail = tail.substr(0, tail.find('#'));
    if (tail.empty())
        u.target = "/";
    else if (tail.front() == '?')
        u.target = "/" + std::string(tail);
    else
        u.target = std::string(tail);
    return u;
}

std::string url::authority() const {
    std::string a = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    if (port != default_port(scheme)) a += ":" + std::to_string(port);
    return a;
}

std::string url::to_string() const { return scheme + "://" + authority() + target; }

url url::resolve(std::string_view location) const {
    if (location.empty()) throw std::invalid_argument("bad redirect Location \"\": empty");
    check_url_bytes(location, "bad redirect Location");

    // An absolute URL: a scheme (RFC 3986 3.1) before the first ':'.
    auto colon = location.find(':');
    auto first_delim = location.find_first_of("/?#");
    if (colon != std::string_view::npos && colon > 0 && (first_delim == std::string_view::npos || colon < first_delim)) {
        std::string_view scheme_part = location.substr(0, colon);
        bool scheme_like = std::isalpha(static_cast<unsigned char>(scheme_part.front())) &&
                           std::all_of(scheme_part.begin(), scheme_part.end(), [](char c) {
                               return std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '-' || c == '.';
                           });
        if (scheme_like) {
            if (location.substr(colon, 3) != "://")
                throw std::invalid_argument("bad redirect Location " + quoted(location) +
                                            ": not an http:// or https:// URL");
            try {
                return parse(location);
            } catch (const std::invalid_argument& e) {
                throw std::invalid_argument(std::string("bad redirect Location: ") + e.what());
            }
        }
    }
    if (location.substr(0, 2) == "//") {
        try {
            return parse(scheme + ":" + std::string(location));
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument(std::string("bad redirect Location: ") + e.what());
        }
    }

    url r = *this;
    std::string_view loc = location.substr(0, location.find('#'));
    if (loc.empty()) return r;  // only a fragment: the same resource
    std::string_view base_path = std::string_view(target).substr(0, target.find('?'));
    if (loc.front() == '?') {
        r.target = std::string(base_path) + std::string(loc);
        return r;
    }
    std::string_view loc_path = loc.substr(0, loc.find('?'));
    std::string_view loc_query = loc.substr(loc_path.size());
    std::string merged;
    if (loc.front() == '/') {
        merged = std::string(loc_path);
    } else {
        auto slash = base_path.rfind('/');
        merged = std::string(base_path.substr(0, slash == std::string_view::npos ? 0 : slash + 1));
        if (merged.empty()) merged = "/";
        merged += loc_path;
    }
    r.target = remove_dot_segments(merged) + std::string(loc_query);
    return r;
}

bool url::same_origin(const url& other) const noexcept {
    return scheme == other.scheme && iequals(host, other.host) && port == other.port;
}

}  // namespace hop::http
