#pragma once
// Private to hop::http: how HTTP reads over TLS, for the client and the
// server alike.

#include <hop/task.hpp>
#include <hop/tls.hpp>

#include <cstddef>
#include <span>

namespace hop::http::detail {

/// A read over TLS in which a close without close_notify is an end of
/// stream (0), as in curl and browsers: many servers and clients never send
/// close_notify, and HTTP's own framing says whether a message was whole.
inline task<std::size_t> read_tls(tls::stream& s, std::span<char> buf) {
    try {
        co_return co_await s.read_some(buf);
    } catch (const tls::truncated_error&) {
        co_return 0;
    }
}

}  // namespace hop::http::detail
