// The HTTP/1 connection both roles share (lib/http/h1_connection.hpp): its
// states, and handing the transport with its unread bytes to another
// protocol (what HTTP/2's preface, an Upgrade or a CONNECT tunnel need),
// over a real TCP connection on both backends.

#include "lib/http/h1_connection.hpp"

#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/task.hpp>

#include "support/backend.hpp"
#include "support/sockets.hpp"

#include <doctest/doctest.h>

#include <string>
#include <string_view>

using namespace std::string_view_literals;
using hop::http::detail::h1_connection;
using hop::http::detail::parser;
using hop::http::detail::transport;
using hop_test::for_each_backend;
using hop_test::run_on;
using state = h1_connection::state;

namespace {

constexpr parser::limits limits{.max_header_bytes = 16 * 1024, .max_body_bytes = 1024 * 1024};

// Reads and steps until `want` (or the peer ends); returns the last event.
hop::task<parser::event> until(h1_connection& c, parser::event want) {
    for (;;) {
        const parser::event ev = c.next_event();
        if (ev == want) co_return ev;
        if (ev == parser::event::need_more) {
            if (co_await c.read_more(4096) == 0) co_return c.finish();
        }
    }
}

hop::task<void> server_role() {
    auto p = co_await hop_test::make_pair();
    h1_connection c(transport(std::move(p.server)), parser::kind::request, limits);
    CHECK(c.at() == state::between);

    // Half a request line: the connection is in a head.
    co_await p.client.write_all("GET /first HT"sv);
    CHECK(co_await c.read_more(4096) > 0);
    CHECK(c.next_event() == parser::event::need_more);
    CHECK(c.at() == state::head);

    // The rest, a second request's whole head, and bytes of "another
    // protocol" behind them, all at once.
    co_await p.client.write_all("TP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\nPRI * after"sv);
    CHECK(co_await until(c, parser::event::head) == parser::event::head);
    CHECK(c.at() == state::body);
    CHECK(c.parse.head().target == "/first");
    CHECK(co_await until(c, parser::event::message_end) == parser::event::message_end);
    CHECK(c.at() == state::between);
    CHECK(co_await until(c, parser::event::head) == parser::event::head);
    CHECK(c.parse.head().target == "/second");
    CHECK(co_await until(c, parser::event::message_end) == parser::event::message_end);
    CHECK(c.at() == state::between);

    // Handed over between messages: every byte after the second request,
    // in order, and the transport goes on carrying both ways.
    auto h = c.hand_over();
    CHECK(c.at() == state::handed_over);
    CHECK(h.unread == "PRI * after");
    co_await p.client.write_all(" and more"sv);
    char buf[64];
    const std::size_t n = co_await h.io.read_some(std::span<char>(buf));
    CHECK(std::string_view(buf, n) == " and more");
    co_await h.io.write_all("reply"sv);
    char back[5];
    co_await p.client.read_exact(back);
    CHECK(std::string_view(back, 5) == "reply");
}

hop::task<void> client_role_upgrade() {
    auto p = co_await hop_test::make_pair();
    h1_connection c(transport(std::move(p.client)), parser::kind::response, limits);
    // A 101 and the new protocol's first bytes in the same segment.
    co_await p.server.write_all(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: example\r\nConnection: upgrade\r\n\r\n\x01\x02" "frames"sv);
    CHECK(co_await until(c, parser::event::head) == parser::event::head);
    CHECK(c.parse.head().status == 101);
    CHECK(co_await until(c, parser::event::message_end) == parser::event::message_end);
    CHECK(c.at() == state::between);
    auto h = c.hand_over();
    CHECK_MESSAGE(h.unread == "\x01\x02" "frames", "unread: [" << h.unread << "] " << h.unread.size());
    CHECK(c.in.empty());
}

hop::task<void> nothing_unread() {
    auto p = co_await hop_test::make_pair();
    h1_connection c(transport(std::move(p.server)), parser::kind::request, limits);
    auto h = c.hand_over();  // before any byte
    CHECK(h.unread.empty());
    co_await p.client.write_all("x"sv);
    char one[1];
    CHECK(co_await h.io.read_some(std::span<char>(one)) == 1);
}

}  // namespace

TEST_CASE("h1 connection: head / body / between as a request arrives in pieces; handed over with its unread bytes") {
    for_each_backend([](hop::backend b) { run_on(b, server_role()); });
}

TEST_CASE("h1 connection: a 101 and the new protocol's first bytes in one segment: the bytes are handed over") {
    for_each_backend([](hop::backend b) { run_on(b, client_role_upgrade()); });
}

TEST_CASE("h1 connection: handed over before any byte: nothing unread, the transport reads what comes") {
    for_each_backend([](hop::backend b) { run_on(b, nothing_unread()); });
}
