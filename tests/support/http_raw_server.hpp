#pragma once
// A tiny raw HTTP/1.1 server's side for the client tests, written on hop's
// tcp_listener and scripted per case by the test: read a request byte for
// byte, answer whatever the case needs (malformed, early, stalled...). No
// parser of hop's own is used, so a bug there cannot hide itself.

#include <hop/hop.hpp>
#include <hop/http.hpp>

#include <doctest/doctest.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

namespace hop_test::raw_http {

// A request without designated initializers (GCC 12's -Wextra flags the
// members a designated initializer leaves out).
inline hop::http::request make_request(std::string method, std::string url, std::string body = {}) {
    hop::http::request r;
    r.method = std::move(method);
    r.url = std::move(url);
    r.body = std::move(body);
    return r;
}

// ---- the raw server's side ---------------------------------------------------

struct raw_request {
    std::string method;
    std::string target;
    std::string head;  // the whole head, CRLFs included
    std::string body;  // de-chunked

    /// The first value of `name` (case-insensitive), if any.
    std::optional<std::string> header(std::string_view name) const {
        std::size_t pos = head.find("\r\n");
        while (pos != std::string::npos && pos + 2 < head.size()) {
            const std::size_t start = pos + 2;
            const std::size_t end = head.find("\r\n", start);
            if (end == std::string::npos || end == start) break;
            const std::string_view line(head.data() + start, end - start);
            const std::size_t colon = line.find(':');
            if (colon != std::string_view::npos && hop::http::iequals(line.substr(0, colon), name)) {
                std::string_view v = line.substr(colon + 1);
                while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
                while (!v.empty() && v.back() == ' ') v.remove_suffix(1);
                return std::string(v);
            }
            pos = end;
        }
        return std::nullopt;
    }
};

// Reads into `buf` until it holds `n` bytes past `from`.
inline hop::task<void> fill(hop::tcp_stream& s, std::string& buf, std::size_t want) {
    char tmp[8192];
    while (buf.size() < want) {
        const std::size_t n = co_await s.read_some(tmp);
        if (n == 0) throw std::runtime_error("raw server: the client closed in the middle of a request");
        buf.append(tmp, n);
    }
}

// Reads a line (without its CRLF) starting at buf[0]; removes it from buf.
inline hop::task<std::string> take_line(hop::tcp_stream& s, std::string& buf) {
    char tmp[8192];
    for (;;) {
        const std::size_t end = buf.find("\r\n");
        if (end != std::string::npos) {
            std::string line = buf.substr(0, end);
            buf.erase(0, end + 2);
            co_return line;
        }
        const std::size_t n = co_await s.read_some(tmp);
        if (n == 0) throw std::runtime_error("raw server: the client closed in the middle of a line");
        buf.append(tmp, n);
    }
}

/// The next request on `s` (`buf` keeps bytes between requests); nullopt
/// if the client closed the connection before sending one.
inline hop::task<std::optional<raw_request>> read_request(hop::tcp_stream& s, std::string& buf) {
    char tmp[8192];
    std::size_t end;
    while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
        const std::size_t n = co_await s.read_some(tmp);
        if (n == 0) {
            if (buf.empty()) co_return std::nullopt;
            throw std::runtime_error("raw server: the client closed in the middle of a head");
        }
        buf.append(tmp, n);
    }
    raw_request r;
    r.head = buf.substr(0, end + 4);
    buf.erase(0, end + 4);
    const std::size_t sp1 = r.head.find(' ');
    const std::size_t sp2 = r.head.find(' ', sp1 + 1);
    r.method = r.head.substr(0, sp1);
    r.target = r.head.substr(sp1 + 1, sp2 - sp1 - 1);
    if (auto te = r.header("Transfer-Encoding"); te && hop::http::iequals(*te, "chunked")) {
        for (;;) {
            const std::string size_line = co_await take_line(s, buf);
            const std::size_t size = std::stoul(size_line, nullptr, 16);
            if (size == 0) {
                while (!(co_await take_line(s, buf)).empty()) {
                }
                break;
            }
            co_await fill(s, buf, size + 2);
            r.body.append(buf, 0, size);
            buf.erase(0, size + 2);
        }
    } else if (auto cl = r.header("Content-Length")) {
        const std::size_t size = std::stoul(*cl);
        co_await fill(s, buf, size);
        r.body = buf.substr(0, size);
        buf.erase(0, size);
    }
    co_return r;
}

/// Waits until the client closes `s` (its read returns 0, or the reset).
inline hop::task<void> wait_for_eof(hop::tcp_stream& s) {
    char tmp[4096];
    try {
        while (co_await s.read_some(tmp) != 0) {
        }
    } catch (const std::system_error&) {
        // ECONNRESET: closed as well
    }
}

inline std::string ok(std::string_view body, std::string_view extra = "") {
    return "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + std::string(extra) + "\r\n" +
           std::string(body);
}

inline std::string base_url(const hop::tcp_listener& lis) {
    return "http://127.0.0.1:" + std::to_string(lis.local_endpoint().port());
}

inline hop::tcp_listener listen_any() { return hop::tcp_listener::bind(hop::endpoint::loopback_v4(0)); }

/// One connection: reads a request, answers a head and 4 of its 100 body
/// bytes, then stalls until the client closes (a total or read timeout
/// must end the exchange).
inline hop::task<void> stalling_body_server(hop::tcp_listener& lis) {
    hop::tcp_stream c = co_await lis.accept();
    std::string buf;
    auto r = co_await read_request(c, buf);
    REQUIRE(r);
    co_await c.write_all(std::string_view("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart"));
    co_await wait_for_eof(c);
}

/// What `t` throws as E (its message), or "(nothing thrown)"; another type
/// propagates.
template <class E, class T>
inline hop::task<std::string> what_of(hop::task<T> t) {
    try {
        co_await std::move(t);
    } catch (const E& e) {
        co_return std::string(e.what());
    }
    co_return "(nothing thrown)";
}

/// What `t` throws, by its exact kind among the timeouts: "timeout_error: ..."
/// only for hop::timeout_error itself.
template <class T>
inline hop::task<std::string> timeout_kind_of(hop::task<T> t) {
    try {
        co_await std::move(t);
    } catch (const hop::http::read_timeout& e) {
        co_return std::string("read_timeout: ") + e.what();
    } catch (const hop::http::connect_timeout& e) {
        co_return std::string("connect_timeout: ") + e.what();
    } catch (const hop::http::pool_timeout& e) {
        co_return std::string("pool_timeout: ") + e.what();
    } catch (const hop::timeout_error& e) {
        co_return std::string("timeout_error: ") + e.what();
    }
    co_return "(nothing thrown)";
}

}  // namespace hop_test::raw_http
