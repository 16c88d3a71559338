#pragma once
// Shared by the HTTP fuzz targets: drives a parser the way a connection
// does and aborts (a crash libFuzzer reports) when an invariant of
// lib/http/codec.hpp does not hold.

#include "lib/http/codec.hpp"

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <string_view>

namespace hop_fuzz {

using hop::http::detail::parser;

[[noreturn]] inline void broken(const char* what, int line) {
    std::fprintf(stderr, "hop fuzz: invariant broken at line %d: %s\n", line, what);
    std::abort();
}
#define HOP_FUZZ_EXPECT(c) ((c) ? void(0) : ::hop_fuzz::broken(#c, __LINE__))

/// Called for each event with the parser (head(), body() valid then).
using event_handler = std::function<void(parser::event, parser&)>;

/// Feeds `parts` one after the other, keeping what the parser did not
/// consume, until need_more; then finish() if `at_eof`. Checks the event
/// order and the `consumed` contract. Lets parse_error through.
inline void drive(parser& p, std::initializer_list<std::string_view> parts, bool at_eof, const event_handler& on_event,
                  std::uint64_t max_body_bytes) {
    std::string buf;
    bool in_message = false;
    std::uint64_t body_bytes = 0;
    std::size_t total = 0;
    for (auto part : parts) total += part.size();
    std::size_t events = 0;

    auto take = [&](parser::event e) {
        // Every event but need_more is bounded by the bytes: a message is at
        // least a few bytes long and has one head and one end.
        HOP_FUZZ_EXPECT(++events <= 4 * total + 16);
        switch (e) {
        case parser::event::head:
            HOP_FUZZ_EXPECT(!in_message);
            HOP_FUZZ_EXPECT(p.in_message());
            in_message = true;
            body_bytes = 0;
            break;
        case parser::event::body:
            HOP_FUZZ_EXPECT(in_message);
            HOP_FUZZ_EXPECT(!p.body().empty());
            body_bytes += p.body().size();
            HOP_FUZZ_EXPECT(body_bytes <= max_body_bytes);
            break;
        case parser::event::message_end:
            HOP_FUZZ_EXPECT(in_message);
            HOP_FUZZ_EXPECT(!p.in_message());
            HOP_FUZZ_EXPECT(!p.started());
            if (p.head().content_length && !p.head().chunked && body_bytes != 0)
                HOP_FUZZ_EXPECT(body_bytes == *p.head().content_length);
            in_message = false;
            break;
        case parser::event::need_more:
            break;
        }
        on_event(e, p);
    };

    for (auto part : parts) {
        buf.append(part);
        for (;;) {
            std::size_t consumed = SIZE_MAX;
            parser::event e = p.parse(buf, consumed);
            HOP_FUZZ_EXPECT(consumed <= buf.size());
            if (e == parser::event::body) {
                // The piece lies in the input, inside what was consumed.
                HOP_FUZZ_EXPECT(p.body().data() >= buf.data());
                HOP_FUZZ_EXPECT(p.body().data() + p.body().size() <= buf.data() + consumed);
            }
            if (e == parser::event::need_more) HOP_FUZZ_EXPECT(consumed == buf.size());
            take(e);
            buf.erase(0, consumed);
            if (e == parser::event::need_more) break;
        }
    }
    if (at_eof) {
        for (;;) {
            parser::event e = p.finish();
            HOP_FUZZ_EXPECT(e == parser::event::need_more || e == parser::event::message_end);
            take(e);
            if (e == parser::event::need_more) break;
        }
        HOP_FUZZ_EXPECT(!in_message);
    }
}

}  // namespace hop_fuzz
