#pragma once
// The HTTP server tests' shared parts: a test application (its handler),
// a server started on 127.0.0.1:0 on the loop the test drives, and raw
// request helpers.

#include <hop/http/server.hpp>

#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/sync.hpp>
#include <hop/task.hpp>

#include "backend.hpp"
#include "http_peers.hpp"
#include "sockets.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <exception>
#include <stdexcept>
#include <string>
#include <cstdint>
#include <string_view>
#include <vector>

namespace hop_test {

/// The test application:
///   /echo          the request body back (Content-Type kept)
///   /throw         throws std::runtime_error
///   /size/N        N bytes of 'x'
///   /status/N      an empty response with status N
///   anything else  "hello METHOD URL"
inline hop::task<hop::http::response> test_app(hop::http::request& req) {
    hop::http::response r;
    if (req.url == "/echo") {
        r.headers.add("Content-Type", req.headers.get("Content-Type").value_or("application/octet-stream"));
        r.body = std::move(req.body);
        co_return r;
    }
    if (req.url == "/throw") throw std::runtime_error("test_app: /throw");
    if (req.url.rfind("/size/", 0) == 0) {
        r.body.assign(std::stoul(req.url.substr(6)), 'x');
        co_return r;
    }
    if (req.url.rfind("/status/", 0) == 0) {
        r.status = std::stoi(req.url.substr(8));
        co_return r;
    }
    r.headers.add("Content-Type", "text/plain");
    r.body = "hello " + req.method + " " + req.url;
    co_return r;
}

/// `n` bytes of printable text that do not repeat in an obvious way.
inline std::string text_body(std::size_t n) {
    std::string s(n, ' ');
    std::uint32_t x = 12345;
    for (auto& ch : s) {
        x = x * 1103515245u + 12345u;
        ch = static_cast<char>('a' + (x >> 16) % 26);
    }
    return s;
}

/// FNV-1a (64 bits) of `s`, continuing from `h`: a cheap check that the
/// bytes of an upload arrived whole and in order, piece by piece.
inline std::uint64_t fnv1a(std::string_view s, std::uint64_t h = 1469598103934665603ull) {
    for (char c : s) {
        h ^= static_cast<unsigned char>(c);
        h *= 1099511628211ull;
    }
    return h;
}

/// Options with short timeouts for tests that do not time anything.
inline hop::http::server_options test_options() {
    hop::http::server_options o;
    o.shutdown_grace = std::chrono::seconds(5);
    return o;
}

/// Binds a server with `handler` on 127.0.0.1:0 on the running loop, runs
/// serve() beside `body(srv)`, then stops serve() and checks it returned
/// normally. Rethrows what `body` threw.
template <class Handler, class Body>
hop::task<void> with_server(Handler handler, hop::http::server_options options, Body body) {
    auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), std::move(handler), std::move(options));
    hop::future<void> serving = hop::current_loop()->spawn(srv.serve());
    std::exception_ptr failure;
    try {
        auto running_body = body(srv);
        co_await std::move(running_body);
    } catch (...) {
        failure = std::current_exception();
    }
    serving.cancel();
    std::string serve_error;
    try {
        co_await serving;
    } catch (const std::exception& e) {
        serve_error = e.what();
    }
    if (failure) std::rethrow_exception(failure);
    CHECK_MESSAGE(serve_error.empty(), "serve() did not return normally after its stop: " << serve_error);
}

/// Connects to `srv`, sends `bytes`, and returns everything the server
/// sends until it closes the connection.
inline hop::task<std::string> exchange(const hop::endpoint& ep, std::string bytes) {
    auto c = co_await hop::tcp_stream::connect(ep);
    co_await c.write_all(bytes);
    co_return co_await read_until_close(c);
}

/// "GET path HTTP/1.1" with a Host field and `extra` fields (each ending
/// in CRLF).
inline std::string get_request(std::string_view path, std::string_view extra = {},
                               std::string_view method = "GET") {
    std::string r;
    r.append(method).append(" ").append(path).append(" HTTP/1.1\r\nHost: test\r\n");
    r.append(extra);
    r.append("\r\n");
    return r;
}

inline std::string url_of(const hop::http::server& srv, std::string_view path = "/") {
    return "http://" + srv.local_endpoint().to_string() + std::string(path);
}

/// True if `text` starts with `prefix`.
inline bool starts_with(std::string_view text, std::string_view prefix) {
    return text.substr(0, prefix.size()) == prefix;
}

}  // namespace hop_test
