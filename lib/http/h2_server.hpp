#pragma once
// Private to hop::http::server: HTTP/2 on one server connection, on
// nghttp2. nghttp2 does the framing, HPACK, stream states and flow control
// (nghttp2_session_mem_recv / mem_send); hop's transport
// (lib/http/transport.hpp, TCP or TLS alike) carries the bytes.
//
// How a connection gets here (lib/http/server_connection.cpp):
//   - over TLS, when ALPN picked "h2" (the server's context offers h2 and
//     http/1.1 when server_options::http2 is on and the handler is a plain
//     one);
//   - in cleartext, when the connection's first bytes are the client
//     preface (prior knowledge): h1_connection::hand_over() gives the
//     transport and the bytes read so far.
//
// One connection is three kinds of coroutines in one task_group: a reader
// (transport -> nghttp2_session_mem_recv), a writer (mem_send -> transport,
// woken by an event when nghttp2 has something to send) and one per stream
// running the handler. All on the connection's loop; nghttp2 is only
// touched there.

#include <hop/http/server.hpp>
#include <hop/task.hpp>

#include <string>
#include <string_view>

namespace hop::http::detail {

class server_connection;
class server_state;
class transport;
class h2_session;

/// Whether `in` (a new connection's first bytes) is the HTTP/2 client
/// preface: whole (24 bytes or more, starting with it), partial (a
/// non-empty beginning of it: read more) or no.
enum class h2_preface : unsigned char { no, partial, whole };
h2_preface match_h2_preface(std::string_view in) noexcept;

/// Whether this server answers HTTP/2 (server_options::http2, and a
/// handler HTTP/2 can run: the plain request -> response one).
bool h2_enabled(const server_state& st) noexcept;

/// Whether the TLS handshake on `io` picked h2 (ALPN) and the server
/// answers it.
bool h2_negotiated(const transport& io, const server_state& st) noexcept;

/// Serves HTTP/2 on `io` for `c` until the connection ends; `unread`: the
/// bytes already read from it (the preface among them). Returns when the
/// peer left, after a GOAWAY, or throws cancelled_error when the
/// connection's future is cancelled (the handlers are cancelled and
/// awaited first). Other failures of the transport end it quietly.
task<void> serve_h2(server_connection& c, transport& io, std::string unread);

/// server_connection::stop() for a connection on HTTP/2: sends GOAWAY
/// (last stream id: the last one taken) and lets the streams in flight
/// finish. True if it did; false the second time (then the caller
/// cancels the connection).
bool h2_stop(h2_session& s) noexcept;

}  // namespace hop::http::detail
