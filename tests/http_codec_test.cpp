#include "lib/http/codec.hpp"

#include <doctest/doctest.h>

#include <zlib.h>

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

using namespace std::literals;
namespace http = hop::http;
using http::detail::parse_error;
using http::detail::parse_failure;
using http::detail::parser;

namespace {

// One message as the events described it.
struct message {
    http::detail::message_head head;
    std::string body;
    std::vector<std::size_t> pieces;  // the size of each body event
    bool keep_alive = false;
};

// Feeds input to a parser the way a connection does: `step` new bytes at a
// time appended to what the parser left unconsumed, and collects complete
// messages. `at_eof` calls finish() once all input is in.
struct feeder {
    explicit feeder(parser& parser_) : p(parser_) {}

    parser& p;
    message cur;
    bool have_head = false;
    std::string buf;
    std::vector<message> out;

    void take(parser::event e) {
        switch (e) {
        case parser::event::head:
            REQUIRE_FALSE(have_head);
            cur = message{};
            cur.head = p.head();
            have_head = true;
            CHECK(p.in_message());
            CHECK(p.started());
            break;
        case parser::event::body:
            REQUIRE(have_head);
            REQUIRE(!p.body().empty());
            cur.body.append(p.body());
            cur.pieces.push_back(p.body().size());
            break;
        case parser::event::message_end:
            REQUIRE(have_head);
            cur.head.trailers = p.head().trailers;
            cur.keep_alive = p.keep_alive();
            out.push_back(std::move(cur));
            have_head = false;
            CHECK_FALSE(p.in_message());
            CHECK_FALSE(p.started());
            break;
        case parser::event::need_more:
            break;
        }
    }

    std::vector<message> operator()(std::string_view input, std::size_t step = SIZE_MAX, bool at_eof = false) {
        out.clear();
        std::size_t pos = 0;
        for (int guard = 0; guard < 1'000'000; ++guard) {
            std::size_t consumed = 12345;
            parser::event e = p.parse(buf, consumed);
            REQUIRE(consumed <= buf.size());
            take(e);
            buf.erase(0, consumed);
            if (e == parser::event::need_more) {
                REQUIRE(buf.empty());  // need_more means everything was used
                if (pos == input.size()) break;
                std::size_t n = std::min(step, input.size() - pos);
                buf.append(input.substr(pos, n));
                pos += n;
            }
        }
        if (at_eof) {
            for (;;) {
                parser::event e = p.finish();
                take(e);
                if (e == parser::event::need_more) break;
            }
        }
        return out;
    }
};

std::vector<message> feed(parser& p, std::string_view input, std::size_t step = SIZE_MAX, bool at_eof = false) {
    return feeder{p}(input, step, at_eof);
}

std::vector<message> feed_all(parser::kind k, std::string_view input, std::size_t step = SIZE_MAX,
                              bool at_eof = false, parser::limits l = {}) {
    parser p(k, l);
    return feed(p, input, step, at_eof);
}

// The parse_error a message raises (fed whole and byte by byte: both must
// agree), or a failed check.
parse_error rejection(parser::kind k, std::string_view input, parser::limits l = {}, bool at_eof = false) {
    std::optional<parse_error> whole;
    std::optional<parse_error> bytewise;
    try {
        (void)feed_all(k, input, SIZE_MAX, at_eof, l);
    } catch (const parse_error& e) {
        whole = e;
    }
    try {
        (void)feed_all(k, input, 1, at_eof, l);
    } catch (const parse_error& e) {
        bytewise = e;
    }
    REQUIRE_MESSAGE(whole, "accepted when fed whole: ", input);
    REQUIRE_MESSAGE(bytewise, "accepted when fed byte by byte: ", input);
    // Errors come in stream order: the same one, at the same byte, however
    // the input is cut.
    CHECK(whole->kind() == bytewise->kind());
    CHECK(std::string(whole->what()) == bytewise->what());
    return *whole;
}

constexpr auto req = parser::kind::request;
constexpr auto resp = parser::kind::response;

std::string gzip_bytes(std::string_view data, int window_bits) {
    z_stream zs{};
    REQUIRE(deflateInit2(&zs, Z_BEST_COMPRESSION, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    std::string out(deflateBound(&zs, static_cast<uLong>(data.size())) + 32, '\0');
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
    zs.avail_in = static_cast<uInt>(data.size());
    zs.next_out = reinterpret_cast<Bytef*>(out.data());
    zs.avail_out = static_cast<uInt>(out.size());
    REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
    out.resize(zs.total_out);
    deflateEnd(&zs);
    return out;
}

}  // namespace

TEST_SUITE("http_codec") {

TEST_CASE("parser: a simple GET request") {
    auto input = "GET /items?id=1 HTTP/1.1\r\nHost: example.org\r\nAccept: text/plain\r\nX-Pad:   spaced  \r\n\r\n"sv;
    parser p(req, {});
    std::size_t consumed = 0;
    CHECK_FALSE(p.started());
    REQUIRE(p.parse(input, consumed) == parser::event::head);
    CHECK(consumed == input.size());
    const auto& h = p.head();
    CHECK(h.method == "GET");
    CHECK(h.target == "/items?id=1");
    CHECK(h.version_major == 1);
    CHECK(h.version_minor == 1);
    CHECK(h.headers.size() == 3);
    CHECK(*h.headers.get("host") == "example.org");
    CHECK(*h.headers.get("ACCEPT") == "text/plain");
    CHECK(*h.headers.get("x-pad") == "spaced");  // surrounding whitespace is not the value
    CHECK(h.keep_alive);
    CHECK_FALSE(h.chunked);
    CHECK_FALSE(h.content_length);
    CHECK_FALSE(h.expect_continue);
    CHECK_FALSE(h.upgrade);
    CHECK(p.in_message());
    REQUIRE(p.parse(input.substr(consumed), consumed) == parser::event::message_end);
    CHECK(consumed == 0);
    CHECK(p.keep_alive());
    CHECK_FALSE(p.in_message());
    CHECK_FALSE(p.started());
    CHECK(p.parse({}, consumed) == parser::event::need_more);
    CHECK(consumed == 0);
    CHECK(p.finish() == parser::event::need_more);
}

TEST_CASE("parser: empty header values, methods, and Expect: 100-continue") {
    auto msgs = feed_all(req, "POST /up HTTP/1.1\r\nX-Empty:\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\nabc"sv);
    REQUIRE(msgs.size() == 1);
    CHECK(msgs[0].head.method == "POST");
    CHECK(*msgs[0].head.headers.get("x-empty") == "");
    CHECK(msgs[0].head.expect_continue);
    CHECK(msgs[0].head.content_length == 3u);
    CHECK(msgs[0].body == "abc");

    for (auto m : {"DELETE"sv, "PUT"sv, "PATCH"sv, "OPTIONS"sv, "HEAD"sv}) {
        std::string in = std::string(m) + " / HTTP/1.1\r\nHost: h\r\n\r\n";
        msgs = feed_all(req, in);
        REQUIRE(msgs.size() == 1);
        CHECK(msgs[0].head.method == m);
    }
}

TEST_CASE("parser: keep-alive by version and Connection") {
    struct keep_case {
        std::string_view text;
        bool keep;
    };
    for (auto [text, keep] : {
             keep_case{"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true},
             keep_case{"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false},
             keep_case{"GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n", false},
             keep_case{"GET / HTTP/1.0\r\n\r\n", false},
             keep_case{"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
         }) {
        CAPTURE(text);
        auto msgs = feed_all(req, text);
        REQUIRE(msgs.size() == 1);
        CHECK(msgs[0].head.keep_alive == keep);
        CHECK(msgs[0].keep_alive == keep);
    }
    // Responses the same way.
    auto msgs = feed_all(resp, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi"sv);
    REQUIRE(msgs.size() == 1);
    CHECK_FALSE(msgs[0].keep_alive);
    CHECK(msgs[0].head.version_minor == 0);
    msgs = feed_all(resp, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"sv);
    CHECK(msgs.at(0).keep_alive);
}

TEST_CASE("parser: pipelined requests in one buffer come out one at a time, in order") {
    std::string input =
        "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
        "POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        "PUT /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        "GET /4 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    for (std::size_t step : {input.size(), std::size_t{1}, std::size_t{2}, std::size_t{7}, std::size_t{64}}) {
        CAPTURE(step);
        auto msgs = feed_all(req, input, step);
        REQUIRE(msgs.size() == 4);
        CHECK(msgs[0].head.target == "/1");
        CHECK(msgs[0].body.empty());
        CHECK(msgs[1].head.target == "/2");
        CHECK(msgs[1].body == "hello");
        CHECK(msgs[2].head.target == "/3");
        CHECK(msgs[2].head.chunked);
        CHECK(msgs[2].body == "abc");
        CHECK(msgs[3].head.target == "/4");
        CHECK(msgs[0].keep_alive);
        CHECK(msgs[2].keep_alive);
        CHECK_FALSE(msgs[3].keep_alive);
    }

    // By hand: each event's `consumed` stops exactly at that event.
    parser p(req, {});
    std::string_view in = input;
    std::size_t consumed = 0;
    REQUIRE(p.parse(in, consumed) == parser::event::head);
    CHECK(consumed == "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"sv.size());
    in.remove_prefix(consumed);
    REQUIRE(p.parse(in, consumed) == parser::event::message_end);
    CHECK(consumed == 0);
    REQUIRE(p.parse(in, consumed) == parser::event::head);
    CHECK(p.head().target == "/2");
    in.remove_prefix(consumed);
    CHECK(in.starts_with("hello"));
    REQUIRE(p.parse(in, consumed) == parser::event::body);
    CHECK(p.body() == "hello");
    CHECK(p.body().data() == in.data());  // points into the input, no copy
    CHECK(consumed == 5);
}

TEST_CASE("parser: byte-at-a-time gives the same messages as whole") {
    std::string input =
        "POST /form?x=%20 HTTP/1.1\r\nHost: example.org\r\nContent-Type: text/plain\r\n"
        "Content-Length: 11\r\nX-Long: " + std::string(300, 'v') + "\r\n\r\nhello world";
    auto whole = feed_all(req, input);
    auto bytes = feed_all(req, input, 1);
    REQUIRE(whole.size() == 1);
    REQUIRE(bytes.size() == 1);
    CHECK(whole[0].head.target == bytes[0].head.target);
    CHECK(whole[0].head.headers.size() == bytes[0].head.headers.size());
    CHECK(*bytes[0].head.headers.get("x-long") == std::string(300, 'v'));
    CHECK(*bytes[0].head.headers.get("content-type") == "text/plain");
    CHECK(bytes[0].body == "hello world");
    CHECK(whole[0].pieces == std::vector<std::size_t>{11});
    CHECK(bytes[0].pieces == std::vector<std::size_t>(11, 1));
}

TEST_CASE("parser: chunked body with extensions and trailers") {
    std::string input =
        "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5;ext=1\r\nhello\r\n"
        "1A\r\n" + std::string(26, 'x') + "\r\n"
        "0\r\nX-Checksum: abc\r\nX-Other: 2\r\n\r\n";
    for (std::size_t step : {input.size(), std::size_t{1}, std::size_t{3}}) {
        CAPTURE(step);
        auto msgs = feed_all(req, input, step);
        REQUIRE(msgs.size() == 1);
        CHECK(msgs[0].head.chunked);
        CHECK_FALSE(msgs[0].head.content_length);
        CHECK(msgs[0].body == "hello" + std::string(26, 'x'));
        CHECK(msgs[0].head.trailers.size() == 2);
        CHECK(*msgs[0].head.trailers.get("x-checksum") == "abc");
        CHECK(*msgs[0].head.trailers.get("x-other") == "2");
        CHECK_FALSE(msgs[0].head.headers.contains("x-checksum"));
        CHECK(msgs[0].keep_alive);
    }
}

TEST_CASE("parser: a body split across calls arrives in pieces, never copied whole") {
    std::string body(10000, '\0');
    for (std::size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>('a' + i % 26);
    std::string input = "PUT /big HTTP/1.1\r\nHost: h\r\nContent-Length: 10000\r\n\r\n" + body;
    auto msgs = feed_all(req, input, 1000);
    REQUIRE(msgs.size() == 1);
    CHECK(msgs[0].body == body);
    CHECK(msgs[0].pieces.size() > 5);
    for (auto n : msgs[0].pieces) CHECK(n <= 1000);
}

TEST_CASE("parser: responses with Content-Length, chunked and until close") {
    auto msgs = feed_all(resp, "HTTP/1.1 201 Created\r\nContent-Length: 4\r\nX-A: b\r\n\r\nbody"sv, 3);
    REQUIRE(msgs.size() == 1);
    CHECK(msgs[0].head.status == 201);
    CHECK(msgs[0].head.reason == "Created");
    CHECK(msgs[0].body == "body");
    CHECK(msgs[0].keep_alive);

    msgs = feed_all(resp, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n"sv, 1);
    REQUIRE(msgs.size() == 1);
    CHECK(msgs[0].body == "abcdef");
    CHECK(msgs[0].head.chunked);

    // No length: the body runs until the peer closes; finish() ends it.
    for (std::size_t step : {std::size_t{1}, std::size_t{5}, SIZE_MAX}) {
        CAPTURE(step);
        parser p(resp, {});
        feeder f{p};
        auto none = f("HTTP/1.1 200 OK\r\nServer: x\r\n\r\nstreamed until close", step);
        CHECK(none.empty());
        CHECK(p.in_message());
        msgs = f("", step, /*at_eof=*/true);
        REQUIRE(msgs.size() == 1);
        CHECK(msgs[0].body == "streamed until close");
        CHECK_FALSE(msgs[0].keep_alive);
        CHECK_FALSE(p.in_message());
        // After the close nothing more is HTTP.
        CHECK(p.finish() == parser::event::need_more);
        std::size_t consumed = 0;
        CHECK_THROWS_AS(p.parse("HTTP/1.1 200 OK\r\n", consumed), parse_error);
    }

    // The whole exchange in one: head, pieces and finish.
    parser p(resp, {});
    std::string body;
    std::string_view in = "HTTP/1.1 200 OK\r\n\r\nabc";
    std::size_t consumed = 0;
    REQUIRE(p.parse(in, consumed) == parser::event::head);
    CHECK(p.head().keep_alive == false);
    in.remove_prefix(consumed);
    REQUIRE(p.parse(in, consumed) == parser::event::body);
    CHECK(p.body() == "abc");
    in.remove_prefix(consumed);
    REQUIRE(p.parse(in, consumed) == parser::event::need_more);
    REQUIRE(p.finish() == parser::event::message_end);
    CHECK(p.finish() == parser::event::need_more);
}

TEST_CASE("parser: finish() right after the head of an until-close response") {
    parser p(resp, {});
    std::size_t consumed = 0;
    REQUIRE(p.parse("HTTP/1.1 200 OK\r\n\r\n", consumed) == parser::event::head);
    REQUIRE(p.finish() == parser::event::message_end);
    CHECK(p.finish() == parser::event::need_more);
}

TEST_CASE("parser: finish() on a message cut short throws; between messages it is need_more") {
    for (auto cut : {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"sv,
                     "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"sv,
                     "HTTP/1.1 200 OK\r\nContent-Le"sv, "HTTP/1.1 2"sv}) {
        CAPTURE(cut);
        auto e = rejection(resp, cut, {}, /*at_eof=*/true);
        CHECK(e.kind() == parse_failure::bad_message);
        CHECK(std::string(e.what()).find("closed in the middle of a message") != std::string::npos);
    }
    auto e = rejection(req, "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"sv, {}, true);
    CHECK(e.status() == 400);

    parser p(resp, {});
    CHECK(p.finish() == parser::event::need_more);  // nothing at all
    parser q(resp, {});
    auto msgs = feed(q, "HTTP/1.1 204 No Content\r\n\r\n", SIZE_MAX, true);
    CHECK(msgs.size() == 1);
}

TEST_CASE("parser: responses to HEAD, 204 and 304 have no body") {
    parser p(resp, {});
    p.expect_no_body();
    std::string input =
        "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/html\r\n\r\n"
        "HTTP/1.1 204 No Content\r\n\r\n"
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    auto msgs = feed(p, input, SIZE_MAX);
    REQUIRE(msgs.size() == 4);
    CHECK(msgs[0].head.content_length == 1000u);
    CHECK(msgs[0].head.keep_alive);
    CHECK(msgs[0].body.empty());
    CHECK(msgs[0].keep_alive);
    CHECK(msgs[1].head.status == 204);
    CHECK(msgs[2].head.status == 304);
    CHECK(msgs[2].body.empty());
    CHECK(msgs[3].body == "ok");

    // Byte by byte too, with the HEAD answer's limit not applied.
    parser q(resp, {.max_header_bytes = 16 * 1024, .max_body_bytes = 10});
    q.expect_no_body();
    msgs = feed(q, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1);
    REQUIRE(msgs.size() == 2);
    CHECK(msgs[1].body == "ok");

    // A HEAD answer without a length does not run until close.
    parser r(resp, {});
    r.expect_no_body();
    msgs = feed(r, "HTTP/1.1 200 OK\r\nServer: x\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
    REQUIRE(msgs.size() == 2);
    CHECK(msgs[0].head.keep_alive);
    CHECK(msgs[0].keep_alive);

    // Without expect_no_body the same bytes are a body.
    msgs = feed_all(resp, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/");
    REQUIRE(msgs.size() == 1);
    CHECK(msgs[0].body == "HTTP/");
}

TEST_CASE("parser: 100 Continue is its own message before the answer") {
    parser p(resp, {});
    p.expect_no_body();  // also checks the skip waits for the final response
    auto msgs = feed(p,
                     "HTTP/1.1 100 Continue\r\n\r\n"
                     "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
                     "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                     1);
    REQUIRE(msgs.size() == 3);
    CHECK(msgs[0].head.status == 100);
    CHECK(msgs[0].head.reason == "Continue");
    CHECK(msgs[1].head.status == 103);
    CHECK(msgs[2].head.status == 200);
    CHECK(msgs[2].body.empty());  // the HEAD answer

    msgs = feed_all(resp, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
    REQUIRE(msgs.size() == 2);
    CHECK(msgs[0].head.status == 100);
    CHECK(msgs[0].keep_alive);
    CHECK(msgs[1].body == "abc");
}

TEST_CASE("parser: Upgrade and CONNECT end HTTP on the connection") {
    parser p(req, {});
    std::string input = "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    auto msgs = feed(p, input);
    REQUIRE(msgs.size() == 1);
    CHECK(msgs[0].head.upgrade);
    CHECK_FALSE(msgs[0].keep_alive);
    std::size_t consumed = 0;
    CHECK_THROWS_AS(p.parse("\x81\x05hello", consumed), parse_error);

    msgs = feed_all(req, "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n");
    REQUIRE(msgs.size() == 1);
    CHECK(msgs[0].head.method == "CONNECT");
    CHECK(msgs[0].head.target == "h:443");
    CHECK(msgs[0].head.upgrade);
    CHECK_FALSE(msgs[0].keep_alive);
}

TEST_CASE("parser: max_header_bytes (431)") {
    std::string head = "GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + std::string(100, 'a') + "\r\n\r\n";
    // Exactly at the limit is fine; one byte less fails.
    for (std::size_t step : {head.size(), std::size_t{1}, std::size_t{10}}) {
        CAPTURE(step);
        auto msgs = feed_all(req, head, step, false, {.max_header_bytes = head.size()});
        CHECK(msgs.size() == 1);
    }
    auto e = rejection(req, head, {.max_header_bytes = head.size() - 1});
    CHECK(e.kind() == parse_failure::header_too_large);
    CHECK(e.status() == 431);
    CHECK(std::string(e.what()).find(std::to_string(head.size() - 1)) != std::string::npos);

    // A head over the limit is 431 even if it is malformed further on.
    CHECK(rejection(req, head + "X-Bad Name: 1\r\n\r\n", {.max_header_bytes = head.size() - 2}).status() == 431);
    CHECK(rejection(req, "GET / HTTP/1.1\r\nX: " + std::string(40, 'a') + "\r\n b\r\n\r\n", {.max_header_bytes = 30})
              .status() == 431);
    // ... and malformed before the limit is 400.
    CHECK(rejection(req, "GET / HTTP/1.1\r\nX Y: 1\r\n" + std::string(100, 'a'), {.max_header_bytes = 50}).status() ==
          400);
    parser unlimited(req, {.max_header_bytes = SIZE_MAX});
    CHECK(feed(unlimited, head, 3).size() == 1);

    // Endless fields fail without waiting for the end of the head.
    parser p(req, {.max_header_bytes = 1024});
    std::size_t consumed = 0;
    REQUIRE(p.parse("GET / HTTP/1.1\r\n", consumed) == parser::event::need_more);
    std::string field = "X-A: " + std::string(100, 'b') + "\r\n";
    bool threw = false;
    for (int i = 0; i < 20 && !threw; ++i) {
        try {
            p.parse(field, consumed);
        } catch (const parse_error& err) {
            threw = true;
            CHECK(err.status() == 431);
        }
    }
    CHECK(threw);
    // The parser stays failed.
    CHECK_THROWS_AS(p.parse("\r\n", consumed), parse_error);
    CHECK_THROWS_AS(p.finish(), parse_error);

    // The limit applies to each message, not to the connection.
    std::string two = head + head + head;
    CHECK(feed_all(req, two, 5, false, {.max_header_bytes = head.size()}).size() == 3);
    // Trailers count against the same limit.
    std::string chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n";
    std::string trailers;
    for (int i = 0; i < 20; ++i) trailers += "X-T" + std::to_string(i) + ": " + std::string(50, 't') + "\r\n";
    auto t = rejection(req, chunked + trailers + "\r\n", {.max_header_bytes = 1000});
    CHECK(t.status() == 431);
    CHECK(std::string(t.what()).find("trailer") != std::string::npos);
    CHECK(feed_all(req, chunked + trailers + "\r\n", 1, false, {.max_header_bytes = 2000}).at(0).head.trailers.size() ==
          20);
    // Responses too.
    auto r = rejection(resp, "HTTP/1.1 200 OK\r\nX: " + std::string(200, 'x') + "\r\n\r\n", {.max_header_bytes = 100});
    CHECK(r.status() == 431);
}

TEST_CASE("parser: max_body_bytes (413)") {
    parser::limits l{.max_header_bytes = 16 * 1024, .max_body_bytes = 10};
    // Content-Length over the limit fails at the head, before any body.
    parser p(req, l);
    std::size_t consumed = 0;
    try {
        p.parse("POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", consumed);
        FAIL("accepted");
    } catch (const parse_error& e) {
        CHECK(e.kind() == parse_failure::body_too_large);
        CHECK(e.status() == 413);
        CHECK(std::string(e.what()).find("11") != std::string::npos);
    }
    CHECK(feed_all(req, "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789", 1, false, l).at(0).body ==
          "0123456789");
    // A huge Content-Length.
    CHECK(rejection(req, "POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n", l).status() == 413);

    // Chunked bodies are counted as they come.
    std::string chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n";
    CHECK(feed_all(req, chunked + "4\r\nghij\r\n0\r\n\r\n", 1, false, l).at(0).body == "abcdefghij");
    auto over = rejection(req, chunked + "5\r\nghijk\r\n0\r\n\r\n", l);
    CHECK(over.status() == 413);
    // Reported at the first byte over the limit ("k"), however it was fed.
    CHECK(std::string(over.what()).find("at byte " + std::to_string(chunked.size() + 7)) != std::string::npos);
    // The body up to the limit is handed over, then the error, however it is fed.
    for (std::size_t step : {std::size_t{1}, std::size_t{4}, SIZE_MAX}) {
        CAPTURE(step);
        parser q(req, l);
        feeder f(q);
        try {
            f(chunked + "5\r\nghijk\r\n0\r\n\r\n", step);
            FAIL("accepted");
        } catch (const parse_error& e) {
            CHECK(e.status() == 413);
        }
        CHECK(f.cur.body == "abcdefghij");
        std::size_t consumed = 0;
        CHECK_THROWS_AS(q.parse("", consumed), parse_error);  // stays failed
    }
    // A response body until close too.
    CHECK(rejection(resp, "HTTP/1.1 200 OK\r\n\r\n0123456789x", l).status() == 413);
    CHECK(rejection(resp, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", l).status() == 413);
}

TEST_CASE("parser: request smuggling and malformed messages are rejected") {
    struct bad {
        std::string_view name;
        std::string_view text;
    };
    for (auto [name, text] : {
             bad{"Content-Length with Transfer-Encoding: chunked",
                 "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
             bad{"Transfer-Encoding: chunked then Content-Length",
                 "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"},
             bad{"two different Content-Length fields",
                 "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"},
             bad{"two Content-Length values in one field",
                 "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!"},
             bad{"Content-Length not a number", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5x\r\n\r\nhello"},
             bad{"Content-Length with a sign", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello"},
             bad{"Content-Length overflowing 64 bits",
                 "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n"},
             bad{"a lone CR in a header value", "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n"},
             bad{"a lone CR ending a header line", "GET / HTTP/1.1\r\nHost: h\rX-A: b\r\n\r\n"},
             bad{"a bare LF ending a header line", "GET / HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n"},
             bad{"obs-fold (a continuation line)", "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n"},
             bad{"obs-fold with a tab", "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n\tb\r\n\r\n"},
             bad{"obs-fold with an empty first line", "GET / HTTP/1.1\r\nHost: h\r\nX-A:\r\n b\r\n\r\n"},
             bad{"obs-fold in the trailer section",
                 "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: a\r\n b\r\n\r\n"},
             bad{"obs-fold starting the trailer section",
                 "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n X: a\r\n\r\n"},
             bad{"bad chunk size", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"},
             bad{"negative chunk size",
                 "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nab\r\n0\r\n\r\n"},
             bad{"chunk size overflowing 64 bits",
                 "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n"},
             bad{"chunk data longer than its size",
                 "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"},
             bad{"Transfer-Encoding with chunked not last",
                 "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"},
             bad{"Transfer-Encoding chunked twice across fields, not last",
                 "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n"},
             bad{"Transfer-Encoding other than chunked", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nabc"},
             bad{"Transfer-Encoding: xchunked", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"},
             bad{"whitespace before the colon",
                 "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"},
             bad{"a header line without a colon", "GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n"},
             bad{"a NUL in a header value", "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n"sv},
             bad{"a control character in a header value", "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01z\r\n\r\n"},
             bad{"a bad header name", "GET / HTTP/1.1\r\nHost: h\r\nX(A): b\r\n\r\n"},
             bad{"a space in the target", "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n"},
             bad{"an unknown method", "FOO@ / HTTP/1.1\r\n\r\n"},
             bad{"a bad version", "GET / HTTP/x.1\r\n\r\n"},
             bad{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"},
             bad{"not HTTP at all", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"},
             bad{"a second request after Connection: close",
                 "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"},
         }) {
        CAPTURE(name);
        auto e = rejection(req, text);
        CHECK(e.kind() == parse_failure::bad_message);
        CHECK(e.status() == 400);
        CHECK(std::string(e.what()).find("at byte") != std::string::npos);
    }
    // A later major version in HTTP/1 framing: 505, as nginx answers it.
    auto v2 = rejection(req, "GET / HTTP/2.0\r\nHost: h\r\n\r\n");
    CHECK(v2.kind() == parse_failure::version_not_supported);
    CHECK(v2.status() == 505);
}

TEST_CASE("parser: obs-fold is refused where it is, and body bytes that look like it are not") {
    // The fold is reported at its SP, ahead of anything llhttp would find later.
    std::string input = "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    for (std::size_t step : {input.size(), std::size_t{1}, std::size_t{30}, std::size_t{33}, std::size_t{34}}) {
        CAPTURE(step);
        try {
            (void)feed_all(req, input, step);
            FAIL("accepted");
        } catch (const parse_error& e) {
            CHECK(std::string(e.what()).find("obs-fold") != std::string::npos);
            CHECK(std::string(e.what()).find("at byte 33") != std::string::npos);
        }
    }
    // "\n " and "\n\t" inside bodies are data.
    std::string bodies =
        "POST /a HTTP/1.1\r\nContent-Length: 6\r\n\r\n\n x\n\ty"
        "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\n z\r\n2\r\n\n\t\r\n0\r\nT: 1\r\n\r\n"
        "GET /c HTTP/1.1\r\n\r\n";
    for (std::size_t step : {bodies.size(), std::size_t{1}, std::size_t{5}}) {
        CAPTURE(step);
        auto msgs = feed_all(req, bodies, step);
        REQUIRE(msgs.size() == 3);
        CHECK(msgs[0].body == "\n x\n\ty");
        CHECK(msgs[1].body == "\n z\n\t");
        CHECK(*msgs[1].head.trailers.get("t") == "1");
        CHECK(msgs[2].head.target == "/c");
    }
}

TEST_CASE("parser: malformed responses are rejected") {
    for (auto text : {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"sv,
                      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"sv,
                      "HTTP/1.1 20 OK\r\n\r\n"sv, "HTTP/2.0 200 OK\r\n\r\n"sv, "HTTP/1.1 abc OK\r\n\r\n"sv, "HTTX/1.1 200 OK\r\n\r\n"sv,
                      "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"sv,
                      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nq\r\n"sv}) {
        CAPTURE(text);
        CHECK(rejection(resp, text).status() == 400);
    }
    // A response's Transfer-Encoding other than chunked runs until close (RFC 9112 6.3).
    auto msgs = feed_all(resp, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz", SIZE_MAX, true);
    REQUIRE(msgs.size() == 1);
    CHECK(msgs[0].body == "xyz");
}

TEST_CASE("parser: errors name the offset and keep the parser failed") {
    parser p(req, {});
    std::size_t consumed = 0;
    REQUIRE(p.parse("GET / HTTP/1.1\r\nHost: h\r\n\r\n", consumed) == parser::event::head);
    REQUIRE(p.parse("", consumed) == parser::event::message_end);
    try {
        p.parse("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", consumed);
        FAIL("accepted");
    } catch (const parse_error& e) {
        std::string w = e.what();
        CHECK(w.find("HPE_") != std::string::npos);
        // The second message starts at byte 27; "Bad" ends at 27+16+3.
        CHECK(w.find("at byte 46") != std::string::npos);
        CAPTURE(w);
    }
    CHECK_THROWS_AS(p.parse("GET / HTTP/1.1\r\n\r\n", consumed), parse_error);
}

TEST_CASE("parser: release() between messages frees its state and changes nothing else") {
    std::size_t consumed = 0;
    // Between messages: the next one parses as before, offsets go on.
    parser p(req, {});
    p.release();  // before any byte: nothing to keep
    REQUIRE(p.parse("GET /1 HTTP/1.1\r\nHost: h\r\n\r\n", consumed) == parser::event::head);
    CHECK(p.head().target == "/1");
    p.release();  // inside a message: does nothing
    CHECK(p.head().target == "/1");
    REQUIRE(p.parse("", consumed) == parser::event::message_end);
    p.release();
    CHECK_FALSE(p.started());
    CHECK_FALSE(p.in_message());
    CHECK(p.keep_alive());  // of the last message, kept
    CHECK(p.body().empty());
    try {
        p.parse("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", consumed);
        FAIL("accepted");
    } catch (const parse_error& e) {
        // The same offset as without the release (see the case above).
        CHECK(std::string(e.what()).find("at byte 47") != std::string::npos);
        CAPTURE(e.what());
    }
    p.release();  // failed: does nothing, the parser stays failed
    CHECK_THROWS_AS(p.parse("GET / HTTP/1.1\r\n\r\n", consumed), parse_error);

    // Fed 7 bytes at a time, with a release tried before every call: the
    // same events, bodies and heads as without.
    const auto events = [&](bool release) {
        parser q(req, {});
        std::string_view in = "POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
                              "GET /2 HTTP/1.1\r\nHost: h\r\n\r\n";
        std::string seen;
        for (int guard = 0; guard < 100; ++guard) {
            if (release) q.release();
            const auto e = q.parse(in.substr(0, 7), consumed);
            if (e == parser::event::head) seen += "head " + q.head().target + "|";
            if (e == parser::event::body) seen += std::string(q.body()) + "|";
            if (e == parser::event::message_end) seen += "end|";
            in.remove_prefix(consumed);
            if (e == parser::event::need_more && in.empty()) break;
        }
        return seen;
    };
    CHECK(events(false) == "head /u|hello|end|head /2|end|");
    CHECK(events(true) == events(false));

    // A response parser told "no body" while released keeps the word.
    parser r(resp, {});
    REQUIRE(r.parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", consumed) == parser::event::head);
    std::string_view rest = "ok";
    REQUIRE(r.parse(rest, consumed) == parser::event::body);
    REQUIRE(r.parse(rest.substr(consumed), consumed) == parser::event::message_end);
    r.release();
    r.expect_no_body();
    auto msgs = feed(r, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    REQUIRE(msgs.size() == 2);
    CHECK(msgs[0].body.empty());
    CHECK(msgs[1].body == "ok");

    // After an Upgrade the stream is not HTTP any more: nothing is released.
    parser u(req, {});
    REQUIRE(u.parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", consumed) ==
            parser::event::head);
    REQUIRE(u.parse("", consumed) == parser::event::message_end);
    u.release();
    CHECK(u.head().upgrade);
}

TEST_CASE("parse_error::status") {
    CHECK(parse_error(parse_failure::bad_message, "x").status() == 400);
    CHECK(parse_error(parse_failure::header_too_large, "x").status() == 431);
    CHECK(parse_error(parse_failure::body_too_large, "x").status() == 413);
    const http::protocol_error& base = parse_error(parse_failure::bad_message, "why");
    CHECK(std::string(base.what()) == "why");
}

TEST_CASE("serialisers: request head round-trips through the parser") {
    http::headers h{{"Host", "example.org:8080"}, {"Content-Length", "5"}, {"X-Multi", "1"}, {"x-multi", "2"}};
    std::string out;
    http::detail::write_request_head(out, "POST", "/p?q=1", h);
    CHECK(out ==
          "POST /p?q=1 HTTP/1.1\r\nHost: example.org:8080\r\nContent-Length: 5\r\nX-Multi: 1\r\nx-multi: 2\r\n\r\n");
    out += "hello";
    auto msgs = feed_all(req, out, 1);
    REQUIRE(msgs.size() == 1);
    CHECK(msgs[0].head.method == "POST");
    CHECK(msgs[0].head.target == "/p?q=1");
    CHECK(msgs[0].head.headers.get_all("X-MULTI") == std::vector<std::string_view>{"1", "2"});
    CHECK(msgs[0].body == "hello");

    CHECK_THROWS_WITH_AS(http::detail::write_request_head(out, "GE T", "/", {}), doctest::Contains("\"GE T\""),
                         std::invalid_argument);
    CHECK_THROWS_AS(http::detail::write_request_head(out, "", "/", {}), std::invalid_argument);
    CHECK_THROWS_WITH_AS(http::detail::write_request_head(out, "GET", "/a b", {}), doctest::Contains("\"/a b\""),
                         std::invalid_argument);
    CHECK_THROWS_AS(http::detail::write_request_head(out, "GET", "", {}), std::invalid_argument);
    CHECK_THROWS_AS(http::detail::write_request_head(out, "GET", "/\r\nX: y", {}), std::invalid_argument);
}

TEST_CASE("serialisers: response head and chunked body round-trip through the parser") {
    std::string out;
    http::detail::write_response_head(out, 200, {{"Transfer-Encoding", "chunked"}, {"Server", "hop"}});
    CHECK(out.starts_with("HTTP/1.1 200 OK\r\n"));
    std::string body;
    for (std::size_t n : {1u, 15u, 16u, 255u, 4096u}) {
        std::string piece(n, static_cast<char>('a' + n % 26));
        http::detail::write_chunk_header(out, n);
        out += piece;
        out += "\r\n";
        body += piece;
    }
    out += http::detail::last_chunk;
    auto msgs = feed_all(resp, out, 7);
    REQUIRE(msgs.size() == 1);
    CHECK(msgs[0].head.status == 200);
    CHECK(msgs[0].head.reason == "OK");
    CHECK(*msgs[0].head.headers.get("server") == "hop");
    CHECK(msgs[0].body == body);

    std::string line;
    http::detail::write_chunk_header(line, 0x1a);
    CHECK(line == "1a\r\n");
    line.clear();
    http::detail::write_chunk_header(line, SIZE_MAX);
    CHECK(line == "ffffffffffffffff\r\n");
    CHECK_THROWS_AS(http::detail::write_chunk_header(line, 0), std::invalid_argument);

    out.clear();
    http::detail::write_response_head(out, 404, {{"Content-Length", "0"}}, 0);
    CHECK(out == "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    out.clear();
    http::detail::write_response_head(out, 599, {{"Content-Length", "0"}});
    CHECK(out == "HTTP/1.1 599 \r\nContent-Length: 0\r\n\r\n");
    auto m = feed_all(resp, out);
    REQUIRE(m.size() == 1);
    CHECK(m[0].head.status == 599);
    CHECK_THROWS_WITH_AS(http::detail::write_response_head(out, 99, {}), doctest::Contains("99"),
                         std::invalid_argument);
    CHECK_THROWS_AS(http::detail::write_response_head(out, 1000, {}), std::invalid_argument);
    CHECK_THROWS_AS(http::detail::write_response_head(out, 200, {}, 2), std::invalid_argument);
}

TEST_CASE("decompressor::for_encoding") {
    using fmt = http::detail::decompressor::format;
    CHECK(http::detail::decompressor::for_encoding("gzip") == fmt::gzip);
    CHECK(http::detail::decompressor::for_encoding("GZip") == fmt::gzip);
    CHECK(http::detail::decompressor::for_encoding("x-gzip") == fmt::gzip);
    CHECK(http::detail::decompressor::for_encoding(" gzip ") == fmt::gzip);
    CHECK(http::detail::decompressor::for_encoding("deflate") == fmt::deflate);
    CHECK_FALSE(http::detail::decompressor::for_encoding("br"));
    CHECK_FALSE(http::detail::decompressor::for_encoding("identity"));
    CHECK_FALSE(http::detail::decompressor::for_encoding("gzip, br"));
    CHECK_FALSE(http::detail::decompressor::for_encoding(""));
}

namespace {

std::string sample_text() {
    std::string text;
    for (int i = 0; i < 2000; ++i) text += "line " + std::to_string(i * 7919 % 1000) + " of some compressible text\n";
    return text;
}

// Decodes `data` fed `step` bytes at a time.
std::string decode(http::detail::decompressor::format f, std::string_view data, std::size_t step,
                   std::size_t max_out = SIZE_MAX) {
    http::detail::decompressor d(f);
    std::string out;
    for (std::size_t i = 0; i < data.size(); i += step) d.feed(data.substr(i, step), out, max_out);
    d.finish();
    return out;
}

template <class F>
std::string protocol_what(F&& f) {
    try {
        f();
    } catch (const parse_error&) {
        return "parse_error, not a decompressor error";
    } catch (const http::protocol_error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("decompressor: gzip, zlib-wrapped deflate and raw deflate, whole and in pieces") {
    using fmt = http::detail::decompressor::format;
    const std::string text = sample_text();
    const std::string gz = gzip_bytes(text, 16 + 15);
    const std::string zl = gzip_bytes(text, 15);
    const std::string raw = gzip_bytes(text, -15);
    REQUIRE(gz.size() < text.size() / 4);
    for (std::size_t step : {SIZE_MAX, std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{1000}}) {
        CAPTURE(step);
        CHECK(decode(fmt::gzip, gz, step) == text);
        CHECK(decode(fmt::deflate, zl, step) == text);
        CHECK(decode(fmt::deflate, raw, step) == text);
    }
    // A small text whose compressed form is a few bytes.
    CHECK(decode(fmt::gzip, gzip_bytes("a", 31), 1) == "a");
    CHECK(decode(fmt::deflate, gzip_bytes("", -15), 1) == "");
    CHECK(decode(fmt::deflate, gzip_bytes("", 15), 1) == "");
    // An empty body decodes to nothing.
    http::detail::decompressor empty(fmt::gzip);
    CHECK_NOTHROW(empty.finish());
}

TEST_CASE("decompressor: a decompression bomb stops at max_out") {
    using fmt = http::detail::decompressor::format;
    const std::string zeros(8 << 20, '\0');
    const std::string bomb = gzip_bytes(zeros, 31);
    REQUIRE(bomb.size() < 16 * 1024);
    http::detail::decompressor d(fmt::gzip);
    std::string out;
    std::string w = protocol_what([&] { d.feed(bomb, out, 1 << 20); });
    CHECK(w.find("exceeds the limit of 1048576 bytes") != std::string::npos);
    CHECK(out.size() == (1u << 20));  // filled to the limit, not past it
    // Exactly at the limit is fine; one byte less is not.
    CHECK(decode(fmt::gzip, bomb, 4096, zeros.size()) == zeros);
    CHECK_THROWS_AS(decode(fmt::gzip, bomb, 4096, zeros.size() - 1), http::protocol_error);
    // The limit counts what `out` already holds.
    http::detail::decompressor d2(fmt::deflate);
    std::string prefilled(100, 'x');
    CHECK_THROWS_AS(d2.feed(gzip_bytes("0123456789", 15), prefilled, 105), http::protocol_error);
}

TEST_CASE("decompressor: truncated, corrupt and trailing data are protocol errors") {
    using fmt = http::detail::decompressor::format;
    const std::string text = sample_text();
    const std::string gz = gzip_bytes(text, 31);

    for (std::size_t cut : {std::size_t{1}, std::size_t{4}, std::size_t{8}, gz.size() / 2, gz.size() - 1}) {
        CAPTURE(cut);
        http::detail::decompressor d(fmt::gzip);
        std::string out;
        d.feed(std::string_view(gz).substr(0, cut), out, SIZE_MAX);
        std::string w = protocol_what([&] { d.finish(); });
        CHECK(w.find("truncated") != std::string::npos);
        CHECK(w.find("gzip") != std::string::npos);
    }
    // A lone first byte of deflate is truncated too.
    http::detail::decompressor one(fmt::deflate);
    std::string out;
    one.feed("x", out, SIZE_MAX);
    CHECK_THROWS_AS(one.finish(), http::protocol_error);

    std::string bad = gz;
    bad[0] = 'X';  // not a gzip magic number
    CHECK(protocol_what([&] { (void)decode(fmt::gzip, bad, SIZE_MAX); }).find("bad gzip body") != std::string::npos);
    bad = gz;
    bad[gz.size() - 6] ^= 0x55;  // the CRC-32
    CHECK_FALSE(protocol_what([&] { (void)decode(fmt::gzip, bad, 7); }).empty());
    CHECK_FALSE(protocol_what([&] { (void)decode(fmt::deflate, "not compressed at all", SIZE_MAX); }).empty());
    CHECK(protocol_what([&] { (void)decode(fmt::gzip, gz + "trailing", SIZE_MAX); }).find("after the end") !=
          std::string::npos);
    CHECK(protocol_what([&] { (void)decode(fmt::gzip, gz + "t", 1); }).find("after the end") != std::string::npos);
}

TEST_CASE("decompressor: a gzip response body through the parser") {
    using fmt = http::detail::decompressor::format;
    const std::string text = sample_text();
    const std::string gz = gzip_bytes(text, 31);
    std::string input;
    http::detail::write_response_head(input, 200, {{"Content-Encoding", "gzip"}, {"Transfer-Encoding", "chunked"}});
    for (std::size_t i = 0; i < gz.size(); i += 700) {
        std::size_t n = std::min<std::size_t>(700, gz.size() - i);
        http::detail::write_chunk_header(input, n);
        input += gz.substr(i, n);
        input += "\r\n";
    }
    input += http::detail::last_chunk;

    parser p(resp, {});
    std::optional<http::detail::decompressor> d;
    std::string decoded;
    std::string_view in = input;
    bool ended = false;
    while (!ended) {
        std::size_t consumed = 0;
        switch (p.parse(in, consumed)) {
        case parser::event::head:
            d.emplace(*http::detail::decompressor::for_encoding(*p.head().headers.get("content-encoding")));
            break;
        case parser::event::body:
            d->feed(p.body(), decoded, 1 << 20);
            break;
        case parser::event::message_end:
            d->finish();
            ended = true;
            break;
        case parser::event::need_more:
            FAIL("ran out of input");
        }
        in.remove_prefix(consumed);
    }
    CHECK(decoded == text);
    CHECK(in.empty());
    CHECK(d->for_encoding("gzip") == fmt::gzip);
}

}  // TEST_SUITE
